"""Curriculum schedules: how hard the negatives are at each epoch of Pair Selection training.

What the paper says (DESIGN.md §Method; its full text was not available to us): batches are built
greedily, each new member is the candidate at quantile alpha of the change in batch score, and "alpha
rises with the epoch e/E" under a schedule; it compares log, linear and sqrt schedules with easy-only and
hard-only ablations and finds log > linear > sqrt > easy-only >> hard-only.

Convention (the batch sampler and the loss mask alike): candidates are ranked by their PS score,
ascending, and alpha in [0, 1] is the quantile taken.

* A negative whose similarity FELL over the reference run (delta very negative) was already pushed away:
  it is EASY. A negative whose similarity rose, or stayed high, is HARD.
* So alpha ~ 0 means easy negatives, alpha ~ 1 hard ones, and a curriculum from easy to hard is alpha
  rising from `alpha_start` (default 0) to `alpha_end` (default 1).

Progress, the paper's words: x = e / E for epochs e = 0 .. E-1. The first epoch is at x = 0 (the easiest
negatives) and the last one at x = (E-1)/E < 1: no epoch of a rising schedule is the hard-only ablation.
(We used e / (E-1) before, which ran the last epoch at alpha = 1, the paper's worst arm.)

Schedules, alpha = alpha_start + (alpha_end - alpha_start) * f(x). The paper names the three rising
shapes but not their formulas; ours are the pacing functions of the curriculum-learning literature
(Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021), chosen so that the three are genuinely
different shapes:

    log     f(x) = clip(1 + 0.1 ln(x + e^-10), 0, 1)   the paper's best. Rises fastest: f(0) = 0,
                                                        f(0.01) = 0.54, f(0.1) = 0.77, f(0.5) = 0.93
    linear  f(x) = x                                    f(0.1) = 0.10, f(0.5) = 0.50
    sqrt    f(x) = sqrt(x)                              concave, between the two: f(0.1) = 0.32, f(0.5) = 0.71
    easy    alpha = alpha_start for every epoch          (ablation: easy negatives only)
    hard    alpha = alpha_end for every epoch            (ablation: hard negatives only)

Where they differ: early in training. At x = 0.1 the log schedule already takes the 77th percentile of
candidates, sqrt the 32nd, linear the 10th; from x ~ 0.5 on, log is within 0.1 of its end value while
linear is half way (tests/test_curriculum.py checks these points). (Our earlier log, log10(1 + 9x), stayed
within 0.065 of sqrt(x) everywhere: the two arms could not be told apart.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("log", "linear", "sqrt", "easy", "hard")
_LOG_FLOOR = math.exp(-10.0)  # the e^-10 of the log pacing function: f(0) = 1 + 0.1 * (-10) = 0


def epoch_progress(epoch: int, num_epochs: int) -> float:
    """x = e / E of epoch `epoch` (0-based) in a run of `num_epochs` epochs: 0 for the first, (E-1)/E for the last."""
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    return min(1.0, max(0.0, epoch / num_epochs))


@dataclass(frozen=True)
class CurriculumSchedule:
    """alpha(progress): the quantile of PS scores to take; 0 = easiest, 1 = hardest (see module docstring)."""

    name: str = "log"
    """One of log, linear, sqrt, easy, hard."""
    alpha_start: float = 0.0
    """alpha at progress 0 (and the constant of the `easy` ablation)."""
    alpha_end: float = 1.0
    """alpha at progress 1 (and the constant of the `hard` ablation)."""

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown curriculum schedule {self.name!r}; choose one of {SCHEDULES}")
        if not (0.0 <= self.alpha_start <= 1.0 and 0.0 <= self.alpha_end <= 1.0):
            raise ValueError(f"alpha endpoints must lie in [0, 1], got {self.alpha_start}, {self.alpha_end}")

    def shape(self, progress: float) -> float:
        """f(x) in [0, 1] with f(0) = 0 and f(1) = 1 for the rising schedules."""
        x = min(1.0, max(0.0, float(progress)))
        if self.name == "linear":
            return x
        if self.name == "sqrt":
            return math.sqrt(x)
        if self.name == "log":
            return min(1.0, max(0.0, 1.0 + 0.1 * math.log(x + _LOG_FLOOR)))
        return 0.0 if self.name == "easy" else 1.0

    def alpha(self, progress: float) -> float:
        return self.alpha_start + (self.alpha_end - self.alpha_start) * self.shape(progress)

    def alpha_at_epoch(self, epoch: int, num_epochs: int) -> float:
        """alpha of epoch e (0-based) of E: f(e / E)."""
        return self.alpha(epoch_progress(epoch, num_epochs))
