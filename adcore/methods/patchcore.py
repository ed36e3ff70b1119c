"""Methods on frozen ImageNet features: PatchCore (a memory bank of normal patches) and a Gaussian
of pooled features. Nothing is trained: fitting is one pass over the normal images."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcore.backbones import BACKBONES, load_backbone
from adcore.encoders import GaussianDensity, normalize_exposure
from adcore.methods.base import (
    COMMON_PARAMS,
    FitContext,
    Method,
    Prediction,
    ResizeRule,
    gaussian_blur,
    register_method,
)
from adcore.photo_cache import TiledImages
from adcore.registry import Param
from adcore.tiling import cut_tiles, stitch, tile_boxes

# Feature maps by stride (fraction of the image size), so one choice means the same for every backbone.
LAYER_CHOICES = ("16+32", "8+16", "8+16+32", "4+8", "4+8+16", "8", "16", "32")
REPORT_EVERY_S = 0.5
EDGE_PAD = 32  # pixels mirrored around the input with edge_padding="reflect" (the deepest stride, so every map crops evenly)
TILE_OVERLAP = 0.25
DISTANCE_CHUNK = 1 << 22  # query x bank distances computed at once (16 MB of float32)
# The coreset is chosen from at most this many bytes of patch features (float32): where a set has
# more patches (many photos, or many tiles), each batch's patches are subsampled at random first, so
# memory does not grow with the number of photos (the greedy selection's cost does not either).
MAX_CANDIDATE_BYTES = 1 << 30


def parse_layers(text: str) -> list[int]:
    return [int(s) for s in text.split("+")]


class PretrainedFeatures(Method):
    """Shared by the methods here: a frozen backbone, exposure normalisation, batched extraction."""

    default_image_size = 224  # the networks' ImageNet size; on the tile photos 192-320 measured alike
    augmentation_role = (
        "Not used: the features come from a network trained on ImageNet and are not trained further."
    )
    common_feature_params = [
        Param("backbone", str, "efficientnet_lite0", "ImageNet network the features come from (frozen).",
              choices=tuple(BACKBONES.names())),
        Param("normalize", str, "image", "image: each photo brought to the same brightness and contrast "
              "(median and quartiles) first, for varying exposure; none: photos as they are.",
              choices=("image", "none")),
        Param("batch_size", int, 16, "Images per forward pass.", 1, 512),
        Param("keep_aspect", bool, True, "Keep each photo's width:height ratio (about image_size x image_size "
              "pixels, sides in multiples of 32) instead of squashing it to a square, so long or narrow parts "
              "keep their texture's proportions. Photos of the same shape are batched together."),
        Param("edge_padding", str, "reflect", "What the network sees beyond the photo's edges: reflect mirrors "
              f"the photo ({EDGE_PAD} px), so edges and corners look like the rest of the surface; zeros is the "
              "network's own zero padding, which makes edges look unusual and their heat maps hot.",
              choices=("reflect", "zeros")),
        Param("tile_size", int, 0, "Cut each photo into overlapping tiles of this many native pixels a side, "
              "each seen at image_size, and stitch their maps back (0: the whole photo at image_size). For "
              "large photos whose small defects vanish when the whole photo is shrunk.", 0, 8192),
    ]
    # Models saved before these parameters existed were fitted on squares with zero padding.
    defaults_of_older_models = {"keep_aspect": False, "edge_padding": "zeros"}

    @classmethod
    def param_specs(cls) -> list[Param]:
        size_help = ("Photos are resized to about this x this pixels before the network (exactly this square "
                     "when keep_aspect is off).")
        common = [
            replace(p, default=cls.default_image_size, help=size_help) if p.name == "image_size" else p
            for p in COMMON_PARAMS
        ]
        return common + cls.common_feature_params + cls.params

    def _build(self) -> None:
        # The frozen network and the strides it is read at; subclasses build ``model_`` around them.
        self.backbone_ = load_backbone(self.config_["backbone"]).to(self.device_)
        self.strides_ = parse_layers(self.config_["layers"])

    def frozen_modules(self) -> list[nn.Module]:
        return [self.backbone_]

    def _feature_options(self) -> dict:
        """How the inference module reads the frozen network: strides, exposure normalisation, edges."""
        cfg = self.config_
        return {"strides": self.strides_, "normalize": cfg["normalize"], "edge_padding": cfg["edge_padding"]}

    def resize_rule(self) -> ResizeRule:
        return ResizeRule(self.config_["image_size"], keep_aspect=self.config_["keep_aspect"])

    def _fit_images(self, images: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        # Photos (or their tiles, cut when read) as they are; _each_batch resizes them batch by batch.
        tile = self.config_["tile_size"]
        if not tile:
            return images
        return TiledImages(images, tile, TILE_OVERLAP)

    def _features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> {stride: (B, C, S/stride, S/stride)} from the frozen backbone."""
        return backbone_features(self.backbone_, x, self.strides_, self.config_["normalize"], self.config_["edge_padding"])

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> Prediction:
        """As ``Method.predict``; with ``tile_size`` each photo is scored tile by tile, its map stitched
        from the tiles' maps, its score the stitched map's maximum (or the highest tile score where
        there are no maps) and its embedding the tiles' mean."""
        self._check_fitted()
        tile = self.config_["tile_size"]
        if not tile:
            return super().predict(images, batch_size)
        whole = super().predict  # each tile as a photo
        return predict_tiled(images, tile, 1, lambda tiles: [whole(tiles, batch_size)])[0]

    def _each_batch(self, images: Sequence[np.ndarray], ctx: FitContext, phase: str) -> Iterator[torch.Tensor]:
        """Yield (B, 3, H, W) tensors of ``images`` at their input shapes, reporting progress; stops
        early (keeping what was seen) when the budget is spent."""
        bs = self.config_["batch_size"]
        total, seen = sum(math.ceil(len(members) / bs) for members in self._shape_groups(images).values()), 0
        for step, (idx, x) in enumerate(self._shaped_batches(images, bs), 1):
            yield x
            seen += len(idx)
            ctx.report(step=step, total_steps=total, images=seen, phase=phase)
            if ctx.out_of_budget() and step < total:
                break


def backbone_features(
    backbone: nn.Module, x: torch.Tensor, strides: Sequence[int], normalize: str, edge_padding: str
) -> dict[int, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] -> {stride: (B, C, H/stride, W/stride)} from the frozen ``backbone``:
    exposure evened out first with ``normalize="image"``, and with ``edge_padding="reflect"`` the
    photo mirrored around its edges and the features of the mirrored border cut off again."""
    if normalize == "image":
        x = normalize_exposure(x)
    if edge_padding != "reflect":
        return backbone(x, strides)
    pad = min(EDGE_PAD, x.shape[-2] - 1, x.shape[-1] - 1)
    pad -= pad % max(strides)
    features = backbone(F.pad(x, (pad, pad, pad, pad), mode="reflect"), strides)
    return {s: f[..., pad // s : f.shape[-2] - pad // s, pad // s : f.shape[-1] - pad // s] for s, f in features.items()}


# -- PatchCore -------------------------------------------------------------------------------------

def patch_embedding(
    features: dict[int, torch.Tensor], projection: torch.Tensor | None, neighbourhood: int = 3
) -> torch.Tensor:
    """PatchCore's locally aware patch features: each level averaged over its ``neighbourhood`` x
    ``neighbourhood`` positions (odd; the paper's 3), deeper levels upsampled to the finest one,
    concatenated, optionally randomly projected. Returns (B, D, h, w) at the finest level's resolution."""
    strides = sorted(features)
    size = features[strides[0]].shape[-2:]
    parts = []
    for s in strides:
        f = features[s]
        if neighbourhood > 1:
            f = F.avg_pool2d(f, neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=False)
        if f.shape[-2:] != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        parts.append(f)
    x = torch.cat(parts, 1)
    if projection is not None:
        x = torch.einsum("bchw,cd->bdhw", x, projection)
    return x


def greedy_coreset(
    points: torch.Tensor,
    n_select: int,
    *,
    projection_dim: int = 128,
    group_size: int = 65536,
    seed: int = 0,
    on_step: Callable[[int], bool] | None = None,
) -> torch.Tensor:
    """Indices of ``n_select`` rows of ``points`` (N, D) chosen by greedy k-center selection: each
    pick is the point farthest from all picks so far, so rare normal patterns are kept and common
    ones are not repeated. As in PatchCore, distances are measured in a random projection to
    ``projection_dim`` dimensions (Johnson-Lindenstrauss) to make each step cheap.

    Each step reads every candidate, so the cost grows with N x n_select. To keep it linear in N,
    more than ``group_size`` points are split at random into groups of at most that size, each
    giving its share of the picks (a group still holds thousands of points per pick, so rare
    patterns are still found). ``on_step(i)`` is called now and then with the number picked so
    far; returning True stops early with those picks. Picks come in greedy order (interleaved
    across groups), so the first k of them are the coreset of size k.
    """
    n, dim = points.shape
    n_select = max(1, min(n_select, n))
    gen = torch.Generator().manual_seed(seed)
    if projection_dim and projection_dim < dim:
        matrix = torch.randn(dim, projection_dim, generator=gen) / math.sqrt(projection_dim)
        points = points @ matrix.to(points.device, points.dtype)
    n_groups = math.ceil(n / group_size)
    order = torch.randperm(n, generator=gen).to(points.device) if n_groups > 1 else None
    # Split the picks in proportion to the group sizes (largest remainder), in one stable order.
    bounds = [round(g * n / n_groups) for g in range(n_groups + 1)]
    quota = [n_select * (bounds[g + 1] - bounds[g]) / n for g in range(n_groups)]
    counts = [int(q) for q in quota]
    for g in sorted(range(n_groups), key=lambda g: counts[g] - quota[g])[: n_select - sum(counts)]:
        counts[g] += 1
    chosen, done, stopped, last_call = [], 0, False, time.monotonic()
    with _one_cpu_thread(points.device):
        for g in range(n_groups):
            if stopped:
                break
            members = order[bounds[g] : bounds[g + 1]] if order is not None else None
            group = points if members is None else points[members]
            sq_norms = (group * group).sum(1)
            nearest = torch.full((len(group),), float("inf"), device=group.device, dtype=group.dtype)
            dist = torch.empty_like(nearest)
            index = int(torch.randint(len(group), (1,), generator=gen))
            picks = []
            for _ in range(counts[g]):
                picks.append(index)
                # Squared distance of every point to the new pick; keep each point's nearest pick.
                torch.mv(group, group[index], out=dist)
                dist.mul_(-2.0).add_(sq_norms).add_(float(sq_norms[index]))
                torch.minimum(nearest, dist, out=nearest)
                index = int(nearest.argmax())
                done += 1
                if on_step is not None and time.monotonic() - last_call >= REPORT_EVERY_S:
                    last_call = time.monotonic()
                    if on_step(done):
                        stopped = True
                        break
            picks_t = torch.tensor(picks, dtype=torch.long, device=group.device)
            chosen.append(picks_t if members is None else members[picks_t])
    # Interleave the groups' picks by their rank within the group, so that every prefix of the result
    # is itself a coreset of that size spread over all groups (a 1 % memory is the first tenth of a 10 %
    # one). The set of picks, and so PatchCore's memory, is the same in any order.
    ranks = torch.cat([(torch.arange(len(c), dtype=torch.float64) + 0.5) / max(1, counts[g])
                       for g, c in enumerate(chosen)]) if chosen else torch.zeros(0)
    picks_all = torch.cat(chosen).cpu() if chosen else torch.zeros(0, dtype=torch.long)
    return picks_all[torch.sort(ranks, stable=True).indices]


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Each greedy step is a few small memory-bound operations; on CPU, waking other threads for
    each costs more than it saves (7x slower on a busy 2-core machine), so use one meanwhile."""
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def knn_distance(queries: torch.Tensor, bank: torch.Tensor, k: int, exact: bool = False) -> torch.Tensor:
    """(Q, D) queries, (M, D) bank -> (Q,) mean Euclidean distance to the k nearest bank rows,
    computed in chunks of queries so memory stays bounded whatever the sizes.

    ``cdist`` finds the neighbours by |q|^2 + |b|^2 - 2 q.b, which in float32 leaves noise of about
    1e-7 of |q|^2 in a squared distance: nothing for a new photo, but a patch that is itself in the
    memory (a training photo's) is then 1e-3 or more of a typical distance away from itself, a different
    amount in every library. ``exact`` measures the distances to the neighbours found from the
    differences instead, so an exported graph gives the same score as torch for those photos too."""
    k = min(k, len(bank))
    rows = max(1, DISTANCE_CHUNK // max(1, len(bank)))
    out = []
    for start in range(0, len(queries), rows):
        chunk = queries[start : start + rows]
        d = torch.cdist(chunk, bank)
        if exact:
            nearest = d.topk(k, dim=1, largest=False).indices
            out.append((chunk[:, None, :] - bank[nearest]).pow(2).sum(-1).sqrt().mean(1))
        else:
            out.append(d.topk(k, dim=1, largest=False).values.mean(1) if k > 1 else d.min(1).values)
    return torch.cat(out) if out else queries.new_zeros(0)


class PatchCoreModel(nn.Module):
    """A fitted PatchCore's inference: the frozen backbone (submodule), the memory of normal patches
    and the optional random projection (buffers). ``forward`` maps (B, 3, H, W) float images in [0, 1],
    at the network input shape, to ``scores`` (B,), smoothed ``maps`` (B, H, W) and mean patch
    ``embeddings`` (B, D)."""

    def __init__(
        self,
        backbone: nn.Module,
        bank: torch.Tensor,
        projection: torch.Tensor | None,
        *,
        strides: Sequence[int],
        normalize: str,
        edge_padding: str,
        neighbourhood: int,
        neighbours: int,
        map_sigma: float,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("bank", bank)
        self.register_buffer("projection", projection)
        self.strides, self.normalize, self.edge_padding = list(strides), normalize, edge_padding
        self.neighbourhood, self.neighbours, self.map_sigma = neighbourhood, neighbours, map_sigma

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # The memory's length was chosen by fitting: an unfitted module takes the stored one.
        bank = state_dict.get(prefix + "bank")
        if bank is not None and bank.shape != self.bank.shape:
            self.bank = self.bank.new_empty(bank.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, h, w) locally aware patch embeddings."""
        features = backbone_features(self.backbone, x, self.strides, self.normalize, self.edge_padding)
        return patch_embedding(features, self.projection, self.neighbourhood)

    def distances(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) patch embeddings -> (B, 1, h, w) distances to the nearest remembered patches."""
        b, d, h, w = emb.shape
        scores = knn_distance(emb.permute(0, 2, 3, 1).reshape(-1, d), self.bank, self.neighbours, exact=True)
        return scores.view(b, 1, h, w)

    def outputs(self, x: torch.Tensor, emb: torch.Tensor, patch_scores: torch.Tensor) -> dict:
        """(B, 1, h, w) patch scores -> the smoothed maps at the input size, their maxima as image
        scores, and the mean patch embedding of each image."""
        maps = F.interpolate(patch_scores, size=x.shape[-2:], mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps[:, 0], self.map_sigma)
        return {"scores": maps.flatten(1).max(1).values, "embeddings": emb.mean((2, 3)), "maps": maps}

    def forward(self, x: torch.Tensor) -> dict:
        emb = self.embed(x)
        return self.outputs(x, emb, self.distances(emb))


def predict_tiled(
    images: Sequence[np.ndarray], tile: int, n_models: int,
    predict_tiles: Callable[[list[np.ndarray]], list[Prediction]],
) -> list[Prediction]:
    """Score photos tile by tile: ``predict_tiles`` gives ``n_models`` Predictions for one photo's tiles
    (several models may share the network pass); each model's photo map is stitched from its tiles'
    maps, its score is the stitched map's maximum (or the highest tile score where there are no maps)
    and its embedding the tiles' mean. One Prediction per model."""
    scores = [np.zeros(len(images)) for _ in range(n_models)]
    embeddings: list[list[np.ndarray]] = [[] for _ in range(n_models)]
    maps: list[list[np.ndarray]] = [[] for _ in range(n_models)]
    for i, image in enumerate(images):
        boxes = tile_boxes(*image.shape[:2], tile, TILE_OVERLAP)
        for j, part in enumerate(predict_tiles(cut_tiles(image, boxes))):
            if part.anomaly_maps is not None:
                maps[j].append(stitch(part.anomaly_maps, boxes, image.shape[:2]))
                scores[j][i] = float(maps[j][-1].max())
            else:
                scores[j][i] = float(part.scores.max())
            if part.embeddings is not None:
                embeddings[j].append(part.embeddings.mean(0))
    return [
        Prediction(scores=scores[j], embeddings=np.stack(embeddings[j]) if embeddings[j] else None,
                   anomaly_maps=maps[j] or None)
        for j in range(n_models)
    ]  # fmt: skip


@register_method
class PatchCore(PretrainedFeatures):
    name = "patchcore"
    title = "PatchCore (pretrained patch memory)"
    summary = (
        "Remembers what small patches of normal parts look like to an ImageNet network; a patch of a "
        "new photo unlike every remembered one lights up the map. Fits in one pass, no training."
    )
    params = [
        Param("layers", str, "16+32", "Feature maps combined, by stride: 16+32 = 1/16 and 1/32 of the image "
              "size; finer strides (8) draw sharper maps of small defects but see less context and cost more.",
              choices=LAYER_CHOICES),
        Param("neighbourhood", int, 5, "Each patch's features are averaged over this many x this many "
              "neighbouring positions, so a patch is judged with its surroundings: larger sees large, faint "
              "defects (uneven surfaces) better, smaller keeps tiny ones sharp. The paper used 3.",
              choices=(1, 3, 5, 7, 9)),
        Param("projection_dim", int, 0, "Randomly project patch features to this many dimensions (0: keep all).",
              0, 4096),
        Param("coreset_ratio", float, 0.1, "Fraction of all normal patches kept in memory (greedy coreset).",
              0.0001, 1.0, log=True),
        Param("max_bank", int, 16384, "At most this many patches kept in memory (bounds memory and scoring time).",
              64, 1_000_000, log=True),
        Param("neighbours", int, 1, "Patch score = mean distance to this many nearest remembered patches.", 1, 50),
        Param("map_sigma", float, 4.0, "Gaussian smoothing of the anomaly map, in pixels at image_size.", 0.0, 32.0),
    ]

    # Models saved before ``neighbourhood`` existed were fitted with the paper's 3.
    defaults_of_older_models = {**PretrainedFeatures.defaults_of_older_models, "neighbourhood": 3}

    def _build(self) -> None:
        super()._build()
        cfg = self.config_
        channels = sum(self.backbone_.channels[s] for s in self.strides_)
        dim = cfg["projection_dim"]
        projection = None
        if dim and dim < channels:
            gen = torch.Generator().manual_seed(cfg["seed"])
            projection = (torch.randn(channels, dim, generator=gen) / math.sqrt(dim)).to(self.device_)
        bank = torch.zeros(0, dim if projection is not None else channels, device=self.device_)
        self.model_ = self._new_model(
            self.backbone_, bank, projection, **self._feature_options(), neighbourhood=cfg["neighbourhood"],
            neighbours=cfg["neighbours"], map_sigma=cfg["map_sigma"],
        ).to(self.device_)

    def _new_model(self, *args, **kwargs) -> PatchCoreModel:
        """The unfitted inference module (a subclass may extend PatchCore's)."""
        return PatchCoreModel(*args, **kwargs)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model_.embed(x)

    def _fit(self, images: Sequence[np.ndarray], ctx: FitContext) -> None:
        patches, seen, share = [], 0, 1.0
        gen = torch.Generator().manual_seed(self.config_["seed"])
        with torch.inference_mode():
            for x in self._each_batch(images, ctx, "extracting features"):
                emb = self._embed(x)
                flat = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
                if not seen:  # the share to keep, from the first batch's patches per image
                    expected = len(flat) / len(x) * len(images)
                    share = min(1.0, MAX_CANDIDATE_BYTES / (4 * flat.shape[1]) / expected)
                seen += len(flat)
                if share < 1.0:
                    keep = max(1, round(len(flat) * share))
                    flat = flat[torch.randperm(len(flat), generator=gen)[:keep].to(flat.device)]
                patches.append(flat)
        self._fit_patches(torch.cat(patches), len(images), ctx, seen=seen)

    def fit_patches(self, patches: torch.Tensor, n_images: int, ctx: FitContext | None = None) -> "PatchCore":
        """Fit from patch embeddings already made as ``_embed`` makes them, (N, D) rows from
        ``n_images`` photos: the memory is chosen exactly as ``fit`` would from the same patches.
        For callers that have the features already (``auto`` reuses its search's)."""
        ctx = ctx or FitContext()
        self._prepare(ctx)
        self._fit_patches(patches.to(self.device_), n_images, ctx)
        return self

    def _fit_patches(self, patches: torch.Tensor, n_images: int, ctx: FitContext, seen: int | None = None) -> None:
        """Choose the memory from ``patches``, a random subset of ``seen`` patches (default: all of them);
        more than ``MAX_CANDIDATE_BYTES`` of them are subsampled at random first."""
        cfg = self.config_
        seen = len(patches) if seen is None else seen
        limit = max(1, MAX_CANDIDATE_BYTES // (4 * max(1, patches.shape[1])))
        if len(patches) > limit:
            gen = torch.Generator().manual_seed(cfg["seed"])
            patches = patches[torch.randperm(len(patches), generator=gen)[:limit].to(patches.device)]
        self.n_patches_ = seen  # how many patches the photos had (not saved; auto reads it)
        n_keep = min(cfg["max_bank"], len(patches), max(1, int(round(seen * cfg["coreset_ratio"]))))

        def on_step(i: int) -> bool:
            ctx.report(step=i, total_steps=n_keep, images=n_images, phase="selecting coreset")
            return ctx.out_of_budget()

        if n_keep >= len(patches):
            self.model_.bank = patches.contiguous()
        else:
            idx = greedy_coreset(patches, n_keep, seed=cfg["seed"], on_step=on_step)
            self.model_.bank = patches[idx.to(patches.device)].contiguous()
        ctx.report(step=n_keep, total_steps=n_keep, images=n_images, phase="selecting coreset")

    def _distances(self, emb: torch.Tensor) -> torch.Tensor:
        return self.model_.distances(emb)

    def _outputs(self, x: torch.Tensor, emb: torch.Tensor, patch_scores: torch.Tensor) -> dict:
        return self.model_.outputs(x, emb, patch_scores)


# -- Gaussian of pooled features -------------------------------------------------------------------

class PooledGaussianModel(GaussianDensity):
    """A fitted Gaussian of pooled features: the frozen backbone (submodule) and the normal photos'
    ``location`` and ``precision`` (buffers). ``forward`` maps (B, 3, H, W) float images in [0, 1] to
    ``scores`` (B,), the Mahalanobis distance of each photo's pooled features, and those
    ``embeddings`` (B, D)."""

    def __init__(self, backbone: nn.Module, *, strides: Sequence[int], normalize: str, edge_padding: str) -> None:
        super().__init__(sum(backbone.channels[s] for s in strides))
        self.backbone = backbone
        self.strides, self.normalize, self.edge_padding = list(strides), normalize, edge_padding

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D): each feature map averaged over the photo, concatenated."""
        features = backbone_features(self.backbone, x, self.strides, self.normalize, self.edge_padding)
        return torch.cat([features[s].mean((2, 3)) for s in sorted(features)], 1)

    def forward(self, x: torch.Tensor) -> dict:
        emb = self.embed(x)
        return {"scores": super().forward(emb), "embeddings": emb}


@register_method
class PretrainedGaussian(PretrainedFeatures):
    name = "pretrained_gaussian"
    title = "Gaussian on pretrained features"
    summary = (
        "Averages ImageNet features over the whole photo and scores how far that average lies from "
        "the normal photos' (Mahalanobis distance). Fast and simple; no map of where."
    )
    params = [
        Param("layers", str, "8+16+32", "Feature maps averaged and combined, by stride.", choices=LAYER_CHOICES),
    ]

    def _build(self) -> None:
        super()._build()
        self.model_ = PooledGaussianModel(self.backbone_, **self._feature_options()).to(self.device_)

    def _fit(self, images: np.ndarray, ctx: FitContext) -> None:
        with torch.inference_mode():
            embeddings = torch.cat([self.model_.embed(x) for x in self._each_batch(images, ctx, "extracting features")])
        self.model_.fit(embeddings)
