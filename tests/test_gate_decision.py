"""Layer gates decided once per job (``gate_decision: job``).

By default (``interval``) every action's gate entries decide that interval's layer
gates. With ``job`` the gates a job runs on its first trained interval hold to its
end: a freeze of the CNN stem is one decision per job, and PPO credits the whole
run's J to one draw instead of a sliver of it to each interval's.
"""

from __future__ import annotations

import numpy as np
import pytest

from allocator import AllocationSpec, AllocatorPolicy
from allocator.allocation import Allocation
from allocator.evaluation import describe_policy
from allocator.policy import use_policy_spec
from envs.compute_allocation import ComputeAllocationEnv
from tests.conftest import make_job
from tests.test_cnn_freezing import QUICK, small_cnn, weights
from tests.test_gate_mapping import _OneCnn

LEVER = dict(dead_zone=0.1, min_layer_gate=0.0, layer_lever="cnn-first-group", gate_mapping="binary")


def first_gate_action(spec: AllocationSpec, entry: float) -> np.ndarray:
    action = np.zeros(spec.action_size, dtype=np.float32)
    action[spec.gate_entries.start] = entry
    return action


def run_two_intervals(gate_decision: str, first_entry: float, second_entry: float):
    """Two intervals of a CNN job asking for these first gate entries: the job, and whether the second trained the stem."""
    env = ComputeAllocationEnv(jobs=_OneCnn(), gate_decision=gate_decision, **LEVER)
    env.reset(seed=0)
    spec = env.allocation_spec
    env.step(first_gate_action(spec, first_entry))
    stem = weights(env.job.model[1])
    env.step(first_gate_action(spec, second_entry))
    stem_trained = not all(a.equal(b) for a, b in zip(stem, env.job.model[1].parameters()))
    return env.job, stem_trained


def test_a_stem_frozen_on_the_first_interval_stays_frozen_whatever_later_actions_ask():
    job, stem_trained = run_two_intervals("job", first_entry=-1.0, second_entry=0.0)
    assert not stem_trained
    assert job._held_layer_gates == (0.0, 1.0, 1.0, 1.0)
    # decided per interval, the same second action trains the stem
    _, stem_trained = run_two_intervals("interval", first_entry=-1.0, second_entry=0.0)
    assert stem_trained


def test_a_stem_trained_on_the_first_interval_is_never_frozen_later():
    job = make_job(budget_steps=60, model=small_cnn())
    spec = AllocationSpec(gate_decision="job", **LEVER)
    use_policy_spec(job, spec)
    assert job.gate_decision == "job"
    trained = job.advance(spec.to_allocation(first_gate_action(spec, 0.0)))
    stem = weights(job.model[1])
    asked_frozen = job.advance(spec.to_allocation(first_gate_action(spec, -1.0)))
    # the report says what ran, which is what the next observation shows the policy
    assert trained.allocation.layer_gates == asked_frozen.allocation.layer_gates == (1.0, 1.0, 1.0, 1.0)
    assert not all(a.equal(b) for a, b in zip(stem, job.model[1].parameters()))


def test_a_first_interval_that_stops_decides_nothing():
    job = make_job(budget_steps=60, model=small_cnn())
    spec = AllocationSpec(gate_decision="job", **LEVER)
    use_policy_spec(job, spec)
    uniform = Allocation.uniform(spec)
    job.advance(Allocation(uniform.sample_shares, 1.0, uniform.layer_gates, 0))  # zero steps: stops
    assert job._held_layer_gates is None


def test_apply_and_evaluate_name_it():
    assert describe_policy(AllocatorPolicy.load(QUICK)._with_spec(gate_decision="job")) == [
        "layer gates decided once per job, on its first interval"
    ]


@pytest.mark.parametrize("layer_lever", ["cnn-first-group", "all"])
def test_tensorboard_charts_the_gate_held_not_the_later_asks(layer_lever):
    from agents.callbacks import _EpisodeAllocation

    # with the lever open on every job too: the held decision alone makes the asks mislead
    env = ComputeAllocationEnv(jobs=_OneCnn(), gate_decision="job", **{**LEVER, "layer_lever": layer_lever})
    env.reset(seed=0)
    episode, done, entry = _EpisodeAllocation(), False, -1.0
    while not done:
        *_, done, _, info = env.step(first_gate_action(env.allocation_spec, entry))
        episode.add(info)
        entry = 0.0  # every later interval asks to train the stem
    scalars = episode.summary(info)
    assert scalars["allocation/acting_layer_gate_0"] == 0.0  # frozen for the whole run
    assert scalars["allocation/layer_gate_0"] > 0.5  # what the actions asked, mostly to train it
