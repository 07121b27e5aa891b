"""Gymnasium environments of compute-allocator; importing this package registers them.

``gymnasium.make("ComputeAllocator/TrainingJob-v0")`` gives a
:class:`ComputeAllocationEnv` over the small, fast ``train`` job distribution;
keyword arguments choose the split, the allocation spec and the objective.
"""

from gymnasium.envs.registration import register, registry

from envs.compute_allocation import ComputeAllocationEnv

ENV_ID = "ComputeAllocator/TrainingJob-v0"

# A safety limit only: a budget is normally spent in 10-40 intervals, but a
# policy that asks for one cheap step at a time could otherwise run for long.
MAX_EPISODE_STEPS = 256

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="envs.compute_allocation:ComputeAllocationEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )

__all__ = ["ENV_ID", "MAX_EPISODE_STEPS", "ComputeAllocationEnv"]
