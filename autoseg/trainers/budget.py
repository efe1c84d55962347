"""Training within a time budget (``autoseg train --time-budget 30m``).

The trainer runs a short warm-up (real training iterations, then a few validation
iterations), measures seconds per iteration, and sets the number of epochs so that the
whole schedule — poly LR decayed to its end, validation iterations, checkpoints — ends
within the budget. After every epoch the plan is checked against the measured epoch time
and the remaining budget, and the number of epochs is corrected when the projection is off
by more than :data:`REPLAN_TOLERANCE` (a machine that got busier, a resumed run).

Budget arithmetic, by example: budget 600 s, 40 s spent in start-up and warm-up, 1.0 s per
training and 0.5 s per validation iteration, 50 + 10 iterations per epoch, 0.5 s per epoch for
logging and checkpoints: one epoch costs 50 + 5 + 0.5 = 55.5 s, so (600 - 40) / 55.5 -> 10 epochs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from autoseg.errors import AutosegError

REPLAN_TOLERANCE = 0.05
EPOCHS_TARGET = 25          # with a budget and no --iters-per-epoch: aim for about this many epochs
MIN_ITERS_PER_EPOCH, MAX_ITERS_PER_EPOCH = 10, 250
VAL_FRACTION = 0.2          # validation iterations per training iteration (nnU-Net: 50 per 250)

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` (or plain seconds ``"600"``) -> seconds."""
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    else:
        m = _DURATION.match(t)
        if not t or m is None or not any(m.groups()):
            raise AutosegError(f"--time-budget {text!r}: write a duration like 90s, 30m, 2h or 1h30m")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = 3600 * h + 60 * mi + s
    if seconds <= 0:
        raise AutosegError(f"--time-budget {text!r}: must be longer than 0 s")
    return seconds


def default_val_iters(iters_per_epoch: int) -> int:
    """Validation iterations per epoch scale with the epoch: nnU-Net's 50 per 250 (at least 1)."""
    return max(1, round(VAL_FRACTION * iters_per_epoch))


def budget_iters_per_epoch(budget_s: float, s_per_iter_guess: float) -> int:
    """Iterations per epoch so that the budget holds about :data:`EPOCHS_TARGET` epochs (10..250)."""
    total = budget_s / max(s_per_iter_guess, 1e-3)
    return int(min(MAX_ITERS_PER_EPOCH, max(MIN_ITERS_PER_EPOCH, total / EPOCHS_TARGET)))


@dataclass
class EpochCost:
    """Measured seconds: one training iteration, one validation iteration, per-epoch overhead."""

    train_iter_s: float
    val_iter_s: float
    epoch_overhead_s: float = 0.5

    def epoch_s(self, iters_per_epoch: int, val_iters: int) -> float:
        return self.train_iter_s * iters_per_epoch + self.val_iter_s * val_iters + self.epoch_overhead_s


def epochs_that_fit(remaining_s: float, epoch_s: float) -> int:
    """Whole epochs that fit ``remaining_s`` (at least 1: a budget always trains something)."""
    return max(1, math.floor(max(0.0, remaining_s) / max(epoch_s, 1e-6)))


def replan(done_epochs: int, planned_epochs: int, remaining_s: float, epoch_s: float) -> int:
    """The corrected total number of epochs after ``done_epochs``, given the measured epoch time.

    Keeps ``planned_epochs`` while the remaining epochs' projected time is within
    :data:`REPLAN_TOLERANCE` of the remaining budget; otherwise the epochs that fit.
    In the last epoch the plan stands; a spent budget ends training after ``done_epochs``.
    """
    left = planned_epochs - done_epochs
    if left < 2:  # the LR has (almost) decayed: changing the end now would bump it back up
        return planned_epochs
    projected = left * epoch_s
    if remaining_s > 0 and abs(projected - remaining_s) <= REPLAN_TOLERANCE * remaining_s:
        return planned_epochs
    fit = math.floor(max(0.0, remaining_s) / max(epoch_s, 1e-6))
    if fit == 0:
        return max(done_epochs, 1)
    return done_epochs + fit
