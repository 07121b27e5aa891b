"""Every path that runs a policy on a job runs it with the same spec and rules.

Three paths run a policy: the training env (PPO's episodes), an applied
:class:`AllocatorPolicy` (``apply``, ``evaluate``) and training's evaluations of
the live agent (``SB3Controller``: the ``eval/`` monitor on held-out jobs and the
``validation/`` jobs that choose the exported checkpoint). All three go through
``allocator.policy.use_policy_spec``. Until they did, the live agent's
evaluations set the spec alone, so a policy trained with ``layer_lever:
cnn-first-group`` had its untrained later gates act on MLPs there and froze
whole models (BENCHMARKS.md section 5, thirty-fifth round).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.callbacks import HeldOutEvaluation, SB3Controller
from allocator import AllocatorPolicy
from allocator.allocation import Allocation
from allocator.objective import Objective
from allocator.runner import run_job
from envs.compute_allocation import ComputeAllocationEnv
from tests.conftest import make_job, make_overfitting_job
from tests.test_cnn_freezing import QUICK, trained_gates

RULES = (
    "selection_gate", "stop_before_budget", "share_prior", "token_dropping", "freeze_cnn_first_group", "layer_lever",
    "gate_decision",
)
TRAINED_WITH = dict(
    dead_zone=0.1,
    min_layer_gate=0.0,
    selection_gate=0.7,
    stop_before_budget=True,
    share_prior="loss",
    token_dropping=(0.5, 0.5),
    layer_lever="cnn-first-group",
    gate_mapping="binary",
    gate_decision="job",
)


def rules_of(job) -> dict:
    return {name: getattr(job, name) for name in RULES}


class _OneJob:
    def sample(self, rng, spec):
        return make_job(budget_steps=40)


class _Asks:
    """A stand-in for an SB3 model that always asks for one action."""

    def __init__(self, action: np.ndarray) -> None:
        self.action = action

    def predict(self, observation, deterministic=True):
        return self.action, None


def test_the_env_an_applied_policy_and_the_live_agents_evaluation_set_the_same_rules():
    env = ComputeAllocationEnv(jobs=_OneJob(), **TRAINED_WITH)
    env.reset(seed=0)
    trained = rules_of(env.job)
    spec = env.allocation_spec
    assert trained["layer_lever"] == "cnn-first-group" and trained["selection_gate"] == 0.7
    assert trained["stop_before_budget"] and trained["share_prior"] == "loss" and trained["gate_decision"] == "job"
    assert trained["token_dropping"] == spec.token_dropping is not None

    evaluated = make_job(budget_steps=40)
    SB3Controller(_Asks(spec.to_action(Allocation.uniform(spec))), None, spec, selection_gate=0.7).reset(evaluated)
    assert rules_of(evaluated) == trained

    quick = AllocatorPolicy.load(QUICK)
    assert quick.selection_gate == 0.7  # e27 was trained with the gate at 0.7
    changes = {name: spec.__dict__[name] for name in ("stop_before_budget", "share_prior", "token_dropping", "layer_lever", "gate_decision")}
    applied = make_job(budget_steps=40)
    quick._with_spec(**changes).reset(applied)
    assert rules_of(applied) == trained


def test_the_live_agents_evaluation_runs_the_exported_policys_deploy_rule_too():
    spec = dataclasses.replace(ComputeAllocationEnv(jobs=_OneJob(), **TRAINED_WITH).allocation_spec, freeze_cnn_first_group=True)
    evaluated, applied = make_job(budget_steps=40), make_job(budget_steps=40)
    SB3Controller(_Asks(spec.to_action(Allocation.uniform(spec))), None, spec, selection_gate=0.7).reset(evaluated)
    AllocatorPolicy.load(QUICK)._with_spec(**{name: getattr(spec, name) for name in RULES[1:]}).reset(applied)
    assert evaluated.freeze_cnn_first_group and rules_of(evaluated) == rules_of(applied)


def test_a_gate_the_lever_keeps_closed_does_not_freeze_an_mlp_in_the_live_agents_evaluation():
    spec = ComputeAllocationEnv(jobs=_OneJob(), **TRAINED_WITH).allocation_spec
    uniform = Allocation.uniform(spec)
    every_gate_shut = spec.to_action(Allocation(uniform.sample_shares, 1.0, (0.0,) * 4, spec.max_steps))
    assert spec.to_allocation(every_gate_shut).layer_gates == (0.0,) * 4  # what the action asks for
    evaluation = HeldOutEvaluation(
        lambda index: make_job(budget_steps=40, seed=index), 2, spec, Objective(), selection_gate=0.7
    )
    scalars = evaluation.run(_Asks(every_gate_shut), None)
    # the MLPs trained every layer group, as in the env: their loss fell from its start
    # (with every group frozen it stays exactly there)
    initial = np.mean([result.initial_val_loss for result in evaluation.uniform_results()])
    assert scalars["eval/final_val_loss_policy"] < initial - 0.01
    controller = SB3Controller(_Asks(every_gate_shut), None, spec, selection_gate=0.7)
    assert {tuple(gates) for gates in trained_gates(make_job(budget_steps=40), controller)} == {(1.0,) * 4}


def test_the_live_agents_evaluation_compares_it_with_early_stopping_run_once_per_job():
    spec = ComputeAllocationEnv(jobs=_OneJob(), **TRAINED_WITH).allocation_spec
    evaluation = HeldOutEvaluation(make_overfitting_job, 2, spec, Objective())
    standard = _Asks(spec.to_action(Allocation.uniform(spec)))
    first = evaluation.run(standard, None)
    early = evaluation.baseline_results("early-stopping")
    assert all(result.stopped for result in early)  # so it is not uniform under another name
    for index, result in enumerate(early):  # what evaluate's early-stopping row reads, job by job
        job = make_overfitting_job(seed=index)
        job.use_spec(spec)
        assert result.objective == run_job(job, "early-stopping").objective
    assert first["eval/J_early_stopping"] == pytest.approx(np.mean([r.objective for r in early]))
    policy = [run_job(make_overfitting_job(seed=i), SB3Controller(standard, None, spec)) for i in range(2)]
    assert first["eval/wins_over_early_stopping"] == sum(p.objective < e.objective for p, e in zip(policy, early))
    evaluation.run(standard, None)
    assert evaluation.baseline_results("early-stopping") is early  # kept, not run again
