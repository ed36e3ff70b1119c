"""What the methods are for, in the user's words: their groups, a one-line "good for" each, and how
long training one is expected to take on a given image set (for the method pickers of the app).

The methods themselves know how to learn; this table knows how to choose between them, so a new
method needs one row here and nothing in the pages.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from adcore.methods import DEFAULT_METHOD, METHODS, get_method_class
from adcore.training import TrainSpec

RECOMMENDED = "Recommended"
GROUPS = (RECOMMENDED, "Pretrained features", "Self-supervised from scratch", "Reconstruction", "Other")
REFERENCE_SIDE = 128  # the rates below are per image at REFERENCE_SIDE x REFERENCE_SIDE network pixels


@dataclass(frozen=True)
class Entry:
    """A method as the pickers show it. The two rates are seconds per image at 128 x 128 network
    pixels on two busy CPU cores: ``train_s`` per pass over one training image (one-pass methods:
    their single pass), ``score_s`` per image scored after training. The self-configuring method's,
    the autoencoder's and PatchCore's were measured on the demo set on such a machine, the others
    scaled from those by the size of their networks; measured runs of the method on the machine in
    use replace them. (An ``image_size`` of 0, the method's own choice, counts as 128.)"""

    group: str
    good_for: str
    train_s: float | None = None
    score_s: float | None = None
    uses_augmentations: bool = True
    reconstructs: bool = False  # predicts rebuilt images (Inspect offers to show them)


CATALOG: dict[str, Entry] = {
    "auto": Entry(
        RECOMMENDED, "a first model of any part: it sets itself up from the photos", 1.15, 0.15, uses_augmentations=False
    ),
    "patchcore": Entry(
        "Pretrained features", "fine surface defects (scratches, dents, spots) on few photos, with a map",
        0.025, 0.07, uses_augmentations=False,
    ),
    "patchcore_segmenter": Entry(
        "Pretrained features", "outlining defects precisely where PatchCore alone also flags normal texture",
        0.1, 0.08,
    ),
    "pretrained_gaussian": Entry(
        "Pretrained features", "a quick whole-photo check (wrong part, missing piece); no map of where",
        0.025, 0.03, uses_augmentations=False,
    ),
    "student_teacher": Entry(
        "Self-supervised from scratch", "textured surfaces with many normal photos, with a fine map",
        0.15, 0.06, uses_augmentations=False,
    ),
    "cutpaste": Entry(
        "Self-supervised from scratch", "local defects on regular textures, given time to train", 0.15, 0.05
    ),
    "contrastive": Entry(
        "Self-supervised from scratch", "whole-photo differences when many normal photos vary; no map", 0.15, 0.03
    ),
    "autoencoder": Entry(
        "Reconstruction", "simple, evenly lit parts; a baseline that is easy to explain", 0.07, 0.026, reconstructs=True
    ),
    "memae": Entry(
        "Reconstruction", "parts where the plain autoencoder rebuilds the defects too", 0.09, 0.03, reconstructs=True
    ),
    "ognet": Entry(
        "Reconstruction", "parts where the plain autoencoder's normal scores spread widely", 0.12, 0.035,
        reconstructs=True,
    ),
}


def entry(name: str) -> Entry:
    """The catalog row of method ``name``; a method missing from the table gets one from its summary."""
    if name in CATALOG:
        return CATALOG[name]
    summary = get_method_class(name).summary if name in METHODS else ""
    return Entry("Other", summary.split(". ")[0].rstrip(".") or "no description yet")


def group_of(name: str, recommended: str = DEFAULT_METHOD) -> str:
    """The group a picker shows ``name`` in: the recommended method is always "Recommended"."""
    return RECOMMENDED if name == recommended else entry(name).group


def grouped(names: Iterable[str], recommended: str = DEFAULT_METHOD) -> list[tuple[str, list[str]]]:
    """``names`` as ``[(group, [names...]), ...]`` in ``GROUPS`` order (the recommended method first),
    each group in the order given; empty groups are left out."""
    names = list(names)
    by_group = {g: [n for n in names if group_of(n, recommended) == g] for g in GROUPS}
    return [(g, members) for g, members in by_group.items() if members]


def in_picker_order(names: Iterable[str], recommended: str = DEFAULT_METHOD) -> list[str]:
    """``names`` flattened in the order of ``grouped``: what a method picker lists."""
    return [n for _, members in grouped(names, recommended) for n in members]


# --- expected training time -------------------------------------------------------------------


def _passes(params: Mapping[str, Any]) -> int:
    return max(1, int(params.get("epochs") or 1))


def _pixel_scale(params: Mapping[str, Any]) -> float:
    side = float(params.get("image_size") or REFERENCE_SIDE)
    return (side / REFERENCE_SIDE) ** 2


def measured_rate(name: str, configs: Iterable[Mapping[str, Any]]) -> float | None:
    """Seconds per training image pass at 128 x 128 px that earlier runs of ``name`` took on this
    machine (the median of up to the 5 newest, from their ``config.json`` contents), else None.
    Runs stopped by their time budget are left out: how many passes they made is not recorded."""
    rates = []
    for config in configs:
        data, params = config.get("data") or {}, config.get("params") or {}
        seconds, n_fit = config.get("train_seconds"), data.get("n_fit")
        if config.get("method") != name or config.get("stopped_by_budget") or not seconds or not n_fit:
            continue
        rates.append(float(seconds) / (_passes(params) * int(n_fit) * _pixel_scale(params)))
        if len(rates) == 5:
            break
    return statistics.median(rates) if rates else None


def method_params(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The method's parameter defaults with ``params`` on top (unknown methods: ``params`` alone)."""
    defaults = {p.name: p.default for p in get_method_class(name).param_specs()} if name in METHODS else {}
    return {**defaults, **(params or {})}


def estimate_training_seconds(
    name: str,
    n_train: int,
    n_scored: int = 0,
    params: Mapping[str, Any] | None = None,
    *,
    budget_s: float | None = None,
    earlier_runs: Sequence[Mapping[str, Any]] = (),
) -> float | None:
    """Expected seconds for a run of method ``name``: training on ``n_train`` normal images plus
    scoring ``n_scored`` images afterwards, at the run's ``image_size`` (the method's default if not
    given in ``params``) and its number of ``epochs`` (1 for one-pass methods).

    Uses the rate measured by ``earlier_runs`` of the same method on this machine (``config.json``
    contents, newest first) when there are any, else the catalog's two-core CPU figure. Training is
    capped at ``budget_s``. None when neither is known.
    """
    params = method_params(name, params)
    row = entry(name)
    rate = measured_rate(name, earlier_runs) or row.train_s
    if rate is None:
        return None
    scale = _pixel_scale(params)
    train = _passes(params) * n_train * rate * scale
    if budget_s:
        train = min(train, float(budget_s))
    return train + n_scored * (row.score_s or rate) * scale


def format_estimate(seconds: float | None) -> str:
    """"about 40 s", "about 3 min", "about 1.5 h"; "time not known yet" for None."""
    if seconds is None:
        return "time not known yet"
    if seconds < 60:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    if seconds < 3600:
        return f"about {round(seconds / 60):.0f} min"
    return f"about {seconds / 3600:.1f} h"


# --- the one-click run ------------------------------------------------------------------------

RECOMMENDED_BUDGET_S = 600.0  # one click must not start an hour-long run: stop after 10 min, keep the model


def recommended_spec(data: str, name: str = "recommended") -> TrainSpec:
    """The run that "Train the recommended method" starts on the image set at ``data``: the
    recommended method with its own defaults (parameters and augmentations), the usual hold-out,
    and a time budget of ``RECOMMENDED_BUDGET_S``."""
    return TrainSpec(data=str(data), method=DEFAULT_METHOD, budget_s=RECOMMENDED_BUDGET_S, name=name)
