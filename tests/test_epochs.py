"""The one epoch loop (adcore.methods.epochs) on a stand-in method: no network, so every rule is exact."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from adcore.methods import Cancelled, FitContext
from adcore.methods.epochs import TrainingClock, train_epochs


class StandIn:
    """What ``train_epochs`` uses of a method: its config, its generator and ``record_epoch_scores``."""

    def __init__(self, epochs: int, batch_size: int) -> None:
        self.config_ = {"epochs": epochs, "batch_size": batch_size}
        self.rng_ = np.random.default_rng(0)
        self.recorded: list[tuple[int, int]] = []

    def record_epoch_scores(self, ctx, epoch: int, epochs: int) -> None:
        self.recorded.append((epoch, epochs))


def test_every_batch_of_every_epoch_is_stepped_and_each_complete_epoch_is_monitored():
    method, seen = StandIn(epochs=3, batch_size=4), []
    events = []
    ctx = FitContext(on_progress=events.append)
    done = train_epochs(method, ctx, 10, lambda idx, d: seen.append(sorted(idx)) or torch.tensor(1.0))
    # 10 images in batches of 4: 4, 4, 2 per epoch (a last batch of 2+ images is kept).
    assert done == 9 and [len(s) for s in seen] == [4, 4, 2] * 3
    for epoch in range(3):  # each epoch a permutation of all the images
        assert sorted(i for s in seen[3 * epoch : 3 * epoch + 3] for i in s) == list(range(10))
    assert method.recorded == [(1, 3), (2, 3), (3, 3)]
    assert events[-1]["step"] == events[-1]["total_steps"] == 9 and events[-1]["loss"] == 1.0


def test_a_stop_rule_ends_training_reports_the_last_step_and_marks_the_budget():
    method, events = StandIn(epochs=100, batch_size=2), []
    ctx = FitContext(on_progress=events.append)
    done = train_epochs(method, ctx, 6, lambda idx, d: torch.tensor(0.5), stop_after=lambda d: d >= 4)
    assert done == 4 and ctx.stopped_by_budget
    assert events[-1]["step"] == 4 and events[-1]["total_steps"] == 300 and events[-1]["epoch"] == 2
    assert method.recorded == [(1, 100)]  # the cut second epoch is not scored


def test_ending_on_the_last_step_is_not_a_budget_stop():
    method, ctx = StandIn(epochs=2, batch_size=2), FitContext()
    clock = TrainingClock(2 * 3, None, ctx.started)
    assert train_epochs(method, ctx, 6, lambda idx, d: torch.tensor(0.5), stop_after=clock.done) == 6
    assert not ctx.stopped_by_budget and method.recorded == [(1, 2), (2, 2)]


def test_a_spent_budget_stops_after_one_step():
    method, ctx = StandIn(epochs=100, batch_size=2), FitContext(budget_s=0.0)
    assert train_epochs(method, ctx, 6, lambda idx, d: torch.tensor(0.5)) == 1
    assert ctx.stopped_by_budget


def test_a_stop_request_raises_between_steps():
    stop, steps = threading.Event(), []

    def step(idx, done):
        steps.append(done)
        if done == 2:
            stop.set()
        return torch.tensor(0.5)

    with pytest.raises(Cancelled):
        train_epochs(StandIn(epochs=10, batch_size=2), FitContext(stop_event=stop), 6, step)
    assert steps == [0, 1, 2]


def test_no_monitor_scores_when_asked_and_a_diverged_loss_is_refused_with_the_hint():
    method = StandIn(epochs=2, batch_size=2)
    train_epochs(method, FitContext(), 4, lambda idx, d: torch.tensor(0.5), monitor=False)
    assert method.recorded == []
    with pytest.raises(RuntimeError, match=r"training diverged \(training: loss nan\); lower it"):
        train_epochs(method, FitContext(), 4, lambda idx, d: torch.tensor(float("nan")), diverged_hint="lower it")


def test_the_clock_keeps_its_reserve_and_gives_at_least_the_minimum():
    started = time.monotonic()
    clock = TrainingClock(10, 100.0, started, 5.0, reserve_share=0.1)
    assert clock.train_s == pytest.approx(100.0 * 0.9 - 5.0, abs=0.5)  # 90 % of what is left, less 5 s
    assert TrainingClock(10, 1.0, started - 50.0, min_train_s=1.0).train_s == 1.0  # spent long ago: the minimum
    no_budget = TrainingClock(10, None, started)
    assert no_budget.progress(5) == 0.5 and not no_budget.done(0) and no_budget.done(10)
