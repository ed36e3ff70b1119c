"""The real ranking of ``auto``'s candidates: each one fitted in full (as PatchCore, on all of
``train/good``) and measured on ``test/``, to compare with the label-free ranking the search makes.

    python benchmarks/real_ranking.py --data ../shared/data/magnetic_tile --out real.json [--label-free sel.json]

With ``--label-free`` (a run's ``config.json`` or the JSON of ``selection_agreement.py``), prints
Spearman's rank correlation between the label-free selection score (and its image and pixel parts)
and each real metric over the candidates. Test labels are read here to measure, never by ``auto``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adcore.cli.bench import bench  # noqa: E402
from adcore.data import load_image, open_image_set  # noqa: E402
from adcore.methods.auto import candidate_grid, working_size  # noqa: E402

REAL = ("image_auroc", "pixel_auroc", "pixel_pro", "hit_rate")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--label-free", default=None)
    p.add_argument("--edge-padding", default="reflect", choices=("reflect", "zeros"))
    p.add_argument("--only", type=int, nargs="*", default=None, help="candidate indices to run (default all)")
    args = p.parse_args()
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.exists() else []
    have = {r["candidate"] for r in done}
    grid = candidate_grid()
    size = working_size([load_image(r.path) for r in open_image_set(args.data).normal_train])
    print(f"working size {size}", file=sys.stderr)
    for i, cand in enumerate(grid):
        if (args.only is not None and i not in args.only) or cand.label in have:
            continue
        base = {"image_size": size, "seed": 0, "batch_size": 16}
        params = {**cand.params(base), "edge_padding": args.edge_padding}
        rows = bench(args.data, ["patchcore"], params={"patchcore": params}, scorers=["own"])
        row = {"candidate": cand.label, **{k: rows[0].get(k) for k in (*REAL, "train_seconds", "error")}}
        done.append(row)
        out.write_text(json.dumps(done, indent=2))
        print(json.dumps(row), flush=True)
    print(f"{'candidate':52} " + " ".join(f"{k:>12}" for k in (*REAL, "train_seconds")))
    for r in done:
        print(f"{r['candidate']:52} " + " ".join(f"{(r.get(k) or 0):12.4f}" for k in (*REAL, "train_seconds")))
    if args.label_free:
        from scipy.stats import spearmanr

        doc = json.loads(Path(args.label_free).read_text())
        rows = doc["selection"]["candidates"] if isinstance(doc, dict) else doc
        free = {r["candidate"]: r for r in rows}
        common = [r for r in done if r["candidate"] in free]
        print(f"\nSpearman over {len(common)} candidates, label-free (rows) vs real (columns):")
        print(f"{'':10}" + "".join(f"{k:>14}" for k in REAL))
        for stat in ("score", "image", "pixel"):
            rhos = [spearmanr([free[r["candidate"]][stat] for r in common], [r[k] for r in common]).statistic for k in REAL]
            print(f"{stat:10}" + "".join(f"{v:+14.2f}" for v in rhos))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
