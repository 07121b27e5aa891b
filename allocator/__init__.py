"""compute-allocator: learn where a training job's compute should go.

The core library: a real PyTorch :class:`TrainingJob` advanced interval by
interval under an :class:`Allocation`, FLOP accounting, the C/R-scaled
:class:`Objective`, and :func:`run_job` to run a job under any controller (a
trained :class:`AllocatorPolicy`, a baseline name, or your own object with
``act(observation) -> Allocation``).
"""

from allocator.allocation import Allocation, AllocationSpec
from allocator.job import IntervalReport, TrainingJob
from allocator.objective import Objective
from allocator.runner import RunResult, run_job
from allocator.stats import ObservationLayout

__version__ = "0.1.0"


def __getattr__(name):
    # AllocatorPolicy is imported on first use so that `import allocator` stays light.
    if name == "AllocatorPolicy":
        from allocator.policy import AllocatorPolicy

        return AllocatorPolicy
    raise AttributeError(f"module 'allocator' has no attribute {name!r}")


__all__ = [
    "Allocation",
    "AllocationSpec",
    "AllocatorPolicy",
    "IntervalReport",
    "Objective",
    "ObservationLayout",
    "RunResult",
    "TrainingJob",
    "__version__",
    "run_job",
]
