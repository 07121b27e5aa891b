"""The C/R-scaled objective J: validation loss weighted by the compute spent reaching it.

With ``l_t`` the validation loss after interval t relative to the initial
validation loss, ``C_t`` the FLOPs of interval t, ``R`` the budget, ``T`` the
last interval and ``U = 1 - sum(C_t) / R`` the unused share of the budget::

    J = sum_t (C_t / R) * l_t      # loss weighted by the share of compute spent reaching it
      + U * (1 - s) * l_T          # unused budget counted at the final loss, credited by s
      + w * l_T                    # weight on the final loss

Lower is better. The reward of interval t is minus its increment of J, so an
episode's return is ``-J``. Uniform training that spends the whole budget has
``U = 0``; stopping at once scores ``(1 - s) + w`` (1.8 at the defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    """Parameters of J and its per-interval increments.

    Args:
        s: credit for unused budget, in ``[0, 1]``; 0 counts unused budget as if
            spent at the final loss, 1 counts it as free.
        w: weight on the final relative loss, ``>= 0``.
        divergence_loss: the relative loss charged from the interval in which a
            job diverges (NaN or inf loss) to the end; above the initial loss (1)
            so that diverging always scores worse than stopping at once.
        max_relative_loss: relative losses are capped here so that one exploding
            interval cannot dominate a batch of PPO rewards.
    """

    s: float = 0.2
    w: float = 1.0
    divergence_loss: float = 3.0
    max_relative_loss: float = 3.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.s) and 0.0 <= self.s <= 1.0):
            raise ValueError(f"s must be in [0, 1], got {self.s!r}")
        if not (math.isfinite(self.w) and self.w >= 0.0):
            raise ValueError(f"w must be finite and >= 0, got {self.w!r}")
        if not (math.isfinite(self.divergence_loss) and self.divergence_loss >= 1.0):
            raise ValueError(f"divergence_loss must be >= 1, got {self.divergence_loss!r}")
        if not (math.isfinite(self.max_relative_loss) and self.max_relative_loss >= 1.0):
            raise ValueError(f"max_relative_loss must be >= 1, got {self.max_relative_loss!r}")

    def relative_loss(self, val_loss: float, initial_val_loss: float, diverged: bool) -> float:
        """``l = val_loss / initial_val_loss``, capped; ``divergence_loss`` when diverged."""
        if diverged or not math.isfinite(val_loss):
            return self.divergence_loss
        ratio = val_loss / max(initial_val_loss, 1e-12)
        return min(max(ratio, 0.0), self.max_relative_loss)

    def interval_cost(self, compute_fraction: float, relative_loss: float) -> float:
        """The increment of J for one interval: ``(C_t / R) * l_t``."""
        return compute_fraction * relative_loss

    def final_cost(self, unused_fraction: float, final_relative_loss: float) -> float:
        """The terminal increment of J: ``U * (1 - s) * l_T + w * l_T``."""
        unused = min(max(unused_fraction, 0.0), 1.0)
        return unused * (1.0 - self.s) * final_relative_loss + self.w * final_relative_loss

    def stopped_values(self, curve: list[tuple[float, float]]) -> list[float]:
        """J of a run stopped after interval k, for k = 0 (stop at once) .. len(curve) - 1.

        ``curve`` is a run's ``(compute fraction used, validation loss)`` after each
        interval, starting with ``(0.0, initial validation loss)`` (``RunResult.curve``);
        the last entry is the whole run's J. Used to label stops in hindsight.
        """
        initial = curve[0][1]
        values = [self.final_cost(1.0, 1.0)]  # stop at once: all unused, at the initial loss
        area = 0.0
        for k in range(1, len(curve)):
            spent = curve[k][0] - curve[k - 1][0]
            loss = self.relative_loss(curve[k][1], initial, not math.isfinite(curve[k][1]))
            area += self.interval_cost(spent, loss)
            values.append(area + self.final_cost(1 - curve[k][0], loss))
        return values

    def total(self, intervals: list[tuple[float, float]], final_relative_loss: float) -> float:
        """J of a whole run from ``(compute_fraction, relative_loss)`` per interval."""
        spent = sum(c for c, _ in intervals)
        return sum(self.interval_cost(c, r) for c, r in intervals) + self.final_cost(
            1.0 - spent, final_relative_loss
        )


class ObjectiveMeter:
    """Accumulates J over a run, one interval at a time; the env's reward is minus each increment.

    Before any interval the relative loss is 1 (the initial validation loss), so
    a run that stops at once scores ``(1 - s) + w``.
    """

    def __init__(self, objective: Objective, initial_val_loss: float) -> None:
        self.objective = objective
        self.initial_val_loss = float(initial_val_loss)
        self.value = 0.0
        self.spent_fraction = 0.0
        self.relative_loss = 1.0
        self.finished = False

    def add_interval(self, compute_fraction: float, val_loss: float, diverged: bool) -> float:
        """Add interval t's ``(C_t / R) * l_t``; returns the increment."""
        self.relative_loss = self.objective.relative_loss(val_loss, self.initial_val_loss, diverged)
        self.spent_fraction += compute_fraction
        increment = self.objective.interval_cost(compute_fraction, self.relative_loss)
        self.value += increment
        return increment

    def finish(self) -> float:
        """Add the terminal ``U (1 - s) l_T + w l_T``; returns the increment."""
        if self.finished:
            raise RuntimeError("the objective of this run is already final")
        self.finished = True
        increment = self.objective.final_cost(1.0 - self.spent_fraction, self.relative_loss)
        self.value += increment
        return increment
