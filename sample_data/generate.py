"""Deterministically render the bundled demo data set (synthetic photos of machined flanges, MVTec AD layout)."""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #
SEED = 20240611
SIZE = 256
JPEG_QUALITY = 90
OUT_DIR = Path(__file__).resolve().parent
OUTPUT_FOLDERS = ("train", "test", "ground_truth")

N_TRAIN_GOOD = 80
N_TEST_GOOD = 20
DEFECT_COUNTS = {"scratch": 8, "dent": 8, "contamination": 7, "missing_material": 7}

BG_TILE = 768  # background texture tile; each image crops a random window of it

# Pixel centre coordinates, shared by every render.
YY, XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def coverage(sdf):
    """Anti-aliased coverage of a shape from its signed distance (negative inside)."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def normalized_noise(rng, shape, sigma):
    """Periodic Gaussian-filtered white noise (FFT), scaled to unit standard deviation.

    `sigma` is a scalar or one value per axis, in pixels.
    """
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (2,))
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2 * np.pi**2 * ((fy * sig[0]) ** 2 + (fx * sig[1]) ** 2))
    n = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * transfer, s=shape)
    return n / (n.std() + 1e-12)


# --------------------------------------------------------------------------- #
# Background: a dark ESD rubber mat with fine embossed grain and a few dust specks
# --------------------------------------------------------------------------- #
def make_background_tile():
    """Albedo (H, W, 3) and bump height (H, W) of the mat, shared by all images."""
    rng = np.random.default_rng([SEED, 999])
    shape = (BG_TILE, BG_TILE)
    mottling = 0.05 * normalized_noise(rng, shape, 45) + 0.03 * normalized_noise(rng, shape, 9)
    grain = normalized_noise(rng, shape, 0.8)
    # Embossed "orange peel" relief of the rubber: medium-frequency bumps.
    bump = 0.9 * normalized_noise(rng, shape, 1.6) + 0.5 * normalized_noise(rng, shape, 3.5)
    base = np.array([0.030, 0.038, 0.041])  # linear RGB, dark blue-grey
    albedo = base * (1.0 + mottling + 0.05 * grain)[..., None]
    # Dust specks and short lint fibres.
    specks = np.zeros(shape)
    n_specks = int(shape[0] * shape[1] * 0.0006)
    ys = rng.integers(0, shape[0], n_specks)
    xs = rng.integers(0, shape[1], n_specks)
    specks[ys, xs] = rng.uniform(0.5, 2.0, n_specks)
    for _ in range(40):
        y0, x0 = rng.uniform(0, BG_TILE, 2)
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(4, 14)
        for t in np.linspace(0, 1, int(length * 3)):
            yy = int(y0 + t * length * np.sin(ang) + 2 * np.sin(6 * t + ang)) % BG_TILE
            xx = int(x0 + t * length * np.cos(ang)) % BG_TILE
            specks[yy, xx] = max(specks[yy, xx], 0.8)
    specks = ndimage.gaussian_filter(specks, 0.6, mode="wrap")
    albedo = albedo + 0.05 * specks[..., None] * np.array([1.0, 0.98, 0.95])
    return albedo, bump


# --------------------------------------------------------------------------- #
# Part geometry: a turned flange with a bore, keyway, raised hub and 6 bolt holes
# --------------------------------------------------------------------------- #
def sample_pose(rng):
    return {
        "cx": SIZE / 2 + rng.uniform(-10, 10),
        "cy": SIZE / 2 + rng.uniform(-10, 10),
        "rot": rng.uniform(0, 2 * np.pi),
        "scale": rng.uniform(0.95, 1.05),
    }


def part_dimensions(pose):
    s = pose["scale"]
    return {
        "R": 86.0 * s,          # outer radius
        "R_hub": 44.0 * s,      # raised hub radius
        "R_bore": 25.0 * s,     # bore radius
        "R_pitch": 64.0 * s,    # bolt circle radius
        "r_hole": 7.5 * s,      # bolt hole radius
        "n_holes": 6,
        "key_w": 7.0 * s,       # keyway width
        "key_d": 6.0 * s,       # keyway depth beyond the bore
        "bevel": 2.6 * s,       # chamfer width on every edge
        "thickness": 9.0 * s,   # used for the cast shadow length
    }


def hole_centres(pose, dims):
    angles = pose["rot"] + np.pi / 6 + 2 * np.pi * np.arange(dims["n_holes"]) / dims["n_holes"]
    return [(pose["cx"] + dims["R_pitch"] * np.cos(a), pose["cy"] + dims["R_pitch"] * np.sin(a)) for a in angles]


def circle_sdf(cx, cy, r):
    return np.hypot(XX - cx, YY - cy) - r


def keyway_sdf(pose, dims):
    """Rectangle cut into the bore wall, pointing along the part's rotation."""
    c, s = np.cos(pose["rot"]), np.sin(pose["rot"])
    dx, dy = XX - pose["cx"], YY - pose["cy"]
    u = dx * c + dy * s - dims["R_bore"]       # radial, 0 at the bore wall
    v = -dx * s + dy * c
    hu, hv = dims["key_d"], dims["key_w"] / 2
    qu, qv = np.abs(u) - hu, np.abs(v) - hv
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    inside = np.minimum(np.maximum(qu, qv), 0)
    return outside + inside


def part_cutouts(pose, dims):
    """Signed distances of the individual cut-outs (negative inside the hole)."""
    cuts = {"bore": circle_sdf(pose["cx"], pose["cy"], dims["R_bore"]), "key": keyway_sdf(pose, dims)}
    for i, (hx, hy) in enumerate(hole_centres(pose, dims)):
        cuts[f"hole{i}"] = circle_sdf(hx, hy, dims["r_hole"])
    return cuts


def part_sdf(pose, dims, cuts, extra_cut=None):
    """Signed distance of the part (negative on metal)."""
    sdf = circle_sdf(pose["cx"], pose["cy"], dims["R"])
    for c in cuts.values():
        sdf = np.maximum(sdf, -c)
    if extra_cut is not None:
        sdf = np.maximum(sdf, -extra_cut)
    return sdf


def part_height(pose, dims, sdf):
    """Height map (px units) of the metal top: hub step plus chamfers on every edge."""
    r = np.hypot(XX - pose["cx"], YY - pose["cy"])
    h = 1.6 * smoothstep(dims["R_hub"] + 0.9, dims["R_hub"] - 0.9, r)
    h = h - 0.9 * np.maximum(0.0, dims["bevel"] + sdf)
    return h


# --------------------------------------------------------------------------- #
# Machining texture: concentric turning marks with tangentially smeared noise
# --------------------------------------------------------------------------- #
def turning_texture(rng, pose, dims):
    """Returns (albedo modulation, specular modulation), both ~1 with small variations."""
    nr, nt, r_step = 240, 1024, 0.5
    fine_polar = normalized_noise(rng, (nr, nt), (0.9, 14.0))       # smeared along the groove
    coarse_polar = normalized_noise(rng, (nr // 8, nt // 8), (0.8, 8.0))
    dx, dy = XX - pose["cx"], YY - pose["cy"]
    r = np.hypot(dx, dy)
    theta = np.mod(np.arctan2(dy, dx) - pose["rot"], 2 * np.pi)
    coords = np.stack([np.clip(r / r_step, 0, nr - 1), theta / (2 * np.pi) * nt])
    fine = ndimage.map_coordinates(fine_polar, coords, order=1, mode="grid-wrap")
    coarse = ndimage.map_coordinates(coarse_polar, coords / 8, order=1, mode="grid-wrap")
    # Regular tool marks (feed pitch differs between hub face and flange face).
    hub = r < dims["R_hub"]
    pitch = np.where(hub, rng.uniform(2.2, 2.8), rng.uniform(3.0, 4.2))
    phase = rng.uniform(0, 2 * np.pi)
    marks = np.sin(2 * np.pi * r / pitch + phase) * (0.6 + 0.4 * np.sin(r / 7.0 + phase))
    albedo_mod = 1.0 + 0.035 * fine + 0.03 * coarse + 0.02 * marks
    spec_mod = np.clip(1.0 + 0.35 * fine + 0.2 * coarse + 0.2 * marks, 0.2, None)
    return albedo_mod, spec_mod


# --------------------------------------------------------------------------- #
# Lighting and camera
# --------------------------------------------------------------------------- #
def sample_lighting(rng):
    az = np.deg2rad(225 + rng.uniform(-35, 35))  # from the upper left (image y points down)
    el = np.deg2rad(rng.uniform(45, 65))
    light = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    temp = rng.uniform(-1, 1)
    return {
        "L": light,
        "intensity": rng.uniform(0.87, 1.13),
        "tint": np.array([1 + 0.035 * temp, 1.0, 1 - 0.04 * temp]),
        "gradient": rng.uniform(0.05, 0.12),
        "vignette": rng.uniform(0.18, 0.32),
        "aniso_power": rng.uniform(150, 400),
        "spec": rng.uniform(0.6, 0.9),
    }


def normals_from_height(h):
    hs = ndimage.gaussian_filter(h, 0.6)
    gy, gx = np.gradient(hs)
    n = np.stack([-gx, -gy, np.ones_like(h)], axis=-1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def shade_metal(pose, light, n, albedo_mod, spec_mod):
    """Radiance of the metal: diffuse + anisotropic turned-metal sheen + chamfer glints."""
    L = light["L"]
    H = L + np.array([0.0, 0.0, 1.0])
    H = H / np.linalg.norm(H)
    ndl = np.clip(n @ L, 0.0, None)
    ndh = np.clip(n @ H, 0.0, None)
    dx, dy = XX - pose["cx"], YY - pose["cy"]
    r = np.hypot(dx, dy) + 1e-6
    # Tangent of the turning grooves, tilted with the local surface normal (Kajiya-Kay sheen):
    # dents and chamfers bend the radial highlight band.
    t = np.stack([-dy / r, dx / r, np.zeros_like(r)], axis=-1)
    t = t - np.sum(t * n, axis=-1, keepdims=True) * n
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    th = t @ H
    aniso = (1.0 - th**2) ** (light["aniso_power"] / 2) * (0.35 + 0.65 * n[..., 2] ** 8)
    iso = ndh**60
    albedo = 0.21 * albedo_mod
    radiance = albedo * (0.25 + 0.85 * ndl) + light["spec"] * aniso * spec_mod + 0.9 * iso
    return radiance[..., None] * np.array([0.97, 0.99, 1.02])  # steel is slightly cool


def shade_background(bg_albedo, bg_bump, light):
    gy, gx = np.gradient(ndimage.gaussian_filter(bg_bump, 0.5))
    relief = 1.0 + 0.12 * (-gx * light["L"][0] - gy * light["L"][1])
    return bg_albedo * (0.35 + 0.8 * light["L"][2]) * relief[..., None]


def cast_shadow(alpha, dims, light):
    """Soft shadow of the part on the mat plus contact occlusion at its edge."""
    L = light["L"]
    lxy = L[:2] / np.linalg.norm(L[:2])
    length = dims["thickness"] * L[2] ** -1 * np.sqrt(1 - L[2] ** 2) * 0.8
    shifted = ndimage.shift(alpha, (-lxy[1] * length, -lxy[0] * length), order=1, mode="constant")
    soft = ndimage.gaussian_filter(np.maximum(shifted, alpha), 3.5)
    contact = ndimage.gaussian_filter(alpha, 1.5)
    return (1.0 - 0.7 * soft) * (1.0 - 0.3 * contact)


def camera(rng, radiance, light):
    """Exposure, lens falloff, optical blur, tone curve, sensor noise -> uint8 RGB."""
    d = (XX - SIZE / 2) / (SIZE / 2), (YY - SIZE / 2) / (SIZE / 2)
    lxy = light["L"][:2] / np.linalg.norm(light["L"][:2])
    falloff = 1.0 + light["gradient"] * (d[0] * lxy[0] + d[1] * lxy[1])
    vignette = 1.0 - light["vignette"] * (d[0] ** 2 + d[1] ** 2) / 2
    img = radiance * (light["intensity"] * falloff * vignette)[..., None] * light["tint"]
    sigma = rng.uniform(0.55, 0.85)
    img = np.stack([ndimage.gaussian_filter(img[..., c], sigma) for c in range(3)], axis=-1)
    img = np.clip(img, 0, None)
    img = img / (1.0 + 0.35 * img)  # gentle highlight roll-off
    img = img ** (1 / 2.2) * 1.12
    noise_sigma = rng.uniform(0.007, 0.012)
    luma_noise = rng.standard_normal(img.shape[:2])[..., None] * noise_sigma * (0.6 + 0.6 * img)
    chroma_noise = rng.standard_normal(img.shape) * noise_sigma * 0.4
    img = img + luma_noise + chroma_noise
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- #
# Defects.  Masks come from each defect's geometric alpha (>= 0.5), not from the photo.
# --------------------------------------------------------------------------- #
def pick_spot(rng, sdf, margin, pose, dims, tries=400):
    """A random point on flat metal at least `margin` px away from every edge."""
    for _ in range(tries):
        r = rng.uniform(dims["R_bore"] + margin, dims["R"] - margin)
        a = rng.uniform(0, 2 * np.pi)
        x, y = pose["cx"] + r * np.cos(a), pose["cy"] + r * np.sin(a)
        iy, ix = int(y), int(x)
        if 0 <= iy < SIZE and 0 <= ix < SIZE and sdf[iy, ix] < -margin:
            return x, y
    raise RuntimeError("no free spot on the part")


def fits_on_metal(alpha, sdf, dims):
    return bool(np.all(sdf[alpha > 0.02] < -(dims["bevel"] + 1.5)))


def scratch_alpha(rng, sdf, pose, dims):
    """Thin, slightly curved anti-aliased line(s); returns their coverage alpha."""
    alpha_total = np.zeros((SIZE, SIZE))
    n_lines = 1 if rng.random() < 0.65 else 2
    length = rng.uniform(30, 75)
    for k in range(n_lines):
        for _ in range(200):
            L = length if k == 0 else rng.uniform(0.4, 0.8) * length
            width = rng.uniform(1.6, 3.0)
            if k == 0:
                x0, y0 = pick_spot(rng, sdf, 6, pose, dims)
                ang = rng.uniform(0, np.pi)
            else:
                ang = ang0 + rng.uniform(-0.15, 0.15)
                off = rng.uniform(3, 7)
                x0 = x00 + off * -np.sin(ang0) + rng.uniform(-4, 4) * np.cos(ang0)
                y0 = y00 + off * np.cos(ang0) + rng.uniform(-4, 4) * np.sin(ang0)
            bend = rng.uniform(-0.18, 0.18) * L
            p0 = np.array([x0, y0])
            p2 = p0 + L * np.array([np.cos(ang), np.sin(ang)])
            p1 = (p0 + p2) / 2 + bend * np.array([-np.sin(ang), np.cos(ang)])
            t = np.linspace(0, 1, int(L * 4) + 2)[:, None]
            pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
            lo = np.floor(pts.min(0) - 4).astype(int)
            hi = np.ceil(pts.max(0) + 4).astype(int)
            if lo.min() < 0 or hi.max() > SIZE:
                continue
            sx, sy = XX[lo[1]:hi[1], lo[0]:hi[0]], YY[lo[1]:hi[1], lo[0]:hi[0]]
            d2 = (sx[..., None] - pts[:, 0]) ** 2 + (sy[..., None] - pts[:, 1]) ** 2
            idx = d2.argmin(-1)
            dist = np.sqrt(d2.min(-1))
            tt = t[idx, 0]
            taper = np.sin(np.pi * tt) ** 0.35                    # ends fade out
            w = width * (0.55 + 0.45 * taper)
            a = np.clip(w / 2 + 0.5 - dist, 0, 1) * np.clip(taper * 1.6, 0, 1)
            alpha = np.zeros((SIZE, SIZE))
            alpha[lo[1]:hi[1], lo[0]:hi[0]] = a
            if fits_on_metal(alpha, sdf, dims):
                break
        else:
            raise RuntimeError("could not place scratch")
        if k == 0:
            x00, y00, ang0 = x0, y0, ang
        alpha_total = np.maximum(alpha_total, alpha)
    return alpha_total


def apply_scratch(rng, radiance, alpha):
    bright = rng.random() < 0.6
    strength = rng.uniform(0.6, 0.9) if bright else -rng.uniform(0.45, 0.6)
    return radiance * (1.0 + strength * alpha)[..., None]


def dent_field(rng, sdf, pose, dims):
    """Height change (negative, px) of a shallow elliptical dent and its mask."""
    for _ in range(200):
        a = rng.uniform(7.0, 13.0)
        b = a * rng.uniform(0.6, 1.0)
        psi = rng.uniform(0, np.pi)
        x0, y0 = pick_spot(rng, sdf, a + 4, pose, dims)
        u = (XX - x0) * np.cos(psi) + (YY - y0) * np.sin(psi)
        v = -(XX - x0) * np.sin(psi) + (YY - y0) * np.cos(psi)
        rho2 = (u / a) ** 2 + (v / b) ** 2
        alpha = np.clip(1.0 - rho2, 0, 1)
        if fits_on_metal(alpha, sdf, dims):
            break
    else:
        raise RuntimeError("could not place dent")
    depth = rng.uniform(0.6, 0.9) * a / 7.0
    dh = -depth * alpha**2
    return dh, rho2 <= 0.8**2


def contamination_alpha(rng, sdf, pose, dims):
    """Irregular soft-edged blob; returns alpha (geometric) and an opacity texture."""
    for _ in range(200):
        r0 = rng.uniform(6.0, 11.0)
        x0, y0 = pick_spot(rng, sdf, r0 * 1.5 + 4, pose, dims)
        dx, dy = XX - x0, YY - y0
        th = np.arctan2(dy, dx)
        rad = np.ones_like(th)
        for k in range(2, 7):
            rad += rng.uniform(0, 0.28 / k * 2) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
        shape_sdf = np.hypot(dx, dy) - r0 * rad
        alpha = ndimage.gaussian_filter(coverage(shape_sdf), rng.uniform(0.6, 1.3))
        if fits_on_metal(alpha, sdf, dims):
            break
    else:
        raise RuntimeError("could not place contamination")
    texture = np.clip(0.75 + 0.25 * normalized_noise(rng, (SIZE, SIZE), 1.2), 0.3, 1.2)
    return alpha, texture


def apply_contamination(rng, radiance, alpha, texture, kind):
    opacity = rng.uniform(0.75, 0.95)
    a = (alpha * texture * opacity)[..., None]
    if kind == "oil":      # darkens and tints brown-amber, kills the sheen
        target = radiance * np.array([0.55, 0.47, 0.33])
    elif kind == "dirt":   # matte brown-grey deposit
        target = np.array([0.07, 0.058, 0.042]) * np.ones_like(radiance)
    else:                  # grey-beige dust, granular
        target = np.array([0.16, 0.15, 0.13]) * np.ones_like(radiance)
        a = a * np.clip(texture, 0, 1)[..., None] ** 2
    return radiance * (1 - a) + target * a


MISSING_KINDS = ("chip", "undrilled", "chip", "blocked")
CONTAMINATION_KINDS = ("oil", "dirt", "dust")


def missing_material_cut(rng, pose, dims, cuts, kind):
    """Either a chip out of the rim, an undrilled bolt hole or a partly blocked hole.

    Returns (new cut-outs dict, extra cut sdf or None, chip fracture sdf or None).
    """
    cuts = dict(cuts)
    hole_ids = [k for k in cuts if k.startswith("hole")]
    if kind == "chip":
        hole_angles = [
            np.arctan2(YY[cuts[h] < 0].mean() - pose["cy"], XX[cuts[h] < 0].mean() - pose["cx"]) for h in hole_ids
        ]
        for _ in range(100):
            beta = rng.uniform(0, 2 * np.pi)
            if min(abs(np.angle(np.exp(1j * (beta - ha)))) for ha in hole_angles) > 0.2:
                break
        rn = rng.uniform(8.0, 12.0) * pose["scale"]
        chip = None
        for j in range(3):
            rr = rn * rng.uniform(0.55, 1.0)
            bj = beta + rng.uniform(-0.06, 0.06)
            dist = dims["R"] + rr * rng.uniform(0.0, 0.5)
            c = circle_sdf(pose["cx"] + dist * np.cos(bj), pose["cy"] + dist * np.sin(bj), rr)
            chip = c if chip is None else np.minimum(chip, c)
        return cuts, chip, chip
    hole = hole_ids[rng.integers(len(hole_ids))]
    if kind == "undrilled":
        del cuts[hole]
        return cuts, None, None
    # blocked: a burr / lump of metal fills part of the hole
    inside = cuts[hole] < 0
    hx, hy = XX[inside].mean(), YY[inside].mean()
    ang = rng.uniform(0, 2 * np.pi)
    off = dims["r_hole"] * rng.uniform(0.8, 1.1)
    blob = circle_sdf(hx + off * np.cos(ang), hy + off * np.sin(ang), dims["r_hole"] * rng.uniform(0.55, 0.8))
    cuts[hole] = np.maximum(cuts[hole], -blob)
    return cuts, None, None


# --------------------------------------------------------------------------- #
# Full render
# --------------------------------------------------------------------------- #
def render(rng, bg_albedo_tile, bg_bump_tile, defect=None, index=0):
    """One photo (uint8 RGB) and, for defects, its boolean ground-truth mask."""
    pose = sample_pose(rng)
    dims = part_dimensions(pose)
    light = sample_lighting(rng)
    cuts = part_cutouts(pose, dims)
    sdf_nominal = part_sdf(pose, dims, cuts)
    alpha_nominal = coverage(sdf_nominal)

    mask = None
    sdf = sdf_nominal
    height_extra = 0.0
    fracture = None
    if defect == "missing_material":
        kind = MISSING_KINDS[index % len(MISSING_KINDS)]
        new_cuts, extra, fracture = missing_material_cut(rng, pose, dims, cuts, kind)
        sdf = part_sdf(pose, dims, new_cuts, extra)
        mask = np.abs(coverage(sdf) - alpha_nominal) >= 0.5
    elif defect == "dent":
        height_extra, mask = dent_field(rng, sdf_nominal, pose, dims)
    alpha = coverage(sdf)

    # Background crop and shading.
    oy, ox = rng.integers(0, BG_TILE - SIZE, 2)
    bg_albedo = bg_albedo_tile[oy:oy + SIZE, ox:ox + SIZE]
    bg_bump = bg_bump_tile[oy:oy + SIZE, ox:ox + SIZE]
    background = shade_background(bg_albedo, bg_bump, light) * cast_shadow(alpha, dims, light)[..., None]

    # Metal.
    height = part_height(pose, dims, sdf) + height_extra
    if fracture is not None:  # rough, freshly broken surface along the chip
        zone = smoothstep(3.0, 0.0, np.abs(fracture)) * (sdf < 0)
        height = height + zone * 0.8 * normalized_noise(rng, (SIZE, SIZE), 0.7)
    albedo_mod, spec_mod = turning_texture(rng, pose, dims)
    metal = shade_metal(pose, light, normals_from_height(height), albedo_mod, spec_mod)

    if defect == "scratch":
        s_alpha = scratch_alpha(rng, sdf, pose, dims)
        metal = apply_scratch(rng, metal, s_alpha)
        mask = s_alpha >= 0.5
    elif defect == "contamination":
        c_alpha, texture = contamination_alpha(rng, sdf, pose, dims)
        kind = CONTAMINATION_KINDS[index % len(CONTAMINATION_KINDS)]
        metal = apply_contamination(rng, metal, c_alpha, texture, kind)
        mask = c_alpha >= 0.5

    radiance = metal * alpha[..., None] + background * (1 - alpha[..., None])
    image = camera(rng, radiance, light)
    if mask is not None:
        if defect != "missing_material":
            mask = mask & (alpha >= 0.5)
        if not mask.any():
            raise RuntimeError(f"empty mask for {defect}")
    return image, mask


# --------------------------------------------------------------------------- #
# Output
# --------------------------------------------------------------------------- #
def save_jpeg(array, path):
    Image.fromarray(array).save(path, format="JPEG", quality=JPEG_QUALITY, optimize=True)


def save_mask(mask, path):
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path, format="PNG", optimize=True)


def main():
    for name in OUTPUT_FOLDERS:
        shutil.rmtree(OUT_DIR / name, ignore_errors=True)
    bg_albedo, bg_bump = make_background_tile()

    jobs = [("train", "good", i) for i in range(N_TRAIN_GOOD)]
    jobs += [("test", "good", i) for i in range(N_TEST_GOOD)]
    for defect, n in DEFECT_COUNTS.items():
        jobs += [("test", defect, i) for i in range(n)]

    kind_ids = {"good": 0, **{d: k + 1 for k, d in enumerate(DEFECT_COUNTS)}}
    for split, kind, i in jobs:
        # One independent stream per image, so images do not depend on each other.
        rng = np.random.default_rng([SEED, 0 if split == "train" else 1, kind_ids[kind], i])
        image, mask = render(rng, bg_albedo, bg_bump, None if kind == "good" else kind, i)
        folder = OUT_DIR / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        save_jpeg(image, folder / f"{i:03d}.jpg")
        if mask is not None:
            gt = OUT_DIR / "ground_truth" / kind
            gt.mkdir(parents=True, exist_ok=True)
            save_mask(mask, gt / f"{i:03d}_mask.png")
    print(f"wrote {len(jobs)} images to {OUT_DIR}")


if __name__ == "__main__":
    main()
