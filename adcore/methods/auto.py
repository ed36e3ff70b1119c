"""A method that configures itself from normal photos alone: ``auto``, the recommended default.

No fixed setting of PatchCore serves every product (measured: on one set fine strides win, on another
coarse ones; exposure normalisation helps one and hurts another), and the user has no defect labels
to tune with. So ``auto`` tunes on what it can make itself:

1. It keeps part of the normal photos out (``validation_share``) and pastes synthetic defects of the
   families in ``adcore.synthetic`` onto them: texture blends, spots, smudges and lines. No candidate
   trains on these families (CutPaste-style pastes are left out: measured, they saturate).
2. It fits a small grid of PatchCore candidates on the rest: exposure normalisation on/off, feature
   strides 16+32 / 8+16, neighbourhood 3 / 5, and tiles at native resolution where the photos are
   large. Candidates that see the photos the same way share one feature extraction, and the search
   memories are built from at most ``search_images`` photos, so the search costs about two full fits.
3. Each candidate is judged by how well it separates the synthetic defects from the clean hold-out
   photos, per family, at image level (AUROC of the photo scores) and at pixel level (for each defect,
   the share of clean photos' map pixels below the map's mean inside the defect: each defect counts
   once, however small, like the per-region overlap). The photo scores and the heat maps are chosen
   apart, each by its own part: image separation for the scores, pixel separation for the maps.
   Measured on the magnetic tiles, the image part ranks the candidates' real image AUROC the right way
   round and the pixel part the wrong way, while the pixel part agrees with the real per-region overlap
   and hit rate; on the demo set both parts agree. The maps come from the scores' choice too unless
   another candidate's maps are clearly better (one model where the evidence does not say otherwise).
4. A paired bootstrap over the hold-out photos says whether a lead is real. The best few candidates
   combined (each one's map put on the scale of the hold-out photos, z-scores, and the maps averaged)
   are judged on the same set; a combination replaces the best single candidate only where it is
   clearly better (the single one matches it in few resamples), or where every candidate is saturated.
   Measured: a combination that is better only within noise lost real image AUROC (0.91 -> 0.87 on the
   demo set), so the hedge must earn its place.
5. The chosen candidates are fitted in full, at PatchCore's 10 % memory, on every normal photo not
   kept aside, and the kept-aside photos set the scale of combined members. They also judge smaller
   memories (1 % and 3 %: prefixes of the same greedy coreset, so no refit), but by default that table
   is only reported (``memory=report``): measured, the real best size differs between sets (1 % on the
   demo flanges, 10 % on the magnetic tiles) and the label-free signal got the tiles clearly wrong
   (3 % "clearly better" for the photo scores, where the real image AUROC falls from 0.97 at 10 % to
   0.95 at 1 %), so it may not decide. ``memory=choose`` lets it. Then each member is refitted on
   every normal photo.
6. Where the kept-aside photos' maps are hotter at some places than others on every clean photo (the
   edges of a part cut out of its background: on the magnetic tiles 96 % of the clean hold-out photos
   had their hottest pixel in the outer band of the map, 29 % of its area), the maximum sits there on
   good and bad photos alike. Each part (scores, maps) is then judged again with per-position scales
   (``position_stats``: each place's mean and spread on the kept-aside clean photos, a z-score per
   place), cross-fitted in two halves so no photo is judged by statistics it helped make, and used
   only where the bootstrap says it is clearly better (``position=auto``). Where a member is tiled or
   the single winner is fitted once on every photo, there are no kept-aside maps and it is not judged.

The whole selection table (candidates, their label-free scores, time, the decision and why) is kept
with the model (``selection_``) and stored in the run. Test photos, labels and masks are never read.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adcore.backbones import BACKBONES
from adcore.methods.base import (
    FitContext, Method, Prediction, ResizeRule, gaussian_blur, register_method, upsample_maps,
)
from adcore.methods.patchcore import (
    DISTANCE_CHUNK,
    TILE_OVERLAP,
    PatchCore,
    greedy_coreset,
    knn_distance,
    patch_embedding,
    predict_tiled,
)
from adcore.photo_cache import PhotoCache, TiledImages, concat, take
from adcore.registry import Param
from adcore.scoring import hits
from adcore.synthetic import FAMILIES, make_defect
from adcore.tiling import stitch, tile_boxes

SEARCH_STRIDES = "8+16+32"  # one extraction gives every candidate's strides
LARGE_PHOTO_SIDE = 3  # photos whose shorter side is this many times image_size also get tiled candidates
MIN_VALIDATION = 6
MAX_VALIDATION = 48
MIN_DEFECTS_PER_FAMILY = 16
SEARCH_BANK = 2048  # patches kept in a candidate's search memory (the final fit keeps PatchCore's coreset)
# Patches the search coreset is chosen from: a random subset drawn from every search photo, so the
# memory covers the normal variation of the whole set (a memory of a few photos makes every
# candidate look worse on real defects, and differently so, than its full fit will be).
SEARCH_CANDIDATE_PATCHES = 20_000
SEARCH_PROJECTION = 64  # dimensions the search coreset measures distances in (PatchCore's own uses 128)
MIN_WORKING_SIZE, MAX_WORKING_SIZE = 224, 256  # the ImageNet networks' scale .. what 2 CPU cores afford (a 10 % memory of 320-px tile photos takes minutes to select)
MEMBER_CORESET = 0.1  # PatchCore's default memory; smaller prefixes of it are tried on the hold-out photos
MEMORY_SHARES = (0.01, 0.03, 0.1)  # memory sizes (share of all patches) judged on the hold-out photos
# The validation maps are judged at most this many pixels on their longer side (masks shrunk alike),
# so the search's memory does not grow with photo resolution; smaller photos are judged as they are.
JUDGED_SIDE = 640
SATURATED = 0.995  # every candidate at or above this selection score: the synthetic set tells them apart no more
BOOTSTRAP = 200
POSITION_GRID = 64  # cells per side of the per-position statistics (in the photo's own frame)
POSITION_PRIOR = 8.0  # photos' worth of weight each cell's variance gets from the pooled one (shrinkage)
POSITION_BLUR = 1.0  # cells: the per-position statistics are smoothed over neighbouring cells


@dataclass(frozen=True)
class Candidate:
    """One PatchCore configuration; ``view`` fields decide the feature extraction it shares."""

    normalize: str
    layers: str
    neighbourhood: int
    tile_size: int = 0
    backbone: str = "efficientnet_lite0"

    @property
    def view(self) -> tuple[str, int, str]:
        return (self.normalize, self.tile_size, self.backbone)

    @property
    def strides(self) -> list[int]:
        return [int(v) for v in self.layers.split("+")]

    @property
    def label(self) -> str:
        tile = f", tiles {self.tile_size}px" if self.tile_size else ""
        net = "" if self.backbone == "efficientnet_lite0" else f", {self.backbone.replace('efficientnet_', '')}"
        return f"strides {self.layers}, neighbourhood {self.neighbourhood}, normalise {self.normalize}{tile}{net}"

    def params(self, base: dict[str, Any]) -> dict[str, Any]:
        return {
            "image_size": base["image_size"],
            "coreset_ratio": MEMBER_CORESET,
            "seed": base["seed"],
            "backbone": self.backbone,
            "batch_size": base["batch_size"],
            "normalize": self.normalize,
            "layers": self.layers,
            "neighbourhood": self.neighbourhood,
            "tile_size": self.tile_size,
        }


def candidate_grid(tile_size: int = 0, backbones: Sequence[str] = ("efficientnet_lite0",)) -> list[Candidate]:
    """The candidates: backbone x normalisation x strides x neighbourhood, and the same with tiles if
    ``tile_size``."""
    tiles = [0] + ([tile_size] if tile_size else [])
    return [
        Candidate(normalize, layers, nbh, tile, backbone)
        for backbone in backbones
        for tile in tiles
        for normalize in ("image", "none")
        for layers in ("16+32", "8+16")
        for nbh in (3, 5)
    ]


def working_size(images: Sequence[np.ndarray]) -> int:
    """The size the candidates see the photos at: the median photo's native size (the square root of
    its area) in multiples of 32, at least the networks' ImageNet scale and at most what the CPU affords.
    Shrinking a photo below its native size only loses the small defects' pixels."""
    native = float(np.median([math.sqrt(im.shape[0] * im.shape[1]) for im in images]))
    return int(min(MAX_WORKING_SIZE, max(MIN_WORKING_SIZE, round(native / 32) * 32)))


def validation_set(
    images: Sequence[np.ndarray], per_family: int, rng: np.random.Generator,
    keep: Callable[[Iterable[np.ndarray]], Sequence[np.ndarray]] = list,
) -> tuple[Sequence[np.ndarray], list[str], list[np.ndarray | None], list[int]]:
    """The clean photos and ``per_family`` defects of each family on each: (images, family or "normal",
    masks (None for clean), index of the clean photo each came from). The defect photos go to
    ``keep`` one by one as they are made (e.g. ``PhotoCache.keep``, so they are never all in memory)."""
    kinds, masks, source = ["normal"] * len(images), [None] * len(images), list(range(len(images)))

    def made() -> Iterator[np.ndarray]:
        for family in FAMILIES:
            for _ in range(per_family):
                for i, image in enumerate(images):
                    defect = make_defect(family, image, rng)
                    kinds.append(family)
                    masks.append(defect.mask)
                    source.append(i)
                    yield defect.image

    return concat(images, keep(made())), kinds, masks, source


def clearly_behind(share: float | None, confidence: float) -> bool:
    """Whether an entry that matches the best in ``share`` of the bootstrap resamples is clearly behind
    it: in at most ``1 - confidence`` of them (counted in resamples, so that exactly 10 % of 200 with
    confidence 0.9 is "at most 10 %", not lost to floating point). None (the best itself) is not."""
    return share is not None and round(share * BOOTSTRAP) <= round((1 - confidence) * BOOTSTRAP)


def _auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(pos > neg) + P(pos == neg) / 2, by ranks."""
    both = np.concatenate([neg, pos])
    ranks = _rankdata(both)
    r_pos = ranks[len(neg) :].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))


def _rankdata(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    # average ranks of ties
    starts = np.r_[0, np.flatnonzero(np.diff(sx)) + 1]
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def pixel_ranks(mask_means: np.ndarray, normal_pixels: np.ndarray) -> np.ndarray:
    """(V,) the share of the clean photos' map values (``normal_pixels``, sorted) below each validation
    photo's mean map value inside its defect's mask (``mask_means``; NaN for clean photos, whose
    entry is not used)."""
    return np.searchsorted(normal_pixels, mask_means) / len(normal_pixels)


def selection_scores(
    image_scores: np.ndarray,
    pixel_rank: np.ndarray,
    kinds: np.ndarray,
    normal_idx: np.ndarray,
    defect_idx: np.ndarray,
    located: np.ndarray | None = None,
) -> dict[str, Any]:
    """Label-free separation of one candidate on (a resample of) the validation set.

    ``image_scores`` (V,) per validation photo; ``pixel_rank`` (V,) where each defect's mask sits
    among the clean photos' pixels (``pixel_ranks``); ``normal_idx`` / ``defect_idx`` the photos to
    use (indices into the validation set, repeats allowed). Returns the per-family image AUROC and
    pixel score and the selection score (their mean over families). With ``located`` (V,), 1 where
    the photo's hottest map pixel is on its defect (``scoring.hits``), also "hit": the share of the
    defects so located, averaged over families (the label-free twin of ``bench``'s hit rate).
    """
    neg = image_scores[normal_idx]
    per_family, hit_by_family = {}, {}
    for family in FAMILIES:
        idx = defect_idx[kinds[defect_idx] == family]
        if not len(idx):
            continue
        image = _auroc(neg, image_scores[idx])
        pixel = float(np.mean(pixel_rank[idx]))
        per_family[family] = (image, pixel)
        if located is not None:
            hit_by_family[family] = float(np.mean(located[idx]))
    image_mean = float(np.mean([v[0] for v in per_family.values()]))
    pixel_mean = float(np.mean([v[1] for v in per_family.values()]))
    out = {"families": per_family, "image": image_mean, "pixel": pixel_mean, "score": (image_mean + pixel_mean) / 2}
    if located is not None:
        out["hit"] = float(np.mean(list(hit_by_family.values())))
    return out


@register_method
class Auto(Method):
    name = "auto"
    title = "Auto-configured PatchCore (recommended)"
    summary = (
        "Tries a small grid of PatchCore settings and keeps the one that best finds synthetic defects "
        "pasted onto normal photos it kept aside; where none is clearly better, it combines the best few. "
        "Uses normal photos only. The selection table is stored with the run."
    )
    augmentation_role = (
        "Not used: the candidates use frozen ImageNet features, and the synthetic defects that judge "
        "them (texture blends, spots, smudges, lines) are built in, so no candidate is judged on "
        "defects it was trained to find."
    )
    params = [
        Param("backbones", str, "efficientnet_lite0", "ImageNet networks the candidates' features come from, "
              "comma-separated (each one more feature extraction in the search): efficientnet_lite0, "
              "efficientnet_lite1, efficientnet_lite2 (their weights: requirements-backbones.txt), resnet18."),
        Param("batch_size", int, 16, "Images per forward pass.", 1, 512),
        Param("validation_share", float, 0.2, "Share of the normal photos kept aside to judge the candidates "
              f"(at least {MIN_VALIDATION}, at most {MAX_VALIDATION}).", 0.05, 0.5),
        Param("search_images", int, 400, "At most this many normal photos build each candidate's memory during "
              "the search (the chosen one is then fitted on all).", 8, 100_000, log=True),
        Param("confidence", float, 0.9, "How clear a lead must be, as a share of bootstrap resamples of the "
              "hold-out photos: a combination replaces the best single candidate, a smaller memory replaces "
              "10 %, and the maps come from another candidate than the scores, only where it is better in at "
              "least this share.", 0.5, 1.0),
        Param("max_members", int, 3, "Candidates combined at most (the best 2 .. this many are tried).", 1, 8),
        Param("memory", str, "report", "report: keep PatchCore's 10 % memory and show how 1 % and 3 % did on the "
              "kept-aside photos; choose: use a smaller one where it is clearly better there (measured "
              "unreliable on one real set, hence not the default).", choices=("report", "choose")),
        Param("position", str, "auto", "auto: where the kept-aside photos' heat maps are hotter at some places "
              "than others (a photo's edges, say), put each place on its own scale (per-position z-scores) if "
              "that finds the synthetic defects clearly better on kept-aside photos the statistics did not "
              "come from; off: never.", choices=("auto", "off")),
        Param("tiling", str, "auto", "auto: also try tiles at native resolution when the photos are at least "
              f"{LARGE_PHOTO_SIDE}x image_size on their shorter side; off: never.", choices=("auto", "off")),
    ]
    @classmethod
    def param_specs(cls) -> list[Param]:
        size = Param("image_size", int, 0, "Pixels (about this x this) the photos are seen at; 0: from the photos "
                     f"(their native size, {MIN_WORKING_SIZE}-{MAX_WORKING_SIZE}).", 0, 1024)
        return [size, PatchCore.param_specs()[1]] + cls.params  # and seed, then ours

    # -- fitting ---------------------------------------------------------------------------------
    def _build(self) -> None:
        self.kept_features_: dict[tuple, tuple[list[dict], list[dict]]] = {}
        self.members_: list[Method] = []
        self.member_params_: list[dict[str, Any]] = []
        self.image_members_: list[int] = [0]
        self.map_members_: list[int] = [0]
        self.selection_: dict[str, Any] = {}
        self.position_parts_: list[str] = []

    def _fit_images(self, images: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        return images  # as given: a run's photo cache stays lazy (see adcore.photo_cache)

    def _fit(self, images: list[np.ndarray], ctx: FitContext) -> None:
        self.config_ = cfg = {**self.config_, "image_size": self.config_["image_size"] or working_size(images)}
        started = time.monotonic()
        n = len(images)
        n_val = min(MAX_VALIDATION, max(MIN_VALIDATION, round(n * cfg["validation_share"])))
        if n - n_val < 2:
            # Too few photos to spare any: the most common choice, no search (and the table says so).
            winner = Candidate("image", "16+32", 3, backbone=self._backbones()[0])
            self.selection_ = {
                "decision": "default",
                "reason": f"only {n} normal photos: too few to keep {MIN_VALIDATION} aside and still fit, "
                "so a standard PatchCore setting is used without a search",
                "candidates": [],
                "image_size": cfg["image_size"],
            }
            self._fit_members([winner], images, [], ctx, None, [0], [0])
            self._finish(started, 0.0)
            return
        order = self.rng_.permutation(n)
        val_images = take(images, order[:n_val])
        rest = take(images, order[n_val:])
        search_bank = take(rest, self.rng_.permutation(len(rest))[: cfg["search_images"]])
        tile = 0
        shorter = np.median([min(im.shape[:2]) for im in images])
        if cfg["tiling"] == "auto" and shorter >= LARGE_PHOTO_SIDE * cfg["image_size"]:
            tile = cfg["image_size"]
        grid = candidate_grid(tile, self._backbones())
        per_family = max(1, round(MIN_DEFECTS_PER_FAMILY / n_val))
        # The synthetic defect photos and the leading candidates' validation maps wait on disk while the
        # search runs (on 5-MP photos they are gigabytes), in a folder removed when the fit ends.
        self._scratch = PhotoCache(max_side=None)
        try:
            self._search_and_fit(images, val_images, rest, search_bank, grid, per_family, n_val, started, ctx)
        finally:
            self._scratch.close()
            del self._scratch

    def _search_and_fit(self, images, val_images, rest, search_bank, grid, per_family, n_val, started, ctx) -> None:
        cfg = self.config_
        n = len(images)
        v_images, kinds, masks, source = validation_set(val_images, per_family, self.rng_, self._scratch.keep)
        masks = [None if m is None else _shrink_mask(m, judged_shape(*m.shape)) for m in masks]
        # Where the search memories were built from every photo the members are fitted on, the
        # members reuse the search's features (and the kept-aside photos' features judge their memory).
        keep = len(search_bank) == len(rest)
        rows, results = self._search(grid, search_bank, v_images, np.array(kinds), masks, np.array(source), ctx, keep)
        search_s = time.monotonic() - started
        searched = [c for c in grid if c in results]
        choice = self._decide(searched, results)
        combos = [self._combo_row(key, stats) for key, stats in results.items() if isinstance(key, tuple)]
        self.selection_ = {**choice.pop("table"), "candidates": rows, "combinations": combos,
                           "image_size": cfg["image_size"], "n_validation": n_val, "n_search_bank": len(search_bank),
                           "defects_per_family": per_family, "families": list(FAMILIES)}
        if len(searched) < len(grid):
            self.selection_["stopped_by_budget"] = (
                f"the time budget ran out after {len(searched)} of the {len(grid)} candidates: "
                "the choice is among those judged")
        ctx.report(step=len(grid), total_steps=len(grid), images=n, phase="search done", record=False,
                   selection=self.selection_)
        # Members are fitted without the kept-aside photos, which then choose each one's memory size
        # and put combined members on one scale.
        validation = (v_images, np.array(kinds), masks, np.array(source))
        self._fit_members(choice["members"], rest, val_images, ctx, validation, choice["image"], choice["map"],
                          refit=True)
        self._finish(started, search_s)

    def _backbones(self) -> list[str]:
        names = [b.strip() for b in self.config_["backbones"].split(",") if b.strip()]
        for name in names:
            BACKBONES.get(name)  # an unknown name fails here, naming the known ones
        if not names:
            raise ValueError("auto: backbones names no network")
        return names

    def _finish(self, started: float, search_s: float) -> None:
        self.selection_["search_seconds"] = round(search_s, 1)
        self.selection_["total_seconds"] = round(time.monotonic() - started, 1)
        self.selection_["members"] = [dict(p) for p in self.member_params_]

    def _search(
        self,
        grid: list[Candidate],
        bank_images: list[np.ndarray],
        v_images: list[np.ndarray],
        kinds: np.ndarray,
        masks: list[np.ndarray | None],
        source: np.ndarray,
        ctx: FitContext,
        keep_features: bool = False,
    ) -> tuple[list[dict[str, Any]], dict]:
        """Score every candidate (and the leaders' combinations) on the validation set: one table row per
        candidate, in grid order, and every entry's statistics (keyed by candidate or combination). With
        ``keep_features``, the whole-photo views' features stay in ``kept_features_`` for the final fit."""
        cfg = self.config_
        results: dict[Candidate, dict[str, Any]] = {}
        views = list(dict.fromkeys(c.view for c in grid))
        done = 0
        for view in views:
            if results and ctx.out_of_budget():
                # The time budget is spent: the candidates judged so far are the search (the table says so).
                grid = [c for c in grid if c in results]
                break
            members = [c for c in grid if c.view == view]
            t_view = time.monotonic()
            proto = self._prototype(members[0])
            bank_input = proto._fit_images(bank_images)
            if len(bank_input) > cfg["search_images"]:  # tiles: a random subset, as many as photos would be
                pick = np.random.default_rng(cfg["seed"] + 11).permutation(len(bank_input))[: cfg["search_images"]]
                bank_input = take(bank_input, np.sort(pick))
            bank_feats = self._extract(proto, bank_input, ctx, f"search: features ({members[0].normalize})")
            banks, seconds = {}, {}
            for cand in members:
                t0 = time.monotonic()
                banks[cand] = self._candidate_bank(cand, bank_feats)
                seconds[cand] = time.monotonic() - t0
            kept = keep_features and not view[1]
            patch_maps, val_boxes, val_feats, distance_s = self._validation_patch_maps(
                proto, members, banks, v_images, ctx, kept, source
            )
            shared_s = time.monotonic() - t_view - sum(seconds.values()) - sum(distance_s.values())
            for cand in members:
                t0 = time.monotonic()
                stats = self._judge(proto, cand, banks.pop(cand), patch_maps.pop(cand), val_boxes, v_images, kinds, masks)
                stats["seconds"] = round(
                    time.monotonic() - t0 + seconds[cand] + distance_s[cand] + shared_s / len(members), 1
                )
                results[cand] = stats
                self._keep_leaders_maps(results)
                done += 1
                ctx.report(step=done, total_steps=len(grid), images=done, phase="search: judging candidates",
                           record=False, selection={"candidates": [self._row(c, results[c]) for c in results]})
            if kept:
                self.kept_features_[view] = (bank_feats, val_feats)
            del bank_feats, val_feats
        for part in PARTS:
            leaders = sorted(grid, key=lambda c: -results[c][part])
            for size in range(2, min(self.config_["max_members"], len(grid)) + 1):
                key = ("combination", tuple(leaders[:size]))
                if key not in results:
                    results[key] = _stats(combine_maps([results[c]["_maps"] for c in key[1]], kinds), kinds, masks)
                    results[key]["of the best by"] = []
                results[key]["of the best by"].append(part)
        for stats in results.values():
            _forget_maps(stats)
        self._bootstrap(list(results), results, kinds, source)
        return [self._row(c, results[c]) for c in grid], results

    def _keep_leaders_maps(self, results: dict) -> None:
        """Keep the validation maps only of the candidates that may still be combined (the best
        ``max_members`` so far by image or by pixel separation), so memory stays bounded."""
        k = self.config_["max_members"]
        keep = set()
        for part in PARTS:
            keep.update(sorted(results, key=lambda c: -results[c][part])[:k])
        for c, stats in results.items():
            if c not in keep:
                _forget_maps(stats)

    @staticmethod
    def _row(cand: Candidate, stats: dict[str, Any]) -> dict[str, Any]:
        row = {"candidate": cand.label, "normalize": cand.normalize, "layers": cand.layers,
               "neighbourhood": cand.neighbourhood, "tile_size": cand.tile_size, "backbone": cand.backbone,
               "score": round(stats["score"], 4), "image": round(stats["image"], 4), "pixel": round(stats["pixel"], 4),
               "seconds": stats.get("seconds")}
        for family, (image, pixel) in stats["families"].items():
            row[f"{family} image"], row[f"{family} pixel"] = round(image, 4), round(pixel, 4)
        if "win" in stats:
            row["beats best"] = stats["win"]["score"]
            row["beats best image"], row["beats best pixel"] = stats["win"]["image"], stats["win"]["pixel"]
        return row

    @staticmethod
    def _combo_row(key: tuple, stats: dict[str, Any]) -> dict[str, Any]:
        return {"combination": [c.label for c in key[1]], "of the best by": " and ".join(stats["of the best by"]),
                "score": round(stats["score"], 4), "image": round(stats["image"], 4), "pixel": round(stats["pixel"], 4),
                "beats best image": stats["win"]["image"], "beats best pixel": stats["win"]["pixel"]}

    def _prototype(self, cand: Candidate) -> PatchCore:
        """A PatchCore set up (not fitted) to extract this candidate's view at every search stride."""
        proto = PatchCore(**{**cand.params(self.config_), "layers": SEARCH_STRIDES})
        proto.config_ = proto.get_params()
        proto.device_ = self.device_
        proto.rng_ = self.rng_
        proto.augmentations_ = []
        proto._build()
        return proto

    @staticmethod
    def _feature_batches(proto: PatchCore, images: Sequence[np.ndarray], ctx: FitContext, phase: str):
        """(indices, {stride: (B, C, h, w)}) per batch of ``images`` at their input shapes, reporting
        progress. Call it in inference mode."""
        total = math.ceil(len(images) / proto.config_["batch_size"])
        for step, (idx, x) in enumerate(proto._shaped_batches(images, proto.config_["batch_size"]), 1):
            yield idx, proto._features(x)
            ctx.report(step=step, total_steps=total, images=step, phase=phase, record=False)

    def _extract(self, proto: PatchCore, images: Sequence[np.ndarray], ctx: FitContext, phase: str) -> list[dict]:
        """Per image, {stride: (1, C, h, w)} features (CPU)."""
        feats: list[dict] = [None] * len(images)  # type: ignore[list-item]
        with torch.inference_mode():
            for idx, out in self._feature_batches(proto, images, ctx, phase):
                for j, i in enumerate(idx):  # copies: a slice would keep the batch's padded features alive
                    feats[i] = {s: f[j : j + 1].clone() for s, f in out.items()}
        return feats

    @staticmethod
    def _tiled(proto: PatchCore, images: list[np.ndarray]) -> tuple[Sequence[np.ndarray], list | None]:
        """What ``proto`` sees of ``images``: the photos, or their tiles (cut as read) and each photo's boxes."""
        tile = proto.config_["tile_size"]
        if not tile:
            return images, None
        return TiledImages(images, tile, TILE_OVERLAP), [tile_boxes(*im.shape[:2], tile, TILE_OVERLAP) for im in images]

    def _extract_validation(self, proto: PatchCore, v_images: list[np.ndarray], ctx: FitContext):
        """Features of the validation photos (or of their tiles) and, with tiles, each photo's boxes."""
        images, boxes = self._tiled(proto, v_images)
        return self._extract(proto, images, ctx, "search: validation features" + (" (tiles)" if boxes else "")), boxes

    def _validation_patch_maps(self, proto, cands, banks, v_images, ctx: FitContext, keep: bool, source=None):
        """One pass over the validation photos (or their tiles): each candidate's (1, 1, h, w) patch
        distances to its search memory ``banks[cand]``, per photo or tile. Features are dropped batch by
        batch unless ``keep`` (a large validation set of tiles would not fit in memory otherwise).
        Returns the maps by candidate, the tile boxes (None for whole photos), the kept features (or
        None) and each candidate's seconds of distance computation.

        With tiles and ``source`` (the clean photo each validation photo was made from), a defect
        photo's tile whose pixels equal the clean photo's tile there (a tile the defect does not
        touch) takes that tile's maps instead of being seen again: a tile's features depend on its
        pixels alone, and most tiles of a photo with one small defect are untouched."""
        images, boxes = self._tiled(proto, v_images)
        seen, same_as = list(range(len(images))), {}
        if boxes is not None and source is not None:
            seen, same_as = _untouched_tiles(v_images, boxes, source)
            images = images.subset(seen)
        maps: dict = {c: [None] * (len(seen) + len(same_as)) for c in cands}
        seconds = dict.fromkeys(cands, 0.0)
        kept: list | None = [None] * len(images) if keep else None
        phase = "search: validation features" + (" (tiles)" if boxes else "")
        with torch.inference_mode():
            for idx, out in self._feature_batches(proto, images, ctx, phase):
                for j, i in enumerate(idx):
                    f = {s: v[j : j + 1] for s, v in out.items()}
                    if kept is not None:
                        kept[i] = {s: v.clone() for s, v in f.items()}
                    for cand in cands:
                        t0 = time.monotonic()
                        maps[cand][seen[i]] = self._patch_map(cand, banks[cand], f)
                        seconds[cand] += time.monotonic() - t0
        for k, like in same_as.items():
            for cand in cands:
                maps[cand][k] = maps[cand][like]
        return maps, boxes, kept, seconds

    def _judge(self, proto, cand, bank, patch_maps, val_boxes, v_images, kinds, masks) -> dict:
        """The candidate's statistics on the validation set, from its patch maps (``bank``: its search
        memory, for subclasses that measure more with it)."""
        image_maps = self._val_maps(proto, patch_maps, val_boxes, v_images)
        stats = _stats(image_maps, kinds, masks)
        stats["_maps"] = self._scratch.arrays(image_maps)
        return stats

    @staticmethod
    def _embed(cand: Candidate, features: dict) -> torch.Tensor:
        return patch_embedding({s: features[s] for s in cand.strides}, None, cand.neighbourhood)

    def _candidate_bank(self, cand: Candidate, bank_feats: list[dict]) -> torch.Tensor:
        """The candidate's search memory: a coreset of a random subset of the bank photos' patches."""
        with torch.inference_mode():
            parts = []
            for f in bank_feats:
                e = self._embed(cand, f)
                parts.append(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]))
            patches = torch.cat(parts)
            gen = torch.Generator().manual_seed(self.config_["seed"])
            if len(patches) > SEARCH_CANDIDATE_PATCHES:
                patches = patches[torch.randperm(len(patches), generator=gen)[:SEARCH_CANDIDATE_PATCHES]]
            n_keep = min(SEARCH_BANK, len(patches))
            if n_keep >= len(patches):
                return patches
            return patches[greedy_coreset(patches, n_keep, projection_dim=SEARCH_PROJECTION, seed=self.config_["seed"])]

    def _patch_map(self, cand: Candidate, bank: torch.Tensor, features: dict) -> torch.Tensor:
        """One photo's (or tile's) features -> (1, 1, h, w) distances to the nearest of ``bank``."""
        e = self._embed(cand, features)
        d = knn_distance(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]), bank, 1)
        return d.view(1, 1, *e.shape[-2:])

    def _candidate_maps(self, proto, cand, bank, feats, boxes, images) -> list[np.ndarray]:
        """The candidate's smoothed maps of ``images`` (from their features) at each photo's size."""
        with torch.inference_mode():
            maps = [self._patch_map(cand, bank, f) for f in feats]
        return self._val_maps(proto, maps, boxes, images)

    def _val_maps(self, proto, maps, val_boxes, v_images) -> list[np.ndarray]:
        """Patch-distance maps -> smoothed maps at each validation photo's size (as PatchCore's), at
        most ``JUDGED_SIDE`` on the longer side; photo by photo, so a tiled photo's tiles are
        upsampled only while it is stitched."""
        sigma = proto.config_["map_sigma"]

        def smoothed(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
            up = F.interpolate(m, size=proto._input_shape(h, w), mode="bilinear", align_corners=False)
            return gaussian_blur(up[:, 0], sigma)[0]

        result, k = [], 0
        for img_i, im in enumerate(v_images):
            if val_boxes is None:
                result.append(_resize_map(smoothed(maps[k], *im.shape[:2]), judged_shape(*im.shape[:2])))
                k += 1
                continue
            boxes = val_boxes[img_i]
            tiles = []
            for m, b in zip(maps[k : k + len(boxes)], boxes):
                tiles.append(_resize_map(smoothed(m, b[2] - b[0], b[3] - b[1]), (b[2] - b[0], b[3] - b[1])))
            k += len(boxes)
            whole = stitch(tiles, boxes, im.shape[:2])
            result.append(_resize_map(torch.from_numpy(whole), judged_shape(*im.shape[:2])))
        return result

    def _choose_memory(self, member: PatchCore, cand: Candidate, val_feats: list[dict] | None, v_images, kinds,
                       masks, source, ctx: FitContext, part: str = "score") -> tuple[dict[str, Any], list[np.ndarray]]:
        """Keep PatchCore's 10 % memory, or a smaller prefix of it (greedy coreset picks are nested)
        where the hold-out photos say clearly that it separates the synthetic defects better: a
        smaller memory forgets rare normal patches, which can lift defects above them, or flag them.
        Returns the table row and the chosen memory's maps of the validation photos."""
        full = member.model_.bank
        n_patches = getattr(member, "n_patches_", len(full) / MEMBER_CORESET)
        sizes = {share: max(1, min(len(full), round(n_patches * share))) for share in MEMORY_SHARES}
        if val_feats is None:
            val_feats = self._extract(member, v_images, ctx, "choosing the memory size: features")
        patch_maps: dict[float, list[torch.Tensor]] = {share: [] for share in sizes}
        with torch.inference_mode():
            for f in val_feats:
                e = self._embed(cand, f)
                nearest = prefix_nearest(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]), full, list(sizes.values()))
                for share, k in sizes.items():
                    patch_maps[share].append(nearest[k].view(1, 1, *e.shape[-2:]))
        maps = {share: self._val_maps(member, pm, None, v_images) for share, pm in patch_maps.items()}
        results = {share: _stats(image_maps, kinds, masks) for share, image_maps in maps.items()}
        shares = list(sizes)
        self._bootstrap(shares, results, kinds, source)
        best = max(shares, key=lambda sh: results[sh][part])
        default = MEMBER_CORESET
        # Leave the default only on clear evidence: it matches the best in too few resamples.
        clear = best != default and clearly_behind(results[default]["win"][part], self.config_["confidence"])
        chosen = best if clear and self.config_["memory"] == "choose" else default
        member.model_.bank = full[: sizes[chosen]].contiguous()
        row = {
            "member": cand.label,
            "judged by": part,
            "chosen share": chosen,
            "best on the kept-aside photos": best,
            "patches": sizes[chosen],
            "options": [{"share": sh, "patches": sizes[sh], "score": round(results[sh]["score"], 4),
                         "image": round(results[sh]["image"], 4), "pixel": round(results[sh]["pixel"], 4),
                         "matches the best in": results[sh]["win"][part]} for sh in shares],
        }
        return row, maps[chosen]

    def _bootstrap(self, keys, results, kinds, source) -> None:
        """Paired bootstrap over the clean hold-out photos (each with the defects made from it): for
        each entry and each part (image, pixel, their mean "score", and "hit", defects located, where
        every entry has it), the share of resamples in which it scores at least as high as the best
        entry by that part (None for the best itself)."""
        rng = np.random.default_rng(self.config_["seed"] + 7)
        n_src = int(source.max()) + 1
        parts = (*PARTS, "score") + (("hit",) if all("hit" in results[c] for c in keys) else ())
        best = {part: max(keys, key=lambda c: results[c][part]) for part in parts}
        wins = {part: dict.fromkeys(keys, 0) for part in best}
        by_source = [np.flatnonzero(source == s) for s in range(n_src)]
        for _ in range(BOOTSTRAP):
            pick = rng.integers(0, n_src, n_src)
            idx = np.concatenate([by_source[s] for s in pick])
            normal_idx, defect_idx = idx[kinds[idx] == "normal"], idx[kinds[idx] != "normal"]
            values = {}
            for c in keys:
                image_scores, ranks, located = results[c]["_arrays"]
                values[c] = selection_scores(image_scores, ranks, kinds, normal_idx, defect_idx, located)
            for part, top in best.items():
                for c in keys:
                    wins[part][c] += values[c][part] >= values[top][part]
        for c in keys:
            results[c]["win"] = {part: None if c == top else round(wins[part][c] / BOOTSTRAP, 3)
                                 for part, top in best.items()}
            results[c].pop("_arrays")

    def _decide(self, grid: list[Candidate], results: dict) -> dict[str, Any]:
        """Which candidates give the photo scores and which the heat maps, each judged by its own part
        of the selection score: image separation for the scores, pixel separation for the maps.
        (Measured on the magnetic tiles: the image part ranks the candidates' real image AUROC the
        right way round, +0.43, the pixel part the wrong way, -0.60, while the pixel part agrees with
        the real per-region overlap, +0.81, and hit rate, +0.72; on the demo set both parts agree.)"""
        out: dict[str, Any] = {"table": {}}
        for part, output in (("image", "photo scores"), ("pixel", "heat maps")):
            members, decision, reason = self._decide_part(part, grid, results)
            out[part] = members
            out["table"][f"{part} decision"] = decision
            out["table"][f"{part} reason"] = f"{output}: {reason}"
        if out["pixel"] != out["image"]:
            # One model for both unless the other maps are clearly better: where the photo scores'
            # choice draws maps within noise of the best, it draws them too.
            chosen = out["image"][0] if len(out["image"]) == 1 else ("combination", tuple(out["image"]))
            matches = results[chosen]["win"]["pixel"] if chosen in results else 0.0
            if matches is not None and not clearly_behind(matches, self.config_["confidence"]):
                out["pixel"] = out["image"]
                out["table"]["pixel decision"] = out["table"]["image decision"]
                out["table"]["pixel reason"] = (
                    f"heat maps: from the same {'candidate' if len(out['image']) == 1 else 'combination'} as the photo "
                    f"scores, whose maps match the best ones in {matches:.0%} of {BOOTSTRAP} bootstrap resamples "
                    f"(the best: {out['table']['pixel reason'].removeprefix('heat maps: ')})")
        union = list(dict.fromkeys(out["image"] + out["pixel"]))
        out["members"] = union
        out["image"], out["map"] = [union.index(c) for c in out.pop("image")], [union.index(c) for c in out.pop("pixel")]
        table = out["table"]
        table["decision"] = "combine" if "combine" in (table["image decision"], table["pixel decision"]) else "pick"
        table["reason"] = f"{table['image reason']}; {table['pixel reason']}"
        return out

    def _decide_part(self, part: str, grid: list[Candidate], results: dict) -> tuple[list[Candidate], str, str]:
        cfg = self.config_
        order = sorted(grid, key=lambda c: -results[c][part])
        best = order[0]
        if all(results[c][part] >= SATURATED for c in grid):
            members = order[: cfg["max_members"]]
            return members, "combine", (
                f"every candidate separates the synthetic defects almost perfectly (>= {SATURATED}), so the "
                f"separation cannot tell them apart: the top {len(members)} are combined")
        combos = [k for k in results if isinstance(k, tuple) and part in results[k]["of the best by"]]
        top = max(combos, key=lambda k: results[k][part], default=None)
        # A combination costs a scoring pass per member, so it replaces the best single candidate only
        # where it is clearly better: the single one matches it in few bootstrap resamples.
        if top is not None and results[top][part] > results[best][part]:
            matches = results[best]["win"][part]
            if clearly_behind(matches, cfg["confidence"]):
                return list(top[1]), "combine", (
                    f"the best {len(top[1])} combined (each on the scale of the hold-out photos) separate the "
                    f"synthetic defects better than any one alone ({results[top][part]:.3f} vs "
                    f"{results[best][part]:.3f}; the best one matches them in {matches:.0%} of {BOOTSTRAP} resamples)")
            combined = (f"combining the best {len(top[1])} separated a little better ({results[top][part]:.3f}), "
                        f"but within noise (the best one alone matches it in {matches:.0%} of {BOOTSTRAP} resamples)")
        else:
            combined = "combining the best few separated no better"
        others = order[1:]
        runner = max(others, key=lambda c: results[c]["win"][part] or 0.0) if others else None
        share = results[runner]["win"][part] if runner is not None else 0.0
        lead = (f"its lead over {runner.label} is within noise ({share:.0%} of {BOOTSTRAP} bootstrap resamples)"
                if share is not None and not clearly_behind(share, cfg["confidence"]) else
                f"it beats every other in at least {cfg['confidence']:.0%} of {BOOTSTRAP} bootstrap resamples")
        return [best], "pick", f"{best.label} separates best ({results[best][part]:.3f}); {lead}; {combined}, so it is used alone"

    def _fit_members(self, members: list[Candidate], fit_images, calibration_images, ctx: FitContext,
                     validation: tuple | None = None, image_members: Sequence[int] = (0,),
                     map_members: Sequence[int] = (0,), refit: bool = False) -> None:
        """Fit ``members``; the photo scores come from the ``image_members`` (indices), the maps from the
        ``map_members``, each combined (z-scores on the kept-aside photos, averaged) where more than one.
        With ``refit``, each member is then fitted again on ``fit_images`` and the kept-aside
        ``calibration_images`` together, at the memory size they chose: the model learns from every
        normal photo, and the scale was set on photos the judged memory had not seen."""
        self.image_members_, self.map_members_ = list(image_members), list(map_members)
        self.selection_["image_members"], self.selection_["map_members"] = self.image_members_, self.map_members_
        self.member_params_ = [c.params(self.config_) for c in members]
        self.members_ = []
        views = {c.view for c in members}  # the search's features of views no member uses: freed now
        self.kept_features_ = {v: f for v, f in self.kept_features_.items() if v in views}
        self.selection_["memory"] = []
        calibration = torch.tensor([[0.0, 1.0]] * len(members))
        self.position_parts_, position = [], identity_position()
        self.selection_["position"] = {"used for": [], "reason": "not judged: no kept-aside photos to judge on"}
        grids: dict[int, np.ndarray] = {}  # member -> its validation maps on the position grid
        for k, (cand, params) in enumerate(zip(members, self.member_params_)):
            member = _patchcore(params)

            def relay(event: dict, k=k) -> None:
                if ctx.on_progress is not None:
                    ctx.on_progress({**event, "phase": f"final fit {k + 1}/{len(members)}: {event.get('phase', '')}"})

            sub = FitContext(device=self.device_, augmentations=[], on_progress=relay, stop_event=ctx.stop_event,
                             history=ctx.history, started=ctx.started, budget_s=ctx.budget_s)
            bank_feats, val_feats = self.kept_features_.get(cand.view, (None, None))
            if refit and calibration_images and len(members) == 1 and self.config_["memory"] == "report":
                # Nothing left to judge on the kept-aside photos (no scale to set, the memory stays 10 %):
                # fit once, on every normal photo.
                self.members_.append(self._refit(cand, k, MEMBER_CORESET, fit_images, calibration_images,
                                                 val_feats, sub))
                ctx.stopped_by_budget |= sub.stopped_by_budget
                continue
            if bank_feats is not None:
                with torch.inference_mode():
                    patches = torch.cat([_rows(self._embed(cand, f)) for f in bank_feats])
                member.fit_patches(patches, len(bank_feats), sub)
                del patches
            else:
                member.fit(fit_images, sub)
            ctx.stopped_by_budget |= sub.stopped_by_budget
            normal_maps, share = None, MEMBER_CORESET
            if validation is not None and not params["tile_size"]:
                ctx.report(step=k, total_steps=len(members), images=k, phase="choosing the memory size", record=False)
                serves = (k in self.image_members_, k in self.map_members_)
                part = {(True, False): "image", (False, True): "pixel"}.get(serves, "score")
                row, maps = self._choose_memory(member, cand, val_feats, *validation, ctx, part)
                self.selection_["memory"].append(row)
                share = row["chosen share"]
                normal_maps = [m for m, kind in zip(maps, validation[1]) if kind == "normal"]
                if self.config_["position"] == "auto":
                    grids[k] = np.stack([to_grid(m) for m in maps])
            if calibration_images and len(members) > 1:
                # The kept-aside photos' maps put each member on one scale (z-scores).
                if normal_maps is None:
                    normal_maps = member.predict(calibration_images).anomaly_maps
                values = np.concatenate([m.ravel() for m in normal_maps])
                calibration[k] = torch.tensor([values.mean(), max(values.std(), 1e-6)])
            if refit and calibration_images and not ctx.out_of_budget():
                member = self._refit(cand, k, share, fit_images, calibration_images, val_feats, sub)
            self.members_.append(member)
        self.kept_features_ = {}
        if validation is not None and self.config_["position"] == "auto":
            position = self._judge_position(grids, calibration, validation)
        self.model_ = self._new_model(calibration, position)

    def _judge_position(self, grids: dict[int, np.ndarray], calibration: torch.Tensor,
                        validation: tuple) -> torch.Tensor:
        """Per-position scales for the photo scores' and the heat maps' parts, where they clearly help.

        A heat map can be hotter at some places of every normal photo than at others (the edges of a
        part cut out of its background, a fixture always in the same place); the maximum then sits
        there on good and bad photos alike. Each part's map, on a grid in the photo's own frame, is put
        on the scale of the kept-aside clean photos' maps at each cell (``position_stats``: a z-score
        per position).
        Whether that helps is judged label-free and cross-fitted: the clean photos are split in two,
        each half's photos and the synthetic defects made from them are scored with the statistics of
        the other half, and the bootstrap says whether "per position" beats "as is" clearly (for the
        scores by image separation; for the maps by pixel separation or by the share of defects whose
        hottest pixel is on them, where it is clearly worse by neither). Returns the (2, 2, G, G)
        statistics (image part, map part) the model keeps; ``position_parts_`` says which are used."""
        _, kinds, masks, source = validation
        table: dict[str, Any] = {"used for": []}
        self.selection_["position"] = table
        parts = {"image": self.image_members_, "pixel": self.map_members_}
        if any(k not in grids for which in parts.values() for k in which):
            table["reason"] = "not judged: a member of a part is tiled or was fitted once on every photo"
            return identity_position()
        grid_masks = [None if m is None else _shrink_mask(m, (POSITION_GRID, POSITION_GRID)) for m in masks]
        normal = kinds == "normal"
        conf = self.config_["confidence"]
        folds = self.rng_.permutation(int(source.max()) + 1) % 2
        stats = identity_position()
        for p, (part, which) in enumerate(parts.items()):
            if len(which) == 1:
                maps = grids[which[0]]
            else:
                maps = np.mean([(grids[k] - float(calibration[k, 0])) / float(calibration[k, 1]) for k in which], 0)
            crossed = np.empty_like(maps)
            for f in (0, 1):
                own = folds[source] == f
                crossed[own] = apply_position_np(maps[own], position_stats(maps[normal & ~own]))
            results = {"as is": _stats(list(maps), kinds, grid_masks, dilation=1),
                       "per position": _stats(list(crossed), kinds, grid_masks, dilation=1)}
            self._bootstrap(list(results), results, kinds, source)
            as_is, per_position = results["as is"]["win"], results["per position"]["win"]
            # "as is" stays unless it matches "per position" in few resamples (the memory rule).
            used = clearly_behind(as_is[part], conf)
            table[part] = {"as is": round(results["as is"][part], 4),
                           "per position": round(results["per position"][part], 4), "as is matches it in": as_is[part]}
            if part == "pixel":
                # A place hot on every clean map draws the maximum of a defect photo's map too, while
                # the mean inside the defect, which pixel separation reads, hardly moves: for the maps,
                # locating the defects (hottest pixel on them) counts as much, if neither gets clearly worse.
                used = ((used or clearly_behind(as_is["hit"], conf))
                        and not clearly_behind(per_position["pixel"], conf)
                        and not clearly_behind(per_position["hit"], conf))
                table[part].update({"located as is": round(results["as is"]["hit"], 4),
                                    "located per position": round(results["per position"]["hit"], 4),
                                    "as is locates as well in": as_is["hit"]})
            if used:
                table["used for"].append(part)
                stats[p] = torch.from_numpy(position_stats(maps[normal]))
        self.position_parts_ = list(table["used for"])
        table["reason"] = "judged on the kept-aside photos, cross-fitted in two halves"
        return stats

    def _new_model(self, calibration: torch.Tensor, position: torch.Tensor | None = None) -> "ZScoreCombination":
        """The inference module of the fitted (or built) ``members_``."""
        return ZScoreCombination([m.model_ for m in self.members_], calibration, self.image_members_,
                                 self.map_members_, identity_position() if position is None else position,
                                 self.position_parts_).to(self.device_)

    def _refit(self, cand: Candidate, k: int, share: float, fit_images, extra_images, val_feats,
               ctx: FitContext) -> PatchCore:
        """The member fitted again on every normal photo (``fit_images`` + the kept-aside ``extra_images``)
        with the memory share it chose; from the search's features where they were kept."""
        self.member_params_[k] = params = {**self.member_params_[k], "coreset_ratio": share}
        again = _patchcore(params)
        bank_feats, _ = self.kept_features_.get(cand.view, (None, None))
        if bank_feats is not None and val_feats is not None:
            feats = bank_feats + val_feats[: len(extra_images)]  # the clean kept-aside photos come first
            with torch.inference_mode():
                patches = torch.cat([_rows(self._embed(cand, f)) for f in feats])
            again.fit_patches(patches, len(feats), ctx)
        else:
            again.fit(concat(fit_images, extra_images), ctx)
        return again

    # -- scoring ---------------------------------------------------------------------------------
    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> Prediction:
        """Each member's maps; the photo scores are the maxima of the image members' (combined) maps,
        the heat maps the map members' (combined) maps."""
        self._check_fitted()
        parts = self._member_predictions(images, batch_size)

        def combined(which: list[int]) -> list[np.ndarray]:
            if len(which) == 1:
                return [np.asarray(m, np.float32) for m in parts[which[0]].anomaly_maps]
            cal = [(float(self.model_.calibration[k][0]), float(self.model_.calibration[k][1])) for k in which]
            return [np.mean([(parts[k].anomaly_maps[i] - mu) / sd for k, (mu, sd) in zip(which, cal)], 0).astype(np.float32)
                    for i in range(len(images))]

        position = self.model_.position.detach().float().cpu()
        maps = combined(self.map_members_)
        if "image" in self.position_parts_:  # per-position scale: the maximum of that map
            plain = maps if self.image_members_ == self.map_members_ else combined(self.image_members_)
            score_maps = apply_position_maps(plain, position[0])
            scores = np.array([float(m.max()) for m in score_maps])
        elif len(self.image_members_) == 1:  # one member: its own scores (the maximum of its map)
            scores = np.asarray(parts[self.image_members_[0]].scores, dtype=float)
        else:
            score_maps = maps if self.image_members_ == self.map_members_ else combined(self.image_members_)
            scores = np.array([float(m.max()) for m in score_maps])
        if "pixel" in self.position_parts_:
            maps = apply_position_maps(maps, position[1])
        return Prediction(
            scores=scores,
            embeddings=np.concatenate([p.embeddings for p in parts], 1) if parts[0].embeddings is not None else None,
            anomaly_maps=maps,
        )

    def _member_predictions(self, images: Sequence[np.ndarray], batch_size: int) -> list[Prediction]:
        """Every member's prediction, as its own ``predict`` gives it, but members that see the photos
        the same way (whole photos, same normalisation, network and size) share one feature extraction."""
        groups: dict[tuple, list[int]] = {}
        for k, member in enumerate(self.members_):
            c = member.config_
            view = (c["normalize"], c["backbone"], c["image_size"], c["edge_padding"], c["keep_aspect"], c["tile_size"])
            groups.setdefault(view, []).append(k)
        out: list[Prediction | None] = [None] * len(self.members_)
        for view, ks in groups.items():
            members = [self.members_[k] for k in ks]
            if len(ks) == 1:
                parts = [members[0].predict(images, batch_size)]
            elif view[-1]:
                parts = _shared_tiled_predict(members, images, batch_size)
            else:
                parts = _shared_predict(members, images, batch_size)
            for k, prediction in zip(ks, parts):
                out[k] = prediction
        return out  # type: ignore[return-value]

    # -- persistence -----------------------------------------------------------------------------
    saved_alongside = ("selection_json",)

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [m for member in self.members_ for m in member.frozen_modules()]

    def _alongside_tensors(self) -> dict[str, torch.Tensor]:
        doc = json.dumps({"members": self.member_params_, "selection": self.selection_})
        return {"selection_json": torch.frombuffer(bytearray(doc.encode()), dtype=torch.uint8).clone()}

    def _upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Before the inference module held the members, member k's tensors were saved as "member{k}.*".
        old = re.compile(r"^member(\d+)\.")
        state = {old.sub(r"members.\1.", k): v for k, v in state.items()}
        if "selection_json" in state and "position" not in state:
            doc = _saved_doc(state)
            if "position" not in doc["selection"]:  # saved before per-position scales existed: none used
                state["position"] = identity_position()
        return state

    def _build_saved(self, state: dict[str, torch.Tensor]) -> None:
        self._build()
        doc = _saved_doc(state)
        self.member_params_, self.selection_ = doc["members"], doc["selection"]
        # Runs saved before scores and maps were chosen apart combined every member for both.
        every = list(range(len(self.member_params_)))
        self.image_members_ = self.selection_.get("image_members", every)
        self.map_members_ = self.selection_.get("map_members", every)
        self.position_parts_ = list((self.selection_.get("position") or {}).get("used for", []))
        self.members_ = []
        for params in self.member_params_:
            member = _patchcore(params)
            member._set_up_unfitted(self.device_)
            member._build()
            self.members_.append(member)
        self.model_ = self._new_model(torch.zeros(len(self.members_), 2))

    def run_details(self) -> dict[str, Any]:
        return {"selection": self.selection_}

    def resize_rule(self) -> ResizeRule:
        return self.members_[0].resize_rule()


def describe_selection(selection: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """A run's selection table for people: one row per candidate and per combination tried (best
    first; "used for" says which give the photo scores and which the heat maps) and a sentence saying
    what was decided and why. Shared by the Train page and the report."""
    def key(r: dict) -> tuple:
        return r["normalize"], r["layers"], r["neighbourhood"], r.get("tile_size", 0), r.get("backbone")

    members = selection.get("members", [])
    every = list(range(len(members)))
    image_members, map_members = selection.get("image_members", every), selection.get("map_members", every)
    uses: dict[tuple, list[str]] = {}
    for k, m in enumerate(members):
        jobs = [job for job, which in (("scores", image_members), ("maps", map_members)) if k in which]
        uses[key(m)] = jobs
    rows = []
    for r in selection.get("candidates", []) + selection.get("combinations", []):
        combination = r.get("combination")
        rows.append({
            "used for": " + ".join(uses.get(key(r), [])) if not combination else "",
            "candidate": r.get("candidate") or "combination of the best " + str(len(combination)) + " by "
            + r["of the best by"] + ": " + "; ".join(combination),
            "selection score": r["score"],
            "image separation": r["image"],
            "pixel separation": r["pixel"],
            "image: matches the best in": _share(r, "beats best image"),
            "pixel: matches the best in": _share(r, "beats best pixel"),
            "seconds": r.get("seconds"),
        })
    rows.sort(key=lambda r: -r["selection score"])
    decision = {"pick": "Picked", "combine": "Combined candidates", "default": "No search"}.get(
        selection.get("decision", ""), "Still searching")
    parts = [f"{decision}. {selection['reason'][0].upper() + selection['reason'][1:]}." if selection.get("reason")
             else decision + "."]
    if selection.get("stopped_by_budget"):
        parts.append(selection["stopped_by_budget"][0].upper() + selection["stopped_by_budget"][1:] + ".")
    if selection.get("n_validation"):
        parts.append(
            f"Judged on {selection['n_validation']} normal photos kept aside and "
            f"{selection['n_validation'] * selection['defects_per_family']} synthetic defects of each family "
            f"({', '.join(selection['families'])}) pasted onto them; test photos and labels are never used."
        )
    for memory in selection.get("memory") or []:
        parts.append(
            f"Memory of {memory['member']}: {memory['chosen share']:.0%} of the normal patches "
            f"({memory['patches']}), chosen from "
            + ", ".join(f"{o['share']:.0%} (score {o['score']:.3f})" for o in memory["options"])
            + f" on the kept-aside photos by {memory.get('judged by', 'score')} separation"
            + ("; PatchCore's 10 % is kept (the label-free memory signal is reported, not trusted)."
               if memory.get("best on the kept-aside photos", memory["chosen share"]) != memory["chosen share"]
               else ".")
        )
    position = selection.get("position")
    if position:
        judged = [f"{part} separation {position[part]['as is']:.3f} as is, {position[part]['per position']:.3f} per position"
                  + (f", synthetic defects located {position[part]['located as is']:.0%} as is, "
                     f"{position[part]['located per position']:.0%} per position"
                     if "located as is" in position[part] else "")
                  for part in PARTS if part in position]
        used = {"image": "the photo scores", "pixel": "the heat maps"}
        what = " and ".join(used[p] for p in position["used for"])
        parts.append(
            ("Per-position scales (z-scores at each place, from the kept-aside photos) used for " + what
             if what else "Per-position scales not used")
            + (f" ({position['reason']}: " + "; ".join(judged) + ")." if judged else f" ({position['reason']}).")
        )
    if selection.get("image_size"):
        parts.append(f"Photos seen at about {selection['image_size']} px (their native size, within limits).")
    if selection.get("total_seconds") is not None:
        parts.append(f"Search {selection['search_seconds']:.0f} s, with the final fit {selection['total_seconds']:.0f} s.")
    return rows, " ".join(parts)


def _share(row: dict, key: str) -> str:
    """How often a row matched the best in the bootstrap ("best" for the best; blank while searching)."""
    key = key if key in row else "beats best"  # runs made before the parts were judged apart
    if key not in row:
        return ""
    return "best" if row[key] is None else f"{row[key]:.0%}"


PARTS = ("image", "pixel")


def _untouched_tiles(images: Sequence[np.ndarray], boxes: list[list], source: Sequence[int]) -> tuple[list[int], dict]:
    """For the tiles of ``images`` (``boxes`` per photo, numbered photo by photo): the tiles to see, and
    {tile: the same tile of the photo it was made from} for tiles whose pixels equal that one's."""
    starts = np.cumsum([0] + [len(b) for b in boxes])
    seen, same_as = [], {}
    for i, photo_boxes in enumerate(boxes):
        src = int(source[i])
        for t, (top, left, bottom, right) in enumerate(photo_boxes):
            k = int(starts[i] + t)
            if src != i and images[src].shape == images[i].shape and np.array_equal(
                images[i][top:bottom, left:right], images[src][top:bottom, left:right]
            ):
                same_as[k] = int(starts[src] + t)
            else:
                seen.append(k)
    return seen, same_as


def _stats(image_maps: Sequence[np.ndarray], kinds: np.ndarray, masks: list[np.ndarray | None],
           dilation: int | None = None) -> dict[str, Any]:
    """Selection statistics of one candidate's validation maps, with the arrays the bootstrap reuses
    (one number per validation photo: the bootstrap resamples photos, not the clean pixels). With
    ``dilation``, also "hit": a defect counts as located where the map's hottest pixel is within
    ``dilation`` pixels of its mask (only the per-position judgement reads it, so only it pays for it)."""
    image_scores = np.array([m.max() for m in image_maps])
    normal_pixels = np.sort(np.concatenate([m.ravel() for m, k in zip(image_maps, kinds) if k == "normal"]))
    mask_means = np.array([m[mask].mean() if mask is not None and mask.any() else np.nan
                           for m, mask in zip(image_maps, masks)])
    ranks = pixel_ranks(mask_means, normal_pixels)
    located = None if dilation is None else hits(image_maps, masks, dilation)
    stats = selection_scores(image_scores, ranks, kinds, np.flatnonzero(kinds == "normal"),
                             np.flatnonzero(kinds != "normal"), located)
    stats["_arrays"] = (image_scores, ranks, located)
    return stats


def _forget_maps(stats: dict[str, Any]) -> None:
    maps = stats.pop("_maps", None)
    if hasattr(maps, "drop"):
        maps.drop()


def combine_maps(per_member: list[list[np.ndarray]], kinds: np.ndarray) -> list[np.ndarray]:
    """Members' maps of the same photos put on one scale (z-scores over the clean photos' pixels,
    ``kinds == "normal"``) and averaged, as a fitted combination does with its calibration."""
    scales = []
    for maps in per_member:
        values = np.concatenate([m.ravel() for m, k in zip(maps, kinds) if k == "normal"])
        scales.append((float(values.mean()), max(float(values.std()), 1e-6)))
    # Photo by photo, so no scaled copy of every member's maps is held at once.
    return [
        np.mean([(maps[i] - mu) / sd for maps, (mu, sd) in zip(per_member, scales)], 0)
        for i in range(len(per_member[0]))
    ]


def prefix_nearest(queries: torch.Tensor, bank: torch.Tensor, sizes: Sequence[int]) -> dict[int, torch.Tensor]:
    """{k: (Q,) Euclidean distance of each query to its nearest row among the first k of ``bank``}
    for every k in ``sizes``, from one distance computation (in chunks of queries)."""
    rows = max(1, DISTANCE_CHUNK // max(1, len(bank)))
    parts: dict[int, list[torch.Tensor]] = {k: [] for k in sizes}  # equal sizes (tiny memories) counted once
    for start in range(0, len(queries), rows):
        d = torch.cdist(queries[start : start + rows], bank)
        for k in parts:
            parts[k].append(d[:, :k].min(1).values)
    return {k: torch.cat(v) if v else queries.new_zeros(0) for k, v in parts.items()}


def _rows(embedding: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) patch embeddings -> (B*h*w, D) rows, as PatchCore's memory holds them."""
    return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])


def _shared_predict(members: list[PatchCore], images: Sequence[np.ndarray], batch_size: int) -> list[Prediction]:
    """``[m.predict(images) for m in members]`` for whole-photo PatchCores that differ only in strides,
    neighbourhood and memory: the network runs once per batch, at every stride any member needs."""
    lead = copy.copy(members[0])  # shares the network; only the strides it extracts differ
    lead.strides_ = sorted({s for m in members for s in m.strides_})
    n = len(images)
    scores = [np.zeros(n) for _ in members]
    embeddings = [[None] * n for _ in members]
    maps = [[None] * n for _ in members]
    with torch.inference_mode():
        for idx, x in lead._shaped_batches(images, batch_size):
            features = lead._features(x)
            sizes = [images[i].shape[:2] for i in idx]
            for j, m in enumerate(members):
                emb = patch_embedding({s: features[s] for s in m.strides_}, m.model_.projection, m.config_["neighbourhood"])
                got = m._outputs(x, emb, m._distances(emb))
                scores[j][idx] = got["scores"].double().cpu().numpy()
                for i, e, up in zip(idx, got["embeddings"].float().cpu().numpy(), upsample_maps(got["maps"], sizes)):
                    embeddings[j][i], maps[j][i] = e, up
    return [Prediction(scores=scores[j], embeddings=np.stack(embeddings[j]) if n else None,
                       anomaly_maps=maps[j] if n else None) for j in range(len(members))]


def _shared_tiled_predict(members: list[PatchCore], images: Sequence[np.ndarray], batch_size: int) -> list[Prediction]:
    """``[m.predict(images) for m in members]`` for tiled PatchCores that see the photos the same way:
    each photo's tiles go through the network once (``_shared_predict``), not once per member."""
    tile = members[0].config_["tile_size"]
    return predict_tiled(images, tile, len(members), lambda tiles: _shared_predict(members, tiles, batch_size))


def _patchcore(params: dict[str, Any]) -> PatchCore:
    member = PatchCore(**params)
    member.get_params()  # bad parameters fail here, before any work
    return member


def judged_shape(height: int, width: int) -> tuple[int, int]:
    """The (H, W) a validation photo's map and mask are judged at: the photo's own, or shrunk to
    ``JUDGED_SIDE`` on its longer side."""
    scale = JUDGED_SIDE / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A defect mask at ``shape``: a pixel is in it where any of the pixels it covers was (so thin
    lines survive the shrinking)."""
    if mask.shape == tuple(shape):
        return mask
    area = Image.fromarray(mask.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.BOX)
    return np.asarray(area) > 0


def _resize_map(m: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    if tuple(m.shape) == tuple(shape):
        return m.float().cpu().numpy()
    up = F.interpolate(m[None, None].float(), size=shape, mode="bilinear", align_corners=False)
    return up[0, 0].cpu().numpy()


def _saved_doc(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The members' parameters and the selection table saved beside an auto model's tensors."""
    return json.loads(bytes(state["selection_json"].cpu().numpy().tobytes()).decode())


def identity_position() -> torch.Tensor:
    """(2, 2, G, G) per-position statistics that change nothing (mean 0, spread 1), for both parts."""
    stats = torch.zeros(2, 2, POSITION_GRID, POSITION_GRID)
    stats[:, 1] = 1.0
    return stats


def to_grid(m: np.ndarray, grid: int = POSITION_GRID) -> np.ndarray:
    """A map at any size -> (grid, grid) cell means, in the photo's own frame."""
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(t, grid)[0, 0].numpy()


def position_stats(grids: np.ndarray, prior: float = POSITION_PRIOR) -> np.ndarray:
    """(2, G, G) mean and spread at each cell of clean photos' maps ``grids`` (N, G, G). Both are
    smoothed over neighbouring cells (``POSITION_BLUR``); each cell's variance is shrunk towards the
    cells' pooled variance with the weight of ``prior`` photos (few photos: little trust in one
    cell's spread; pooled, not the whole map's, which would count the hot places themselves)."""
    n = len(grids)
    t = torch.from_numpy(np.ascontiguousarray(grids, dtype=np.float32))
    mean = t.mean(0, keepdim=True)
    var = ((t - mean) ** 2).mean(0, keepdim=True)
    mean, var = gaussian_blur(mean, POSITION_BLUR)[0], gaussian_blur(var, POSITION_BLUR)[0]
    var = (n * var + prior * var.mean()) / (n + prior)
    return torch.stack([mean, var.sqrt().clamp_min(1e-6)]).numpy()


def apply_position(maps: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Maps (..., H, W) as z-scores per position: ``stats`` (2, G, G), resized to (H, W) bilinearly."""
    up = F.interpolate(stats[None].to(maps), size=maps.shape[-2:], mode="bilinear", align_corners=False)[0]
    return (maps - up[0]) / up[1]


def apply_position_np(grids: np.ndarray, stats: np.ndarray) -> np.ndarray:
    return apply_position(torch.from_numpy(grids), torch.from_numpy(stats)).numpy()


def apply_position_maps(maps: Sequence[np.ndarray], stats: torch.Tensor) -> list[np.ndarray]:
    """``apply_position`` photo by photo (each at its own size)."""
    return [apply_position(torch.from_numpy(np.asarray(m, np.float32)), stats).numpy() for m in maps]


class ZScoreCombination(torch.nn.Module):
    """Several members' inference, as ``Auto.predict`` computes it for one image: the heat map from the
    ``map_members``, the score from the ``image_members``. Where a part has several members, each one's
    map, upsampled to the photo's size, is put on the hold-out scale (``calibration`` rows: mean,
    spread) and the maps averaged (the score: their maximum); a part with one member uses its own
    map and score."""

    def __init__(self, members: Sequence[torch.nn.Module], calibration: torch.Tensor,
                 image_members: Sequence[int], map_members: Sequence[int], position: torch.Tensor | None = None,
                 position_parts: Sequence[str] = ()) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.register_buffer("calibration", calibration.float())
        # (2, 2, G, G): per-position mean and spread of the image part's and the map part's maps.
        self.register_buffer("position", (identity_position() if position is None else position).float())
        self.image_members, self.map_members = list(image_members), list(map_members)
        self.position_parts = list(position_parts)

    def _combined(self, outs: list[dict], which: list[int], like: torch.Tensor) -> torch.Tensor:
        maps = []
        for k in which:
            up = F.interpolate(outs[k]["maps"][:, None], size=like.shape[-2:], mode="bilinear", align_corners=False)
            maps.append(up[:, 0] if len(which) == 1 else (up[:, 0] - self.calibration[k, 0]) / self.calibration[k, 1])
        return torch.stack(maps).mean(0)

    def image_outputs(self, x: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 3, h, w) image at the network input shape and any tensor of the photo's (H, W) ->
        (score (1,), map (1, H, W))."""
        outs = [member(x) for member in self.members]
        maps = self._combined(outs, self.map_members, like)
        if "image" in self.position_parts:
            plain = maps if self.image_members == self.map_members else self._combined(outs, self.image_members, like)
            scores = apply_position(plain, self.position[0]).flatten(1).max(1).values
        elif len(self.image_members) == 1:
            scores = outs[self.image_members[0]]["scores"]
        else:
            score_maps = maps if self.image_members == self.map_members else self._combined(outs, self.image_members, like)
            scores = score_maps.flatten(1).max(1).values
        if "pixel" in self.position_parts:
            maps = apply_position(maps, self.position[1])
        return scores, maps

    def forward(self, x: torch.Tensor) -> dict:
        """(B, 3, h, w) images at the network input shape -> the combined ``scores`` (B,) and ``maps``
        (B, h, w) at that shape (``Auto.predict`` combines the maps at each photo's own size instead)."""
        scores, maps = self.image_outputs(x, x[0, 0])
        return {"scores": scores, "maps": maps}
