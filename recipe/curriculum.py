"""Curriculum schedules: how hard the negatives are at each point of Pair Selection training.

Convention (used by the batch sampler and the loss mask alike): candidates are ranked by their PS score,
ascending, and alpha in [0, 1] is the quantile taken.

* A negative whose similarity FELL over the reference run (delta very negative) was already pushed away:
  it is EASY. A negative whose similarity rose, or stayed high, is HARD.
* So a low quantile (alpha ~ 0) means easy negatives, a high quantile (alpha ~ 1) means hard ones, and
  a curriculum from easy to hard is alpha rising from `alpha_start` (default 0) to `alpha_end` (default 1).

Schedules, with x = training progress in [0, 1] and alpha = alpha_start + (alpha_end - alpha_start) * f(x):

    linear  f(x) = x
    sqrt    f(x) = sqrt(x)
    log     f(x) = log(1 + (b - 1) x) / log(b)       (b = log_base, default 10; f(0) = 0, f(1) = 1;
                                                    rises fast at first, the paper's best schedule)
    easy    alpha = alpha_start for all x            (ablation: easy negatives only)
    hard    alpha = alpha_end for all x              (ablation: hard negatives only)

Progress per epoch is x = e / (E - 1) for epochs e = 0..E-1, so the first epoch is at alpha_start and
the last epoch reaches alpha_end exactly (a single-epoch run stays at x = 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("log", "linear", "sqrt", "easy", "hard")


def epoch_progress(epoch: int, num_epochs: int) -> float:
    """Training progress in [0, 1] of epoch `epoch` (0-based) in a run of `num_epochs` epochs."""
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if num_epochs == 1:
        return 0.0
    return min(1.0, max(0.0, epoch / (num_epochs - 1)))


@dataclass(frozen=True)
class CurriculumSchedule:
    """alpha(progress): the quantile of PS scores to take; 0 = easiest, 1 = hardest (see module docstring)."""

    name: str = "log"
    """One of log, linear, sqrt, easy, hard."""
    alpha_start: float = 0.0
    """alpha at progress 0 (and the constant of the `easy` ablation)."""
    alpha_end: float = 1.0
    """alpha at progress 1 (and the constant of the `hard` ablation)."""
    log_base: float = 10.0
    """b of the log schedule: larger = steeper start."""

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown curriculum schedule {self.name!r}; choose one of {SCHEDULES}")
        if not (0.0 <= self.alpha_start <= 1.0 and 0.0 <= self.alpha_end <= 1.0):
            raise ValueError(f"alpha endpoints must lie in [0, 1], got {self.alpha_start}, {self.alpha_end}")
        if self.log_base <= 1.0:
            raise ValueError(f"log_base must be > 1, got {self.log_base}")

    def shape(self, progress: float) -> float:
        """f(x) in [0, 1] with f(0) = 0 and f(1) = 1 for the rising schedules."""
        x = min(1.0, max(0.0, float(progress)))
        if self.name == "linear":
            return x
        if self.name == "sqrt":
            return math.sqrt(x)
        if self.name == "log":
            return math.log1p((self.log_base - 1.0) * x) / math.log(self.log_base)
        return 0.0 if self.name == "easy" else 1.0

    def alpha(self, progress: float) -> float:
        return self.alpha_start + (self.alpha_end - self.alpha_start) * self.shape(progress)

    def alpha_at_epoch(self, epoch: int, num_epochs: int) -> float:
        return self.alpha(epoch_progress(epoch, num_epochs))
