"""All-or-nothing layer gates (``gate_mapping: binary``).

With the default ``linear`` mapping a gate entry is the chance that a step trains its
layer group; with ``binary`` the same gate is rounded at 1/2, so the group is frozen for
the whole interval or trained at every step. A training choice (the envs run it), made
so that a policy's mean action deploys the freeze most of its training draws made.
"""

from __future__ import annotations

import numpy as np
import pytest

from allocator import AllocationSpec, AllocatorPolicy
from allocator.allocation import Allocation
from allocator.evaluation import describe_policy
from envs.compute_allocation import ComputeAllocationEnv
from tests.conftest import make_job
from tests.test_cnn_freezing import QUICK, small_cnn, weights


def gates_of(spec: AllocationSpec, first_gate_entry: float) -> tuple[float, ...]:
    """The layer gates of the zero action with its first gate entry set."""
    action = np.zeros(spec.action_size)
    action[spec.gate_entries.start] = first_gate_entry
    return spec.to_allocation(action).layer_gates


def test_binary_gates_round_the_linear_gate_at_one_half():
    linear = AllocationSpec(dead_zone=0.1)
    binary = AllocationSpec(dead_zone=0.1, gate_mapping="binary")
    # the linear gate (1 + a) / 0.9 crosses 1/2 at a = -0.55
    for entry, linear_gate, binary_gate in [(0.0, 1.0, 1.0), (-0.5, 5 / 9, 1.0), (-0.6, 4 / 9, 0.0), (-1.0, 0.0, 0.0)]:
        assert gates_of(linear, entry)[0] == pytest.approx(linear_gate)
        assert gates_of(binary, entry) == (binary_gate, 1.0, 1.0, 1.0)
    # with a floor the two gates are the floor and 1
    floored = AllocationSpec(min_layer_gate=0.2, gate_mapping="binary")
    assert gates_of(floored, -0.9)[0] == pytest.approx(0.2)
    assert gates_of(floored, -0.4)[0] == 1.0


def test_to_action_maps_a_gate_to_the_nearest_of_the_two_reachable_ones():
    spec = AllocationSpec(dead_zone=0.1, gate_mapping="binary")
    uniform = Allocation.uniform(spec)
    asked = Allocation(uniform.sample_shares, 1.0, (0.0, 0.3, 0.7, 1.0), uniform.steps)
    action = spec.to_action(asked)
    # the action of a rounded gate sits at its mapping's end (-1: frozen, 0: trained), not near 1/2
    assert action[spec.gate_entries].tolist() == [-1.0, -1.0, 0.0, 0.0]
    assert spec.to_allocation(action).layer_gates == (0.0, 0.0, 1.0, 1.0)


def test_a_binary_gate_below_one_half_freezes_the_group_for_the_whole_interval():
    def stem_trained(gate_mapping: str) -> bool:
        env = ComputeAllocationEnv(jobs=_OneCnn(), dead_zone=0.1, layer_lever="cnn-first-group", gate_mapping=gate_mapping)
        env.reset(seed=0)
        stem = weights(env.job.model[1])
        action = np.zeros(env.allocation_spec.action_size, dtype=np.float32)
        action[env.allocation_spec.gate_entries.start] = -0.6  # linear gate 4/9: a step trains it with that chance
        env.step(action)
        return not all(a.equal(b) for a, b in zip(stem, env.job.model[1].parameters()))

    assert stem_trained("linear")  # 10 steps at 4/9 each: the stem trains in some of them
    assert not stem_trained("binary")


def test_apply_and_evaluate_name_it():
    assert describe_policy(AllocatorPolicy.load(QUICK)._with_spec(gate_mapping="binary")) == [
        "layer gates freeze a group for the interval or train it at every step"
    ]


class _OneCnn:
    def sample(self, rng, spec):
        return make_job(budget_steps=60, model=small_cnn())
