"""Choosing the score above which an image counts as anomalous, and saying honestly how reliable it is.

One convention everywhere: an image is flagged as anomalous when ``score >= threshold`` (higher
scores are more anomalous, as in the rest of adcore). Scores must be finite.

Why the statements below are valid for a threshold chosen *from* the hold-out normals themselves
(scores assumed continuous, i.e. without ties): with n hold-out normal scores, a threshold placed at
the m-th largest of them lets a new normal image through with probability ``p`` ("the false-alarm
rate") that is a random variable with distribution Beta(m, n - m + 1), mean ``m / (n + 1)`` -- the
distribution-free order-statistics (split-conformal) result. A threshold just above the largest
normal score behaves like m = 1. The Clopper-Pearson interval on the observed count k = m of n
contains that ``p`` with probability >= 95 % as well (its lower end is exactly the Beta(m, n-m+1)
2.5 % quantile, its upper end the 97.5 % quantile of the stochastically larger Beta(m+1, n-m)).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import beta
from sklearn.metrics import precision_recall_curve, roc_curve

from adcore.decision import is_anomalous  # noqa: F401 - the decision rule, re-exported here
from adcore.registry import validate_params
from adcore.scoring import SCORERS

if TYPE_CHECKING:  # adcore.runs imports torch; these functions only read run.results
    from adcore.runs import Run

NORMAL_LABEL = "good"
DEFAULT_FALSE_ALARM_RATE = 0.05
CONFIDENCE = 0.95
HOLDOUT_SOURCE = "normal images held out from training"
FIT_SOURCE = "normal images the model was trained on"
_OPTIMISTIC = "Chosen on the same labelled images it is measured on: expect somewhat worse on new images."


# --- the stored threshold -------------------------------------------------------------------------


@dataclass
class Threshold:
    """A threshold value, how it was chosen (one line for people) and the numbers behind it.

    ``details`` holds only JSON types (str, int, float, bool, None, lists, dicts), so ``to_dict()``
    can be written into an exported model file and read back with ``from_dict()``.
    """

    value: float
    how: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # A JSON round trip both checks that details are plain and hands out an independent copy.
        return {"value": float(self.value), "how": self.how, "details": json.loads(json.dumps(self.details))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Threshold:
        if "value" not in data:
            raise ValueError("a stored threshold needs a 'value'")
        value = float(data["value"])
        if not math.isfinite(value):
            raise ValueError(f"a stored threshold must be finite, got {value}")
        return cls(value=value, how=str(data.get("how", "")), details=dict(data.get("details") or {}))


# --- confusion counts at any threshold, fast ------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """Confusion counts at one threshold; rates are None where their denominator is zero."""

    threshold: float
    tp: int  # defects flagged
    fp: int  # normal images flagged (false alarms)
    tn: int
    fn: int  # defects missed

    @property
    def false_alarm_rate(self) -> float | None:
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def miss_rate(self) -> float | None:
        return _ratio(self.fn, self.tp + self.fn)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def to_dict(self) -> dict[str, Any]:
        rates = ("false_alarm_rate", "miss_rate", "precision", "recall", "f1")
        return {**asdict(self), **{name: getattr(self, name) for name in rates}}


@dataclass(frozen=True)
class RocCurve:
    """sklearn ``roc_curve`` output, named: the first threshold is +inf (nothing flagged)."""

    false_alarm_rate: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class PrCurve:
    """sklearn ``precision_recall_curve`` output: one more (precision, recall) point than thresholds."""

    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray


class ScoreTable:
    """Scores of images known to be normal or anomalous, sorted once so that any threshold query
    (a slider move) is two binary searches: O(log n), microseconds for 100,000 images."""

    def __init__(self, scores: np.ndarray, is_anomaly: np.ndarray) -> None:
        self.scores = _finite(scores, "scores")
        self.is_anomaly = np.asarray(is_anomaly, dtype=bool)
        if self.is_anomaly.shape != self.scores.shape:
            raise ValueError(f"{self.scores.size} scores but {self.is_anomaly.size} labels")
        self.normal_sorted = np.sort(self.scores[~self.is_anomaly])
        self.anomaly_sorted = np.sort(self.scores[self.is_anomaly])
        self.n_normal = int(self.normal_sorted.size)
        self.n_anomaly = int(self.anomaly_sorted.size)

    def at(self, threshold: float) -> OperatingPoint:
        """Confusion counts when ``score >= threshold`` is flagged."""
        t = float(threshold)
        if math.isnan(t):
            raise ValueError("threshold is NaN")
        fp = self.n_normal - int(np.searchsorted(self.normal_sorted, t, side="left"))
        tp = self.n_anomaly - int(np.searchsorted(self.anomaly_sorted, t, side="left"))
        return OperatingPoint(t, tp=tp, fp=fp, tn=self.n_normal - fp, fn=self.n_anomaly - tp)

    def counts(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tp, fp) for many thresholds at once, e.g. to draw metrics against the threshold."""
        t = np.asarray(thresholds, dtype=np.float64)
        tp = self.n_anomaly - np.searchsorted(self.anomaly_sorted, t, side="left")
        fp = self.n_normal - np.searchsorted(self.normal_sorted, t, side="left")
        return tp, fp

    @cached_property
    def roc(self) -> RocCurve | None:
        """The ROC curve (computed on first use, then kept); None without both kinds of image."""
        if not (self.n_normal and self.n_anomaly):
            return None
        fpr, tpr, thresholds = roc_curve(self.is_anomaly, self.scores)
        return RocCurve(fpr, tpr, thresholds)

    @cached_property
    def pr(self) -> PrCurve | None:
        """The precision-recall curve (computed on first use, then kept); None without both kinds."""
        if not (self.n_normal and self.n_anomaly):
            return None
        precision, recall, thresholds = precision_recall_curve(self.is_anomaly, self.scores)
        return PrCurve(precision, recall, thresholds)


# --- what a threshold guarantees on normal images -------------------------------------------------


@dataclass(frozen=True)
class FalseAlarmEstimate:
    """What n normal images say about the false-alarm rate of one threshold (see the module doc)."""

    threshold: float
    n: int  # normal images it was checked on
    flagged: int  # k: how many of them score >= threshold
    ci_low: float  # Clopper-Pearson 95 % interval for the true rate, from k of n
    ci_high: float
    order_statistic: int  # m: the threshold acts as the m-th largest normal score
    expected_rate: float  # m / (n + 1)
    beta_a: int  # the true rate ~ Beta(beta_a, beta_b) over draws of the n normal images
    beta_b: int
    upper_95: float  # 95 % quantile of that Beta: the true rate is below this 95 % of the time
    sentence: str  # the line the page shows
    warnings: tuple[str, ...] = ()

    @property
    def observed_rate(self) -> float:
        return self.flagged / self.n

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "warnings": list(self.warnings), "observed_rate": self.observed_rate}


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (conservative) two-sided interval for a rate seen k times in n trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def false_alarm_estimate(
    normal_scores: np.ndarray,
    threshold: float,
    *,
    chosen_from_these: bool = False,
    source: str = HOLDOUT_SOURCE,
) -> FalseAlarmEstimate:
    """How reliable ``threshold`` is, judged on the normal images ``normal_scores``.

    ``chosen_from_these`` only changes the wording ("Set from ..." rather than "Checked on ...");
    the numbers are valid either way. ``source`` says in words which normal images these are.
    Ties between normal scores make the order-statistics numbers approximate (a warning says so).
    """
    normal = np.sort(_finite(normal_scores, "normal scores"))
    n = normal.size
    if n == 0:
        raise ValueError("no normal images to judge the threshold on")
    t = float(threshold)
    first = int(np.searchsorted(normal, t, side="left"))
    k = n - first
    low, high = clopper_pearson(k, n)
    # Sitting exactly on a normal score, t is the k-th largest; anywhere else it is above the
    # (k+1)-th largest and no higher than the k-th, so the (k+1)-th bounds its rate from above.
    on_a_score = first < n and normal[first] == t
    m = min(k if on_a_score else k + 1, n)
    a, b = m, n - m + 1
    expected = m / (n + 1)
    upper = float(beta.ppf(CONFIDENCE, a, b))

    warnings = []
    if k == n:
        warnings.append(f"This threshold flags all {n} {source}: it is below every normal score.")
    if on_a_score and np.count_nonzero(normal == t) > 1:
        warnings.append(
            f"{np.count_nonzero(normal == t)} of the {source} have exactly this score, "
            "so the expected rate is approximate."
        )
    verb = "Set from" if chosen_from_these else "Checked on"
    sentence = (
        f"{verb} {n} {source}: expect about {format_percent(expected)} false alarms "
        f"(95 % CI {format_percent(low)}–{format_percent(high)})."
    )
    needed = normal_images_for_precision(expected)
    if needed > n:
        sentence += (
            f" The interval is wide for {n} {_short(source)}: about {needed} would narrow it to "
            f"roughly ±{format_percent(expected / 2)}."
        )
    return FalseAlarmEstimate(
        threshold=t,
        n=n,
        flagged=k,
        ci_low=low,
        ci_high=high,
        order_statistic=m,
        expected_rate=expected,
        beta_a=a,
        beta_b=b,
        upper_95=upper,
        sentence=sentence,
        warnings=tuple(warnings),
    )


# --- choosing a threshold -------------------------------------------------------------------------


def threshold_for_false_alarm_rate(
    normal_scores: np.ndarray, target_rate: float, *, source: str = HOLDOUT_SOURCE
) -> Threshold:
    """The lowest threshold that flags at most ``floor(target_rate * n)`` of the n normal images.

    That is the k-th largest normal score with k = floor(target_rate * n) (the "higher" empirical
    (1 - target_rate) quantile), so the realised rate on these images is k/n <= target and the
    expected rate on new normal images is k/(n+1) < target. Ties: if images tied with the k-th
    largest would push the count above k, the next higher distinct score is used. When k is 0 (or
    the ties leave no score) the threshold is placed just above the largest normal score
    (``np.nextafter``), which flags none of them and has expected rate 1/(n+1).

    Guard: since at most k <= n - 1 images are flagged, the threshold is always above the lowest
    normal score -- it never flags every image it was set from.
    """
    if not 0.0 <= target_rate < 1.0:
        raise ValueError(f"target false-alarm rate must be in [0, 1), got {target_rate}")
    normal = np.sort(_finite(normal_scores, "normal scores"))
    n = normal.size
    if n == 0:
        raise ValueError(f"no {source} to set a threshold from")
    allowed = min(math.floor(target_rate * n + 1e-9), n - 1)  # 1e-9: 0.29 * 100 is 28.999999999999996
    value = float(np.nextafter(normal[-1], np.inf))
    if allowed >= 1:
        kth = normal[n - allowed]
        if n - int(np.searchsorted(normal, kth, side="left")) <= allowed:
            value = float(kth)
        else:  # ties below the k-th largest would flag too many: step up to the next distinct score
            above = int(np.searchsorted(normal, kth, side="right"))
            if above < n:
                value = float(normal[above])
    estimate = false_alarm_estimate(normal, value, chosen_from_these=True, source=source)
    assert estimate.flagged < n, "a false-alarm threshold must not flag every normal image"

    warnings = list(estimate.warnings)
    smallest = 1 / (n + 1)
    if target_rate < smallest:
        need_text = ""
        if target_rate > 0:  # 1/(n+1) <= target needs n >= 1/target - 1
            needed = math.ceil(1 / target_rate - 1e-9) - 1
            need_text = f"; a {format_percent(target_rate)} target needs at least {needed} of them"
        warnings.append(
            f"With {n} {_short(source)} the lowest false-alarm rate a threshold can be set to is about "
            f"{format_percent(smallest)} (1 in {n + 1}){need_text}. The threshold sits just above the "
            "highest of them."
        )
    if estimate.flagged == 0:
        where = f"just above the highest of the {n} {_short(source)}"
    else:
        rank = "" if estimate.flagged == 1 else f"{_ordinal(estimate.flagged)} "
        where = f"the {rank}highest of {n} {_short(source)} (flags {estimate.flagged})"
    how = f"{format_percent(target_rate)} target false-alarm rate: {where}"
    details = {
        "rule": "false_alarm_rate",
        "target_rate": float(target_rate),
        "source": source,
        **estimate.to_dict(),
        "warnings": warnings,
    }
    return Threshold(value=value, how=how, details=details)


def f1_optimal_threshold(scores: np.ndarray, is_anomaly: np.ndarray) -> Threshold:
    """The threshold (one of the scores) with the best F1 on these labelled images.

    Among equally good thresholds the highest (fewest flags) is taken. The F1 is measured on the
    same images the threshold was picked on, so it is optimistic for new images.
    """
    table = ScoreTable(scores, is_anomaly)
    if not (table.n_normal and table.n_anomaly):
        raise ValueError("the F1-optimal threshold needs both normal and anomalous images")
    candidates = np.unique(table.scores)
    tp, fp = table.counts(candidates)
    fn = table.n_anomaly - tp
    f1 = 2 * tp / (2 * tp + fp + fn)
    best = int(np.flatnonzero(f1 == f1.max())[-1])
    point = table.at(candidates[best])
    return Threshold(
        value=float(candidates[best]),
        how=f"best F1 ({point.f1:.2f}) on {table.n_normal} normal and {table.n_anomaly} defect images",
        details={"rule": "f1_optimal", **point.to_dict(), "warnings": [_OPTIMISTIC]},
    )


def threshold_for_recall(scores: np.ndarray, is_anomaly: np.ndarray, required_recall: float) -> Threshold:
    """The highest threshold that still flags at least ``required_recall`` of the anomalous images.

    It is the ceil(required_recall * n_defects)-th largest defect score (tied defects only raise the
    recall). Normal images are optional; where present the false-alarm rate they see is reported.
    """
    if not 0.0 < required_recall <= 1.0:
        raise ValueError(f"required recall must be in (0, 1], got {required_recall}")
    table = ScoreTable(scores, is_anomaly)
    if not table.n_anomaly:
        raise ValueError("a recall threshold needs at least one anomalous image")
    needed = max(1, math.ceil(required_recall * table.n_anomaly - 1e-9))
    value = float(table.anomaly_sorted[table.n_anomaly - needed])
    point = table.at(value)
    low, high = clopper_pearson(point.tp, table.n_anomaly)
    return Threshold(
        value=value,
        how=(
            f"{format_percent(required_recall)} required recall: catches {point.tp} of "
            f"{table.n_anomaly} defect images"
        ),
        details={
            "rule": "recall",
            "required_recall": float(required_recall),
            **point.to_dict(),
            "recall_ci": [low, high],
            "warnings": [_OPTIMISTIC],
        },
    )


# --- a run's scores, grouped ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunTables:
    """A run's rows split by what they are; each group is an array of row indices into ``scores``."""

    scores: np.ndarray
    fit_normal: np.ndarray  # normal images the model was trained on
    holdout_normal: np.ndarray  # normal images kept out of training to set the threshold
    test_normal: np.ndarray
    test_defects: dict[str, np.ndarray]  # defect class -> rows
    synthetic: dict[str, np.ndarray]  # "synthetic cutpaste" / "synthetic scar" -> rows

    def test_table(self) -> ScoreTable | None:
        """Test normals against all test defects; None unless the test split has both."""
        defects = np.concatenate([np.zeros(0, dtype=np.intp), *self.test_defects.values()])
        if not (self.test_normal.size and defects.size):
            return None
        rows = np.concatenate([self.test_normal, defects])
        return ScoreTable(self.scores[rows], np.arange(rows.size) >= self.test_normal.size)


def synthetic_group_name(label: str) -> str:
    """The name a synthetic defect kind goes by on the pages: "synthetic cutpaste", "synthetic scar"."""
    return "synthetic scar" if label == "synthetic cutpaste scar" else label


def run_tables(run: Run, scores: np.ndarray | None = None) -> RunTables:
    """Group the rows of ``run.results`` by role and label; ``scores`` replaces the stored scores
    (e.g. the same run re-scored by another embedding scorer)."""
    results = run.results
    missing = [key for key in ("role", "label", "score") if key not in results]
    if missing:
        raise ValueError(f"run results have no {', '.join(missing)}")
    role, label = results["role"], results["label"]
    scores = _finite(results["score"] if scores is None else scores, "scores")
    if scores.shape != role.shape:
        raise ValueError(f"{scores.size} scores for {role.size} images")
    normal = label == NORMAL_LABEL
    test, synthetic = role == "test", role == "synthetic"

    def rows(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    return RunTables(
        scores=scores,
        fit_normal=rows(role == "fit"),
        holdout_normal=rows(role == "holdout"),
        test_normal=rows(test & normal),
        test_defects={c: rows(test & (label == c)) for c in sorted(set(label[test & ~normal].tolist()))},
        synthetic=_by_group(label, synthetic),
    )


def default_threshold(
    run: Run, target_rate: float = DEFAULT_FALSE_ALARM_RATE, scores: np.ndarray | None = None
) -> Threshold:
    """The threshold for ``target_rate`` false alarms on the run's hold-out normal images.

    A run trained without a hold-out falls back to the training normals, with a warning: the model
    has seen those, so they score lower than new normal images and real false alarms run higher.
    """
    tables = run_tables(run, scores)
    if tables.holdout_normal.size:
        return threshold_for_false_alarm_rate(tables.scores[tables.holdout_normal], target_rate)
    if not tables.fit_normal.size:
        raise ValueError("the run has no normal images to set a threshold from")
    threshold = threshold_for_false_alarm_rate(tables.scores[tables.fit_normal], target_rate, source=FIT_SOURCE)
    threshold.details["warnings"].insert(
        0,
        "No normal images were held out from training, so the threshold was set from training images. "
        "The model has seen them: expect more false alarms than stated. Retrain with a hold-out fraction.",
    )
    return threshold


# --- the threshold a run decides with -------------------------------------------------------------
# One policy for export, report, the command line and the pages. A threshold is a value on one score's
# scale: a run's saved threshold (config "threshold") belongs to the scores it was chosen on (config
# "scorer": an embedding scorer {"name", "params"}, or absent/None for the method's own score). Scored
# any other way, the run falls back to the default rule on the new scores, and says so.


def score_source(scorer: dict[str, Any] | None) -> str:
    """The scores a scorer choice gives, in words: "the method's own score", "the knn scorer"."""
    return "the method's own score" if scorer is None else f"the {scorer.get('name', '?')} scorer"


def same_scores(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two scorer choices give the same scores (parameters compared with defaults filled in)."""
    if a is None or b is None:
        return a is b
    return a.get("name") == b.get("name") and _resolved(a) == _resolved(b)


def saved_threshold(run: Run) -> tuple[Threshold | None, dict[str, Any] | None]:
    """The threshold saved with the run (None if none) and the scorer it was chosen for (None: the
    method's own score)."""
    saved, scorer = run.config.get("threshold"), run.config.get("scorer")
    scorer = scorer if isinstance(scorer, dict) else None
    if isinstance(saved, dict) and "value" in saved:
        return Threshold.from_dict(saved), scorer
    return None, scorer


def saved_threshold_note(run: Run, scorer: dict[str, Any] | None) -> str | None:
    """Why the run's saved threshold does not apply to the scores of ``scorer``; None when it does
    (or when nothing is saved)."""
    saved, saved_for = saved_threshold(run)
    if saved is None or same_scores(saved_for, scorer):
        return None
    return (
        f"The run's saved threshold {saved.value:.4g} was chosen for {score_source(saved_for)}, not for "
        f"{score_source(scorer)}: on another score's scale it would mean something else, so the default "
        "rule is applied to these scores instead."
    )


def threshold_for(run: Run, scorer: dict[str, Any] | None, scores: np.ndarray | None = None) -> Threshold:
    """The threshold ``run`` decides with when scored by ``scorer`` (None: the method's own score).

    The saved threshold if it was chosen for these same scores, else ``default_threshold`` on
    ``scores`` (the scorer's scores of every row of the run; needed with a scorer, since the stored
    ones are the method's own), whose first warning then says that the saved one was not used and why.
    """
    saved, _ = saved_threshold(run)
    note = saved_threshold_note(run, scorer)
    if saved is not None and note is None:
        return saved
    if scorer is not None and scores is None:
        raise ValueError(f"threshold_for: pass the {scorer.get('name')} scorer's scores of the run's rows")
    threshold = default_threshold(run, scores=scores)
    if note is not None:
        threshold.details["warnings"].insert(0, note)
    return threshold


def _resolved(scorer: dict[str, Any]) -> dict[str, Any]:
    params = dict(scorer.get("params") or {})
    if scorer.get("name") not in SCORERS:
        return params
    try:
        return validate_params(SCORERS.get(scorer["name"]).params, params)
    except ValueError:
        return params


# --- recall on defects at a threshold -------------------------------------------------------------


@dataclass(frozen=True)
class RecallEstimate:
    """How many images of one defect group a threshold catches, with a Clopper-Pearson interval."""

    group: str
    caught: int
    n: int
    recall: float
    ci_low: float
    ci_high: float
    synthetic: bool  # pasted by us onto hold-out normals, not a real defect
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_caveat(run: Run) -> str | None:
    """What to add to the synthetic recall of a run whose method learned to find such pastes (CutPaste,
    the PatchCore segmenter): it catches them more easily than real defects. Runs saved before the
    config said so are known by their method."""
    config = run.config or {}
    if not config.get("learns_pasted_defects", config.get("method") == "cutpaste"):
        return None
    return (
        f"{config.get('method', 'This method')} was trained to find defects pasted this way, so it catches "
        "these more easily than real ones: this estimate overstates recall on real defects."
    )


def synthetic_recall(run: Run, threshold: float, scores: np.ndarray | None = None) -> dict[str, RecallEstimate]:
    """Share of the run's synthetic CutPaste / scar defects caught at ``threshold``, per kind.

    These are patches pasted onto hold-out normal images by the training run: a first, synthetic
    estimate of recall when no real defect images exist, not a measurement on real defects.
    """
    tables = run_tables(run, scores)
    return {g: _recall(g, tables.scores[r], threshold, synthetic=True) for g, r in tables.synthetic.items()}


def defect_recall(run: Run, threshold: float, scores: np.ndarray | None = None) -> dict[str, RecallEstimate]:
    """Share of each real test defect class caught at ``threshold``."""
    tables = run_tables(run, scores)
    return {c: _recall(c, tables.scores[r], threshold, synthetic=False) for c, r in tables.test_defects.items()}


def _recall(group: str, scores: np.ndarray, threshold: float, *, synthetic: bool) -> RecallEstimate:
    n = int(scores.size)  # >= 1: groups come from labels present in the run
    caught = int(np.count_nonzero(scores >= threshold))
    low, high = clopper_pearson(caught, n)
    recall = caught / n
    if synthetic:
        name = f"Synthetic {group.removeprefix('synthetic ')} defects (pasted onto hold-out normals, not real)"
    else:
        name = f"Test defects '{group}'"
    sentence = (
        f"{name}: {caught} of {n} caught ({format_percent(recall)}, "
        f"95 % CI {format_percent(low)}–{format_percent(high)})."
    )
    return RecallEstimate(group, caught, n, recall, low, high, synthetic, sentence)


# --- small helpers --------------------------------------------------------------------------------


def format_percent(rate: float) -> str:
    """A rate as people read it: "6 %", "0.2 %", "30 %" (one significant digit below 10 %)."""
    p = 100.0 * float(rate)
    if math.isnan(p):
        return "n/a"
    if p == 0:
        return "0 %"
    if p < 0.01:
        return "<0.01 %"
    if p < 9.5:
        return f"{float(f'{p:.1g}'):g} %"
    return f"{p:.0f} %"


def normal_images_for_precision(rate: float, relative_half_width: float = 0.5) -> int:
    """About how many normal images pin a false-alarm ``rate`` to within ±``relative_half_width`` of
    itself (95 %, normal approximation to the binomial), rounded to two significant figures."""
    rate = float(np.clip(rate, 1e-6, 1 - 1e-6))
    n = 1.96**2 * (1 - rate) / (rate * relative_half_width**2)
    return int(float(f"{n:.2g}"))


def _short(source: str) -> str:
    """'normal images held out from training' -> 'hold-out images', for the second mention."""
    return "hold-out images" if source == HOLDOUT_SOURCE else "normal images"


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _finite(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite numbers (found NaN or inf)")
    return array


def _by_group(label: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = {}
    for i in np.flatnonzero(mask):
        groups.setdefault(synthetic_group_name(str(label[i])), []).append(int(i))
    return {g: np.asarray(r, dtype=np.intp) for g, r in groups.items()}
