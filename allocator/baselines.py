"""Hand-designed controllers: the baselines a learned policy has to beat.

Every controller has ``act(observation) -> Allocation`` and may define
``reset(job)``, called once before a run; :func:`make` builds one by name.
"""

from __future__ import annotations

from allocator.allocation import Allocation, AllocationSpec


class Uniform:
    """Standard training: every sample and layer trained, full steps, until the budget is spent."""

    name = "uniform"

    def __init__(self) -> None:
        self.spec: AllocationSpec | None = None

    def reset(self, job) -> None:
        self.spec = job.spec

    def act(self, observation) -> Allocation:
        return Allocation.uniform(self.spec)


BASELINES = {"uniform": Uniform}


def make(name: str):
    """A fresh baseline controller by name (see ``BASELINES``)."""
    try:
        return BASELINES[name]()
    except KeyError:
        raise ValueError(f"unknown controller {name!r}; choose one of {sorted(BASELINES)}") from None
