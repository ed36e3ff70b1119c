"""Thresholds: confusion counts, the fast table, false-alarm thresholds and how reliable they are."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import beta
from sklearn.metrics import precision_recall_curve, roc_curve

from adcore.runs import Run
from adcore.threshold import (
    ScoreTable,
    Threshold,
    clopper_pearson,
    default_threshold,
    defect_recall,
    f1_optimal_threshold,
    false_alarm_estimate,
    format_percent,
    run_tables,
    synthetic_recall,
    threshold_for_false_alarm_rate,
    threshold_for_recall,
)

TOY_SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
TOY_ANOMALY = np.array([0, 0, 1, 0, 1, 1], dtype=bool)


def fake_run(tmp_path, rows: list[tuple[str, str, float]]) -> Run:
    """A run from (role, label, score) rows, as training would store it."""
    role, label, score = (np.array(col) for col in zip(*rows))
    results = {
        "rel_path": np.array([f"img{i:03d}.png" for i in range(len(rows))]),
        "split": np.where(role == "synthetic", "synthetic", np.where(role == "test", "test", "train")),
        "label": label.astype(str),
        "role": role.astype(str),
        "score": score.astype(np.float64),
    }
    return Run(path=tmp_path, config={"method": "fake", "params": {}}, history=[], results=results)


# --- confusion counts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "threshold, tp, fp, tn, fn",
    [
        (0.35, 2, 1, 2, 1),  # flags 0.4 (normal), 0.5, 0.6
        (0.3, 3, 1, 2, 0),  # ">=": a score equal to the threshold is flagged
        (0.0, 3, 3, 0, 0),
        (1.0, 0, 0, 3, 3),
    ],
)
def test_confusion_counts_by_hand(threshold, tp, fp, tn, fn):
    point = ScoreTable(TOY_SCORES, TOY_ANOMALY).at(threshold)
    assert (point.tp, point.fp, point.tn, point.fn) == (tp, fp, tn, fn)


def test_rates_at_one_threshold_by_hand():
    point = ScoreTable(TOY_SCORES, TOY_ANOMALY).at(0.35)
    assert point.false_alarm_rate == pytest.approx(1 / 3)
    assert point.miss_rate == pytest.approx(1 / 3)
    assert point.precision == pytest.approx(2 / 3)
    assert point.recall == pytest.approx(2 / 3)
    assert point.f1 == pytest.approx(2 / 3)
    nothing = ScoreTable(TOY_SCORES, TOY_ANOMALY).at(1.0)
    assert nothing.precision is None and nothing.f1 == 0.0  # nothing flagged: precision undefined
    json.dumps(point.to_dict())


def test_fast_query_equals_brute_force_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 25, 600).astype(float)  # many ties
    is_anomaly = rng.random(600) < 0.3
    table = ScoreTable(scores, is_anomaly)
    thresholds = np.concatenate([np.unique(scores), np.unique(scores) + 0.5, [-1e9, 1e9]])
    for t in thresholds:
        flagged = scores >= t
        expected = (
            int(np.sum(flagged & is_anomaly)),
            int(np.sum(flagged & ~is_anomaly)),
            int(np.sum(~flagged & ~is_anomaly)),
            int(np.sum(~flagged & is_anomaly)),
        )
        point = table.at(t)
        assert (point.tp, point.fp, point.tn, point.fn) == expected
    tp, fp = table.counts(thresholds)
    assert tp.tolist() == [int(np.sum((scores >= t) & is_anomaly)) for t in thresholds]
    assert fp.tolist() == [int(np.sum((scores >= t) & ~is_anomaly)) for t in thresholds]


def test_curves_match_sklearn_and_are_computed_once():
    rng = np.random.default_rng(1)
    scores, is_anomaly = rng.normal(size=200), rng.random(200) < 0.4
    table = ScoreTable(scores, is_anomaly)
    fpr, tpr, _ = roc_curve(is_anomaly, scores)
    precision, recall, _ = precision_recall_curve(is_anomaly, scores)
    np.testing.assert_array_equal(table.roc.false_alarm_rate, fpr)
    np.testing.assert_array_equal(table.roc.recall, tpr)
    np.testing.assert_array_equal(table.pr.precision, precision)
    np.testing.assert_array_equal(table.pr.recall, recall)
    assert table.roc is table.roc and table.pr is table.pr
    normal_only = ScoreTable(scores, np.zeros(200, bool))
    assert normal_only.roc is None and normal_only.pr is None


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="finite"):
        ScoreTable([0.1, np.nan], [False, True])
    with pytest.raises(ValueError, match="2 scores but 3 labels"):
        ScoreTable([0.1, 0.2], [False, True, True])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        threshold_for_false_alarm_rate([0.1, 0.2], 1.0)
    with pytest.raises(ValueError, match="no normal images"):
        threshold_for_false_alarm_rate([], 0.05)


# --- false-alarm thresholds -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16, 19, 20, 37, 100, 1000])
@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.9])
@pytest.mark.parametrize("tied", [False, True])
def test_false_alarm_threshold_realises_at_most_the_target(n, target, tied):
    rng = np.random.default_rng(n)
    normal = rng.integers(0, 4, n).astype(float) if tied else rng.normal(size=n)
    threshold = threshold_for_false_alarm_rate(normal, target)
    flagged = int(np.sum(normal >= threshold.value))
    assert flagged / n <= target
    assert flagged < n and threshold.value > normal.min()  # never flags every hold-out image
    assert threshold.details["flagged"] == flagged
    # The lowest such threshold: any lower normal score would flag too many.
    lower = normal[normal < threshold.value]
    if lower.size:
        assert np.sum(normal >= lower.max()) / n > target


def test_false_alarm_threshold_by_hand():
    normal = np.arange(1.0, 21.0)  # 20 distinct scores
    t = threshold_for_false_alarm_rate(normal, 0.1)
    assert t.value == 19.0 and t.details["flagged"] == 2
    assert t.details["expected_rate"] == pytest.approx(2 / 21)
    # Ties: the 4th largest (5) is shared by four images, so stepping up to 6 keeps the count <= 4.
    tied = np.array([1, 2, 3, 4, 5, 5, 5, 5, 6, 7], dtype=float)
    t = threshold_for_false_alarm_rate(tied, 0.4)
    assert t.value == 6.0 and t.details["flagged"] == 2
    same = np.full(10, 3.0)
    t = threshold_for_false_alarm_rate(same, 0.5)
    assert t.value > 3.0 and t.details["flagged"] == 0


def test_interval_and_order_statistics_match_scipy():
    low, high = clopper_pearson(3, 40)
    assert low == pytest.approx(beta.ppf(0.025, 3, 38))
    assert high == pytest.approx(beta.ppf(0.975, 4, 37))
    assert clopper_pearson(0, 16) == (0.0, pytest.approx(1 - 0.025 ** (1 / 16)))
    assert clopper_pearson(16, 16) == (pytest.approx(0.025 ** (1 / 16)), 1.0)

    normal = np.linspace(0.0, 1.0, 40)
    estimate = false_alarm_estimate(normal, normal[-3])  # sits on the 3rd largest score
    assert (estimate.flagged, estimate.n, estimate.order_statistic) == (3, 40, 3)
    assert (estimate.ci_low, estimate.ci_high) == (low, high)
    assert estimate.expected_rate == pytest.approx(3 / 41)
    assert (estimate.beta_a, estimate.beta_b) == (3, 38)
    assert estimate.upper_95 == pytest.approx(beta.ppf(0.95, 3, 38))
    between = false_alarm_estimate(normal, (normal[-3] + normal[-4]) / 2)  # above the 4th largest
    assert between.flagged == 3 and between.order_statistic == 4


def test_the_sentence_shown_on_the_page():
    normal = np.random.default_rng(3).normal(size=16)
    threshold = threshold_for_false_alarm_rate(normal, 0.07)  # floor(0.07 * 16) = 1: the largest
    assert threshold.details["sentence"] == (
        "Set from 16 normal images held out from training: expect about 6 % false alarms "
        "(95 % CI 0.2 %–30 %). The interval is wide for 16 hold-out images: about 250 would narrow it "
        "to roughly ±3 %."
    )
    middle = threshold_for_false_alarm_rate(np.random.default_rng(3).normal(size=140), 0.05)
    assert middle.details["sentence"].endswith(
        "The interval is wide for 140 hold-out images: about 290 would narrow it to roughly ±2 %."
    )
    enough = threshold_for_false_alarm_rate(np.random.default_rng(3).normal(size=400), 0.05)
    assert "wide" not in enough.details["sentence"]
    assert threshold.how == "7 % target false-alarm rate: the highest of 16 hold-out images (flags 1)"
    many = threshold_for_false_alarm_rate(np.random.default_rng(4).normal(size=2000), 0.05)
    assert many.details["sentence"] == (
        "Set from 2000 normal images held out from training: expect about 5 % false alarms (95 % CI 4 %–6 %)."
    )


def test_too_few_normals_for_the_target_is_a_warning():
    normal = np.random.default_rng(5).normal(size=16)
    threshold = threshold_for_false_alarm_rate(normal, 0.01)
    assert threshold.value > normal.max() and threshold.details["flagged"] == 0
    assert threshold.details["expected_rate"] == pytest.approx(1 / 17)
    (warning,) = threshold.details["warnings"]
    assert "lowest false-alarm rate a threshold can be set to is about 6 % (1 in 17)" in warning
    assert "a 1 % target needs at least 99 of them" in warning
    assert threshold_for_false_alarm_rate(np.random.default_rng(5).normal(size=99), 0.01).details["warnings"] == []


def test_order_statistics_claim_holds_in_simulation():
    """Thresholds set from 16 uniform normals: the true false-alarm rate 1 - t ~ Beta(3, 14)."""
    rng = np.random.default_rng(6)
    true_rates, estimates = [], []
    for _ in range(400):
        normal = rng.random(16)
        threshold = threshold_for_false_alarm_rate(normal, 0.2)  # flags 3 of 16
        true_rates.append(1.0 - threshold.value)
        estimates.append(threshold.details)
    true_rates = np.array(true_rates)
    assert {e["order_statistic"] for e in estimates} == {3}
    assert true_rates.mean() == pytest.approx(3 / 17, abs=0.015)
    assert np.mean(true_rates <= estimates[0]["upper_95"]) == pytest.approx(0.95, abs=0.03)
    covered = [e["ci_low"] <= r <= e["ci_high"] for e, r in zip(estimates, true_rates)]
    assert np.mean(covered) >= 0.93


# --- other ways to choose ------------------------------------------------------------------------


def test_f1_optimal_threshold_on_a_toy_set():
    threshold = f1_optimal_threshold(TOY_SCORES, TOY_ANOMALY)
    assert threshold.value == 0.3  # tp 3, fp 1, fn 0: F1 6/7, better than 0.5's 4/5
    assert threshold.details["f1"] == pytest.approx(6 / 7)
    assert "best F1 (0.86)" in threshold.how


def test_f1_optimal_threshold_equals_brute_force():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 30, 300).astype(float)
    is_anomaly = rng.random(300) < scores / 40
    best = f1_optimal_threshold(scores, is_anomaly).details["f1"]
    brute = max(
        2 * np.sum((scores >= t) & is_anomaly) / (np.sum(scores >= t) + np.sum(is_anomaly))
        for t in np.unique(scores)
    )
    assert best == pytest.approx(brute)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        f1_optimal_threshold(scores, np.zeros(300, bool))


def test_recall_threshold_on_a_toy_set():
    scores = np.array([0.1, 0.2, 0.4, 0.3, 0.5, 0.6, 0.9])
    is_anomaly = np.array([0, 0, 0, 1, 1, 1, 1], dtype=bool)
    t = threshold_for_recall(scores, is_anomaly, 0.75)
    assert t.value == 0.5 and t.details["tp"] == 3 and t.details["fp"] == 0
    t = threshold_for_recall(scores, is_anomaly, 1.0)
    assert t.value == 0.3 and t.details["fp"] == 1
    assert threshold_for_recall(scores, is_anomaly, 0.5).value == 0.6
    ten = np.arange(10.0)
    assert threshold_for_recall(ten, np.ones(10, bool), 0.7).value == 3.0  # 0.7 * 10 is 7.000000000000001


# --- runs -----------------------------------------------------------------------------------------


def normal_only_rows(n_fit=20, n_hold=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = [("fit", "good", s) for s in rng.normal(0, 1, n_fit)]
    rows += [("holdout", "good", s) for s in rng.normal(0.3, 1, n_hold)]
    rows += [("synthetic", "synthetic cutpaste", s) for s in rng.normal(3, 1, n_hold)]
    rows += [("synthetic", "synthetic cutpaste scar", s) for s in rng.normal(1.5, 1, n_hold)]
    return rows


def test_run_tables_split_the_rows(tmp_path):
    rows = normal_only_rows(3, 4) + [("test", "good", 0.0), ("test", "scratch", 5.0), ("test", "dent", 4.0)]
    tables = run_tables(fake_run(tmp_path, rows))
    assert tables.fit_normal.tolist() == [0, 1, 2]
    assert tables.holdout_normal.tolist() == [3, 4, 5, 6]
    assert list(tables.synthetic) == ["synthetic cutpaste", "synthetic scar"]
    assert tables.synthetic["synthetic scar"].tolist() == [11, 12, 13, 14]
    assert tables.test_normal.tolist() == [15]
    assert {k: v.tolist() for k, v in tables.test_defects.items()} == {"dent": [17], "scratch": [16]}
    point = tables.test_table().at(4.5)
    assert (point.tp, point.fp, point.fn) == (1, 0, 1)
    assert run_tables(fake_run(tmp_path, normal_only_rows())).test_table() is None


def test_normal_only_run_gets_a_threshold_that_flags_few_holdout_normals(tmp_path):
    run = fake_run(tmp_path, normal_only_rows())
    threshold = default_threshold(run)
    holdout = run_tables(run).holdout_normal
    flagged = np.sum(run.results["score"][holdout] >= threshold.value)
    assert flagged == 2 == threshold.details["flagged"]  # floor(5 % of 40)
    assert threshold.details["source"] == "normal images held out from training"
    restored = Threshold.from_dict(json.loads(json.dumps(threshold.to_dict())))
    assert restored == threshold
    tiny = fake_run(tmp_path, normal_only_rows(n_hold=3))
    tiny_threshold = default_threshold(tiny, target_rate=0.5)
    assert np.sum(tiny.results["score"][run_tables(tiny).holdout_normal] >= tiny_threshold.value) < 3


def test_run_without_holdout_falls_back_to_training_normals_with_a_warning(tmp_path):
    run = fake_run(tmp_path, [("fit", "good", s) for s in np.linspace(0, 1, 30)])
    threshold = default_threshold(run)
    assert threshold.details["source"] == "normal images the model was trained on"
    assert "No normal images were held out" in threshold.details["warnings"][0]
    assert threshold.details["sentence"].startswith("Set from 30 normal images the model was trained on:")


def test_threshold_round_trips_through_json():
    threshold = Threshold(0.25, "by hand", {"rule": "manual", "ci": [0.1, 0.2]})
    assert Threshold.from_dict(json.loads(json.dumps(threshold.to_dict()))) == threshold
    with pytest.raises(ValueError, match="needs a 'value'"):
        Threshold.from_dict({"how": "?"})


def test_synthetic_recall_counts_per_kind(tmp_path):
    rows = [("holdout", "good", 0.0)] * 5
    rows += [("synthetic", "synthetic cutpaste", s) for s in (0.2, 0.6, 0.7, 0.9)]
    rows += [("synthetic", "synthetic cutpaste scar", s) for s in (0.1, 0.3, 0.55)]
    rows += [("test", "scratch", s) for s in (0.4, 0.8)]
    run = fake_run(tmp_path, rows)
    recall = synthetic_recall(run, 0.5)
    assert list(recall) == ["synthetic cutpaste", "synthetic scar"]
    cutpaste, scar = recall["synthetic cutpaste"], recall["synthetic scar"]
    assert (cutpaste.caught, cutpaste.n, scar.caught, scar.n) == (3, 4, 1, 3)
    assert cutpaste.synthetic and scar.recall == pytest.approx(1 / 3)
    assert (scar.ci_low, scar.ci_high) == clopper_pearson(1, 3)
    assert scar.sentence.startswith("Synthetic scar defects (pasted onto hold-out normals, not real): 1 of 3 caught")
    real = defect_recall(run, 0.5)
    assert list(real) == ["scratch"] and real["scratch"].caught == 1 and not real["scratch"].synthetic


def test_percentages_read_like_the_page():
    assert [format_percent(r) for r in (0, 0.0015811, 0.0588, 0.05, 0.302, 0.206, 1.0)] == [
        "0 %", "0.2 %", "6 %", "5 %", "30 %", "21 %", "100 %",
    ]
    assert format_percent(math.nan) == "n/a"
