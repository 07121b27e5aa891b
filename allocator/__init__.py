"""compute-allocator: learn where a training job's compute should go.

The core library: a real PyTorch :class:`TrainingJob` advanced interval by
interval under an :class:`Allocation`, FLOP accounting, the C/R-scaled
:class:`Objective`, and :func:`run_job` to run a job under any controller (a
trained :class:`AllocatorPolicy`, a baseline name, or your own object with
``act(observation) -> Allocation``).
"""

from allocator.allocation import Allocation, AllocationSpec
from allocator.objective import Objective

__version__ = "0.1.0"

__all__ = ["Allocation", "AllocationSpec", "Objective", "__version__"]
