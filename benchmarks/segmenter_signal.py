"""Would auto's label-free signal tell when the defect segmenter helps? Normal photos kept aside as auto
keeps them, with auto's synthetic families pasted on (the segmenter trains on CutPaste and scar, not on
these), scored by PatchCore and by PatchCore + segmenter fitted on the rest with the same base setting.
Prints each one's image and pixel separation and the share of synthetic defects located (hottest pixel
within 3 px of the mask). Test photos and labels are not read; compare with `bench` of the same settings.

    python benchmarks/segmenter_signal.py sample_data layers=8+16 neighbourhood=3 normalize=none
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adcore.data import load_image, open_image_set
from adcore.methods import FitContext, build_method
from adcore.methods.auto import validation_set, _shrink_mask, judged_shape, _stats, _resize_map, MIN_VALIDATION, MAX_VALIDATION, MIN_DEFECTS_PER_FAMILY

data, base = sys.argv[1], dict(kv.split("=") for kv in sys.argv[2:])
base = {k: (int(v) if v.isdigit() else v) for k, v in base.items()}
s = open_image_set(data)
images = [load_image(r.path) for r in s.normal_train]
rng = np.random.default_rng(0)
n = len(images); n_val = min(MAX_VALIDATION, max(MIN_VALIDATION, round(n * 0.2)))
order = rng.permutation(n)
val = [images[i] for i in order[:n_val]]; rest = [images[i] for i in order[n_val:]]
per_family = max(1, round(MIN_DEFECTS_PER_FAMILY / n_val))
v_images, kinds, masks, source = validation_set(val, per_family, rng)
v_images = list(v_images); kinds = np.array(kinds)
masks = [None if m is None else _shrink_mask(m, judged_shape(*m.shape)) for m in masks]
for name in ("patchcore", "patchcore_segmenter"):
    t = time.monotonic()
    m = build_method(name, **base).fit(rest, FitContext(device=torch.device("cpu")))
    pred = m.predict(v_images)
    maps = [_resize_map(torch.from_numpy(np.asarray(a, np.float32)), judged_shape(*a.shape)) for a in pred.anomaly_maps]
    st = _stats(maps, kinds, masks, dilation=3)
    fam = "  ".join(f"{f}: img {a:.3f} pix {p:.3f}" for f, (a, p) in st["families"].items())
    print(f"{name:<20} image {st['image']:.4f} pixel {st['pixel']:.4f} located {st['hit']:.3f}  ({time.monotonic() - t:.0f} s)\n    {fam}", flush=True)
