"""The first layer group frozen on convolutional jobs: a rule of a policy, like token dropping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from allocator import AllocationSpec, AllocatorPolicy, run_job
from allocator.allocation import Allocation
from allocator.cli import main
from allocator.ensemble import PolicyEnsemble
from tests.conftest import make_job

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "benchmarks" / "heldout-quick" / "policy"
LEARNED_FREEZE = ROOT / "benchmarks" / "heldout-learned-freeze" / "policy"


def small_cnn(seed: int = 0) -> nn.Sequential:
    """A 1-D CNN on the conftest task's 16 features: one module per layer group (G = 4)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Unflatten(1, (1, 16)), nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 12, 16), nn.ReLU(), nn.Linear(16, 4),
    )


def weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_a_cnn_job_with_the_rule_never_trains_its_first_group_and_says_so():
    job = make_job(budget_steps=60, model=small_cnn())
    job.freeze_cnn_first_group = True
    assert job.freezes_cnn_first_group
    first, second = weights(job.model[1]), weights(job.model[3])
    report = job.advance(Allocation.uniform(job.spec))
    assert report.allocation.layer_gates[0] == 0.0 and report.allocation.layer_gates[1:] == (1.0,) * 3
    assert all(torch.equal(a, b) for a, b in zip(first, job.model[1].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(second, job.model[3].parameters()))
    # a frozen stem has no backward pass: the same steps cost less than standard training's
    plain = make_job(budget_steps=60, model=small_cnn())
    assert report.compute < plain.advance(Allocation.uniform(plain.spec)).compute


def test_the_rule_changes_nothing_on_a_model_without_a_convolution():
    job = make_job(budget_steps=60)
    job.freeze_cnn_first_group = True
    assert not job.freezes_cnn_first_group
    assert run_job(job, "uniform").curve == run_job(make_job(budget_steps=60), "uniform").curve


def test_a_policy_sets_the_rule_from_its_spec_and_keeps_it_when_saved(tmp_path):
    quick = AllocatorPolicy.load(QUICK)
    assert not quick.spec.freeze_cnn_first_group
    frozen = quick.with_cnn_first_group_frozen()
    assert frozen.spec.freeze_cnn_first_group and not quick.spec.freeze_cnn_first_group  # a copy
    job = make_job(budget_steps=40, model=small_cnn())
    frozen.reset(job)
    assert job.freeze_cnn_first_group
    quick.reset(job)
    assert not job.freeze_cnn_first_group
    # saved and loaded, for one policy and an ensemble (whose members carry it too)
    for name, policy in (("single", frozen), ("ensemble", PolicyEnsemble([quick, quick]).with_cnn_first_group_frozen())):
        loaded = AllocatorPolicy.load(policy.save(tmp_path / name))
        assert loaded.spec.freeze_cnn_first_group, name
        assert json.loads((tmp_path / name / "policy.json").read_text())["spec"]["freeze_cnn_first_group"] is True
    assert all(m.spec.freeze_cnn_first_group for m in AllocatorPolicy.load(tmp_path / "ensemble").members)
    with pytest.raises(ValueError, match="frozen must be true or false"):
        quick.with_cnn_first_group_frozen("yes")
    # members must agree on it, and the refusal says where the setting belongs
    with pytest.raises(ValueError, match=r"freeze_cnn_first_group True against False; .*--freeze-cnn-first-group"):
        PolicyEnsemble([quick, frozen])


def test_the_spec_writes_the_rule_only_when_set_and_refuses_a_non_boolean():
    assert "freeze_cnn_first_group" not in AllocationSpec().to_dict()  # old policy.json files read as before
    spec = AllocationSpec(freeze_cnn_first_group=True)
    assert AllocationSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="freeze_cnn_first_group must be true or false"):
        AllocationSpec(freeze_cnn_first_group="yes")


def test_evaluate_and_apply_take_the_flag_and_apply_names_it(tmp_path, capsys):
    job_file = tmp_path / "job.py"
    job_file.write_text(
        "from tests.conftest import make_job as tiny\nfrom tests.test_cnn_freezing import small_cnn\n\n\n"
        "def make_job(seed=0):\n    return tiny(budget_steps=40, seed=seed, model=small_cnn(seed))\n"
    )
    argv = ["apply", "--policy", str(QUICK), "--job", f"{job_file}:make_job", "--freeze-cnn-first-group"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("(first layer group frozen on CNNs)")
    # evaluate's results.md says which rules the policy ran with
    out = tmp_path / "eval"
    argv = ["evaluate", "--policy", str(QUICK), "--jobs", f"{job_file}:make_job", "--seeds", "1"]
    assert main([*argv, "--baselines", "uniform", "--freeze-cnn-first-group", "--out", str(out)]) == 0
    assert "- **Policy**: first layer group frozen on CNNs (the baselines run without its rules)." in (
        (out / "results.md").read_text()
    )
    # a rule of a policy: without one it is refused in one line
    for command in (["evaluate", "--out", str(tmp_path / "e")], ["apply", "--job", f"{job_file}:make_job"]):
        for flag in (["--freeze-cnn-first-group"], ["--token-dropping", "0.5,0.5"]):
            assert main([*command, *flag]) != 0, (command, flag)
            error = capsys.readouterr().err.strip()
            assert "give --policy too" in error and len(error.splitlines()) == 1, (command, flag)


def test_the_training_envs_do_not_run_the_rule_but_the_exported_spec_carries_it():
    from agents.config import load_preset
    from agents.training import allocation_spec, env_kwargs

    config = load_preset("default")
    assert config.env.freeze_cnn_first_group
    assert allocation_spec(config).freeze_cnn_first_group  # the exported policy's spec
    assert "freeze_cnn_first_group" not in env_kwargs(config)  # what the members learn is unchanged


def trained_gates(job, policy) -> list[list[float]]:
    """The layer gates of each interval that trained (a stop's interval of 0 steps reports none)."""
    return [i["allocation"]["layer_gates"] for i in run_job(job, policy).intervals if i["steps"] > 0]


def test_the_published_learned_freeze_policy_freezes_a_cnns_first_group_by_its_own_action():
    """No hand-set rule: its layer-gate entry, decided on the first interval, freezes the stem.

    The published `quick` (no layer lever) trains every group of the same CNN, and the
    learned-freeze policy trains every group of an MLP (its gate acts on CNNs only).
    """
    learned = AllocatorPolicy.load(LEARNED_FREEZE)
    assert not learned.spec.freeze_cnn_first_group
    assert (learned.spec.layer_lever, learned.spec.gate_decision) == ("cnn-first-group", "job")
    gates = trained_gates(make_job(budget_steps=200, model=small_cnn()), learned)
    assert len(gates) > 1 and all(g == [0.0, 1.0, 1.0, 1.0] for g in gates)
    quick = AllocatorPolicy.load(QUICK)
    assert all(g == [1.0] * 4 for g in trained_gates(make_job(budget_steps=200, model=small_cnn()), quick))
    assert all(g == [1.0] * 4 for g in trained_gates(make_job(budget_steps=200), learned))
