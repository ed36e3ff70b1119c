"""The one epoch loop every trained method runs, and the clock that ends training within a budget.

``train_epochs`` makes shuffled passes in batches, calls the method's ``step`` for each batch, and
is the one place where the time budget ends training (``FitContext.stopped_by_budget``), where a stop
request takes effect between steps, where the loss is reported (read back from the device only when
reported) and where the monitor images are scored after each complete epoch. A method says what one
step is and, if a budget should end it on another clock than the fit's own, when to stop.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from adcore.methods.base import FitContext, LossMeter, epoch_batches, steps_per_epoch

if TYPE_CHECKING:
    from adcore.methods.base import Method


class TrainingClock:
    """How far training is, by steps or, under a time budget, by time (whichever is further), so a
    learning rate that follows it anneals fully within the budget. Of the budget left when training
    starts, ``reserve_share`` and then ``reserve_s`` are kept for what follows training (a pass over
    the normal images); training gets at least ``min_train_s``."""

    def __init__(
        self,
        total_steps: int,
        budget_s: float | None,
        started: float,
        reserve_s: float = 0.0,
        *,
        reserve_share: float = 0.0,
        min_train_s: float = 0.0,
    ) -> None:
        self.total_steps = total_steps
        self.started = started
        self.train_started = time.monotonic()
        self.train_s = None
        if budget_s is not None:
            left = budget_s - (self.train_started - started)
            self.train_s = max(min_train_s, left * (1.0 - reserve_share) - reserve_s)

    def progress(self, step: int) -> float:
        by_steps = step / max(1, self.total_steps)
        if self.train_s is None:
            return by_steps
        if self.train_s <= 0:
            return 1.0
        return max(by_steps, (time.monotonic() - self.train_started) / self.train_s)

    def done(self, step: int) -> bool:
        """True once training should end; never before one step, so BatchNorm has seen the data."""
        return step > 0 and (step >= self.total_steps or (self.train_s is not None and self.progress(step) >= 1.0))


def total_steps(n_images: int, batch_size: int, epochs: int) -> int:
    """Optimisation steps in ``epochs`` passes over ``n_images`` (at least one per epoch)."""
    return epochs * max(1, steps_per_epoch(n_images, batch_size))


def train_epochs(
    method: "Method",
    ctx: FitContext,
    n_images: int,
    step: Callable[[np.ndarray, int], torch.Tensor],
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    phase: str = "training",
    stop_after: Callable[[int], bool] | None = None,
    monitor: bool = True,
    diverged_hint: str | None = None,
) -> int:
    """``epochs`` (default: the method's ``epochs``) shuffled passes over ``n_images`` in
    ``batch_size`` batches (default: the method's), drawn from ``method.rng_``. Returns the steps made.

    ``step(indices, steps_done)`` makes one optimisation step and returns its loss on the device.
    After each step ``stop_after(steps_done)`` (default: the fit's budget is spent) may end training;
    ended before all steps, the fit is marked stopped by its budget. The loss is reported every half
    second, at the last step and when stopped, under ``phase``; a stop request raises ``Cancelled``
    between steps. After each complete epoch the monitor images are scored (``monitor=False`` for a
    phase whose scores mean nothing yet). With ``diverged_hint``, a loss that is not finite ends the
    fit with a RuntimeError saying what to try."""
    cfg = method.config_
    epochs = cfg["epochs"] if epochs is None else epochs
    batch_size = cfg["batch_size"] if batch_size is None else batch_size
    total = total_steps(n_images, batch_size, epochs)
    stop_after = stop_after or (lambda done: ctx.out_of_budget())
    meter, done, seen = LossMeter(), 0, 0
    for epoch in range(1, epochs + 1):
        for idx in epoch_batches(n_images, batch_size, method.rng_):
            meter.add(step(idx, done))
            done, seen = done + 1, seen + len(idx)
            cut = stop_after(done) and done < total
            if meter.due() or done == total or cut:
                loss = meter.pop()
                if diverged_hint is not None and loss is not None and not math.isfinite(loss):
                    raise RuntimeError(f"training diverged ({phase}: loss {loss}); {diverged_hint}")
                ctx.report(step=done, total_steps=total, epoch=epoch, loss=loss, images=seen, phase=phase)
            else:
                ctx.check_cancel()
            if cut:
                ctx.stopped_by_budget = True
                return done
        if monitor:
            method.record_epoch_scores(ctx, epoch, epochs)
    return done
