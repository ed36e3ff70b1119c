"""Does the label-free selection score of ``auto`` rank its candidates as the real defects do?

For a data set in the MVTec AD layout, runs ``auto``'s search on ``train/good`` (as training does,
after the run's 20 % threshold hold-out) and, for evaluation only, scores ``test/`` with every
candidate's own search memory: the same models the selection judged. Prints, per candidate, the
label-free scores and the real image AUROC, pixel AUROC, PRO and hit rate, then Spearman's rank
correlation between the label-free score and each real metric, overall and per defect class.

    python benchmarks/selection_agreement.py --data ../shared/data/magnetic_tile --out agreement.json

The selection itself never sees the test set: this script reads it after the search, to measure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.stats import spearmanr  # noqa: E402

from adcore.data import load_image, load_mask, open_image_set  # noqa: E402
from adcore.methods import FitContext  # noqa: E402
from adcore.methods.auto import Auto  # noqa: E402
from adcore.scoring import hit_rate, image_metrics, pixel_auroc, pixel_pro  # noqa: E402
from adcore.training import split_holdout  # noqa: E402


class Measured(Auto):
    """``auto`` whose search also scores the test photos with each candidate's search memory."""

    test_images: list = []
    real: dict = {}

    def _judge(self, proto, cand, bank, patch_maps, val_boxes, v_images, kinds, masks):
        stats = super()._judge(proto, cand, bank, patch_maps, val_boxes, v_images, kinds, masks)
        if getattr(self, "_test_view", None) != cand.view:  # the test photos' features, once per view
            self._test_view = cand.view
            self._test_feats, self._test_boxes = self._extract_validation(proto, self.test_images, FitContext())
        maps = self._candidate_maps(proto, cand, bank, self._test_feats, self._test_boxes, self.test_images)
        self.real[cand.label] = maps
        return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", action="append", default=[], help="auto parameter key=value")
    p.add_argument("--edge-padding", choices=("reflect", "zeros"), default=None,
                   help="the candidates' edge padding (default: PatchCore's default)")
    args = p.parse_args()
    if args.edge_padding:
        from dataclasses import replace

        from adcore.methods.patchcore import PretrainedFeatures

        PretrainedFeatures.common_feature_params = [
            replace(q, default=args.edge_padding) if q.name == "edge_padding" else q
            for q in PretrainedFeatures.common_feature_params
        ]
    image_set = open_image_set(args.data)
    normals = [load_image(r.path) for r in image_set.normal_train]
    fit_idx, _ = split_holdout(len(normals), 0.2, args.seed)
    fit_images = [normals[i] for i in fit_idx]
    test = image_set.test
    Measured.test_images = [load_image(r.path) for r in test]
    labels = np.array([r.label for r in test])
    masks = [np.zeros((r.height, r.width), bool) if r.is_normal else load_mask(r) for r in test]
    params = dict(kv.split("=", 1) for kv in args.param)
    from adcore.cli.train import parse_params

    method = Measured(seed=args.seed, max_members=1, **parse_params(Auto, [f"{k}={v}" for k, v in params.items()]))
    t0 = time.monotonic()
    # Only the search is needed: stop after it by fitting members on nothing heavier than required.
    from adcore.methods.auto import working_size

    method.config_ = method.get_params()
    method.config_["image_size"] = method.config_["image_size"] or working_size(fit_images)
    method.device_ = FitContext().device
    method.rng_ = np.random.default_rng(args.seed)
    method.augmentations_ = []
    method._build()
    rows = _search_only(method, fit_images)
    print(f"search: {time.monotonic() - t0:.0f} s on {len(fit_images)} photos", file=sys.stderr)
    table = []
    for row in rows:
        maps = Measured.real[row["candidate"]]
        scores = np.array([m.max() for m in maps])
        real = image_metrics(scores, labels != "good")
        entry = {**row, "real_image_auroc": real["image_auroc"], "real_pixel_auroc": pixel_auroc(maps, masks),
                 "real_pro": pixel_pro(maps, masks), "real_hit_rate": hit_rate(maps, masks)}
        for cls in sorted(set(labels) - {"good"}):
            keep = (labels == "good") | (labels == cls)
            entry[f"real {cls}"] = image_metrics(scores[keep], labels[keep] != "good")["image_auroc"]
        table.append(entry)
    Path(args.out).write_text(json.dumps(table, indent=2))
    cols = ["score", "image", "pixel", "real_image_auroc", "real_pixel_auroc", "real_pro", "real_hit_rate"]
    print(" | ".join(["candidate".ljust(50)] + [c[:12].ljust(12) for c in cols]))
    for e in sorted(table, key=lambda e: -e["score"]):
        print(" | ".join([e["candidate"].ljust(50)] + [f"{e[c]:.4f}".ljust(12) for c in cols]))
    print("\nSpearman rank correlation, label-free statistic vs real metric (over candidates):")
    stats = ["score", "image", "pixel"] + [k for k in table[0] if (k.endswith(" image") or k.endswith(" pixel"))
                                           and not k.startswith("beats best")]  # per family, not the bootstrap
    reals = ["real_image_auroc", "real_pixel_auroc", "real_pro", "real_hit_rate"] + [k for k in table[0] if k.startswith("real ")]
    print(" | ".join(["label-free".ljust(16)] + [r.replace("real_", "")[:14].ljust(14) for r in reals]))
    for s in stats:
        vals = []
        for r in reals:
            rho = spearmanr([e[s] for e in table], [e[r] for e in table]).statistic
            vals.append(f"{rho:+.2f}".ljust(14))
        print(" | ".join([s.ljust(16)] + vals))
    return 0


def _search_only(method: Measured, images):
    """The search part of ``Auto._fit``, without the final fit."""
    from adcore.methods.auto import MAX_VALIDATION, MIN_DEFECTS_PER_FAMILY, MIN_VALIDATION, candidate_grid, validation_set
    import math

    cfg = method.config_
    n = len(images)
    n_val = min(MAX_VALIDATION, max(MIN_VALIDATION, round(n * cfg["validation_share"])))
    order = method.rng_.permutation(n)
    val = [images[i] for i in order[:n_val]]
    rest = [images[i] for i in order[n_val:]]
    bank = [rest[i] for i in method.rng_.permutation(len(rest))[: cfg["search_images"]]]
    tile = cfg["image_size"] if cfg["tiling"] == "on" else 0
    grid = candidate_grid(tile)
    per_family = max(1, round(MIN_DEFECTS_PER_FAMILY / n_val))
    from adcore.photo_cache import PhotoCache

    with PhotoCache(max_side=None) as method._scratch:  # where the search keeps the leaders' maps
        v_images, kinds, masks, source = validation_set(val, per_family, method.rng_)
        return method._search(grid, bank, v_images, np.array(kinds), masks, np.array(source), FitContext())[0]


if __name__ == "__main__":
    raise SystemExit(main())
