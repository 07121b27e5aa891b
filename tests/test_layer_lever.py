"""The layer lever opened on convolutional jobs only (``layer_lever: convolutional``).

A training choice, unlike the CNN rule of tests/test_cnn_freezing.py: the envs run it,
so a policy learns its layer gates on CNNs while every other job trains each layer
group at every step, whatever the action's gates.
"""

from __future__ import annotations

import numpy as np

from allocator import AllocationSpec, AllocatorPolicy
from allocator.allocation import Allocation
from allocator.evaluation import describe_policy
from envs.compute_allocation import ComputeAllocationEnv
from tests.conftest import make_job
from tests.test_cnn_freezing import QUICK, small_cnn, weights

FROZEN_FIRST = (0.0, 1.0, 1.0, 1.0)


def first_group_frozen(spec: AllocationSpec) -> Allocation:
    uniform = Allocation.uniform(spec)
    return Allocation(uniform.sample_shares, uniform.keep_fraction, FROZEN_FIRST, uniform.steps)


def test_on_a_model_without_a_convolution_the_gates_are_shut_and_reported_so():
    job = make_job(budget_steps=60)
    job.layer_lever = "convolutional"
    assert job.layer_gates_closed
    report = job.advance(first_group_frozen(job.spec))
    assert report.allocation.layer_gates == (1.0,) * 4
    # exactly standard training: the same interval as the uniform allocation's
    plain = make_job(budget_steps=60)
    same = plain.advance(Allocation.uniform(plain.spec))
    assert (report.compute, report.train_loss) == (same.compute, same.train_loss)
    assert np.array_equal(job.observation(), plain.observation())


def test_on_a_cnn_the_gates_act_as_with_the_lever_open_everywhere():
    job = make_job(budget_steps=60, model=small_cnn())
    job.layer_lever = "convolutional"
    assert not job.layer_gates_closed
    stem = weights(job.model[1])
    report = job.advance(first_group_frozen(job.spec))
    assert report.allocation.layer_gates == FROZEN_FIRST
    assert all(a.equal(b) for a, b in zip(stem, job.model[1].parameters()))
    everywhere = make_job(budget_steps=60, model=small_cnn())  # layer_lever "all", the default
    assert report.compute == everywhere.advance(first_group_frozen(everywhere.spec)).compute


def test_cnn_first_group_lever_lets_only_the_first_gate_act_and_only_on_cnns():
    every_gate_shut = (0.0, 0.0, 0.0, 0.0)
    cnn = make_job(budget_steps=60, model=small_cnn())
    cnn.layer_lever = "cnn-first-group"
    uniform = Allocation.uniform(cnn.spec)
    report = cnn.advance(Allocation(uniform.sample_shares, 1.0, every_gate_shut, uniform.steps))
    assert report.allocation.layer_gates == FROZEN_FIRST  # the later groups trained anyway
    frozen_first = make_job(budget_steps=60, model=small_cnn())
    assert report.compute == frozen_first.advance(first_group_frozen(frozen_first.spec)).compute
    mlp = make_job(budget_steps=60)
    mlp.layer_lever = "cnn-first-group"
    assert mlp.layer_gates_closed
    assert mlp.advance(first_group_frozen(mlp.spec)).allocation.layer_gates == (1.0,) * 4
    assert describe_policy(AllocatorPolicy.load(QUICK)._with_spec(layer_lever="cnn-first-group")) == [
        "only the first layer gate acts, on CNNs only"
    ]


def test_a_policy_trained_with_it_sets_it_on_the_jobs_it_runs_and_says_so():
    quick = AllocatorPolicy.load(QUICK)
    job = make_job(budget_steps=40)
    quick._with_spec(layer_lever="convolutional").reset(job)
    assert job.layer_lever == "convolutional"
    quick.reset(job)
    assert job.layer_lever == "all"
    # apply's header and evaluate's results.md say so
    assert describe_policy(quick._with_spec(layer_lever="convolutional")) == ["layer gates act on CNNs only"]
    assert describe_policy(quick) == []


def test_the_env_runs_it_on_the_jobs_it_trains_on():
    env = ComputeAllocationEnv(jobs=_OneJob(), min_layer_gate=0.0, layer_lever="convolutional")
    env.reset(seed=0)
    assert env.job.layer_lever == "convolutional"
    action = env.allocation_spec.to_action(first_group_frozen(env.allocation_spec))
    assert env.allocation_spec.to_allocation(action).layer_gates == FROZEN_FIRST  # what the action asks for
    observation, *_ = env.step(action)
    # what the job ran, and what the policy sees next: every group trained
    gates = env.layout.layer_group_features(observation)[:, env.layout.layer_index("previous_gate")]
    assert gates.tolist() == [1.0] * 4


class _OneJob:
    def sample(self, rng, spec):
        return make_job(budget_steps=40)


def test_tensorboard_charts_the_gate_asked_on_the_jobs_that_ran_it_apart_from_the_rest():
    from agents.callbacks import _EpisodeAllocation

    def episode_scalars(layer_lever: str, model=None) -> dict:
        env = ComputeAllocationEnv(jobs=_OneJob(), min_layer_gate=0.0, layer_lever=layer_lever)
        env.reset(seed=0, options={"job": make_job(budget_steps=40, model=model)})
        action = env.allocation_spec.to_action(first_group_frozen(env.allocation_spec))
        episode, done = _EpisodeAllocation(), False
        while not done:
            *_, done, _, info = env.step(action)
            episode.add(info)
        return episode.summary(info)

    cnn = episode_scalars("cnn-first-group", small_cnn())
    assert cnn["allocation/acting_layer_gate_0"] == cnn["allocation/layer_gate_0"] == 0.0
    assert "allocation/acting_layer_gate_1" not in cnn  # the lever runs the later gates at 1
    mlp = episode_scalars("cnn-first-group")
    assert mlp["allocation/layer_gate_0"] == 0.0  # asked for, not run
    assert not any(tag.startswith("allocation/acting_") for tag in mlp)
    # with the lever open everywhere every gate acts on every job: nothing to tell apart
    assert not any(tag.startswith("allocation/acting_") for tag in episode_scalars("all", small_cnn()))
