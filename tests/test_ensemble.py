"""Policy ensembles: several trained policies acting with the mean of their actions, in the safe format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from allocator import AllocationSpec, AllocatorPolicy, run_job
from allocator.allocation import STOP_BELOW
from allocator.cli import main
from allocator.ensemble import PolicyEnsemble
from allocator.evaluation import evaluate
from tests.conftest import make_job

ROOT = Path(__file__).resolve().parents[1]
# Two genuinely trained policies of the same spec, shipped with the repository.
QUICK = ROOT / "benchmarks" / "heldout-quick-v1" / "policy"
DEFAULT = ROOT / "benchmarks" / "heldout-default-v1" / "policy"


def observations(policy: AllocatorPolicy, count: int = 4) -> list[np.ndarray]:
    """Raw observations of a real job trained under ``policy``, one per interval."""
    job = make_job(budget_steps=200)
    policy.reset(job)
    seen = []
    for _ in range(count):
        observation = job.observation()
        seen.append(observation)
        job.advance(policy.act(observation))
    return seen


def always_stopping(policy: AllocatorPolicy) -> AllocatorPolicy:
    """``policy`` with its steps output pinned deep in the stop region: it stops every job at once."""
    return pinned_steps(policy, -10.0, name="stopper")


def pinned_steps(policy: AllocatorPolicy, bias: float, name: str = "pinned") -> AllocatorPolicy:
    """``policy`` (an attention actor) with its steps output pinned at ``bias``: -10 always stops, +10 never."""
    tensors = policy.tensors()
    tensors["actor.global_output.weight"][1] = 0.0
    tensors["actor.global_output.bias"][1] = bias
    return AllocatorPolicy.from_parts(policy.metadata, tensors, where="test", weights="test", name=name)


def test_an_ensemble_acts_with_the_mean_of_its_members_actions():
    quick, default = AllocatorPolicy.load(QUICK), AllocatorPolicy.load(DEFAULT)
    ensemble = PolicyEnsemble([quick, default])
    for observation in observations(quick):
        expected = (quick.action(observation) + default.action(observation)) / 2
        np.testing.assert_allclose(ensemble.action(observation), expected, rtol=0, atol=1e-7)
        assert ensemble.act(observation) == ensemble.spec.to_allocation(ensemble.action(observation))
    batch = np.stack(observations(quick))
    np.testing.assert_allclose(
        ensemble.action(batch), (quick.action(batch) + default.action(batch)) / 2, atol=1e-7
    )


def test_a_saved_ensemble_loads_with_allocator_policy_load_and_acts_the_same(tmp_path):
    ensemble = PolicyEnsemble.from_directories([QUICK, DEFAULT])
    directory = ensemble.save(tmp_path / "ensemble")
    assert sorted(p.name for p in directory.iterdir()) == ["policy.json", "policy.safetensors"]
    loaded = AllocatorPolicy.load(directory)
    assert isinstance(loaded, PolicyEnsemble) and len(loaded.members) == 2
    assert loaded.kind == "ensemble" and loaded.spec == ensemble.spec
    for observation in observations(ensemble):
        np.testing.assert_array_equal(loaded.action(observation), ensemble.action(observation))
    # what each member was trained with stays readable in policy.json
    metadata = json.loads((directory / "policy.json").read_text())
    assert [m["kind"] for m in metadata["members"]] == ["attention", "attention"]
    assert metadata["extra"]["members"] == ["policy:policy", "policy:policy"]


def test_an_ensemble_of_one_policy_twice_trains_a_job_exactly_like_that_policy():
    policy = AllocatorPolicy.load(QUICK)
    alone = run_job(make_job(budget_steps=120), policy)
    doubled = run_job(make_job(budget_steps=120), PolicyEnsemble([policy, policy]))
    assert doubled.curve == alone.curve
    assert doubled.objective == alone.objective


def test_one_member_alone_cannot_stop_a_job_the_others_run_on():
    quick, default = AllocatorPolicy.load(QUICK), AllocatorPolicy.load(DEFAULT)
    stopper = always_stopping(quick)
    first = observations(quick, count=1)[0]
    assert stopper.act(first).steps == 0 and quick.act(first).steps > 0 and default.act(first).steps > 0

    assert run_job(make_job(budget_steps=120), stopper).compute_fraction == 0.0
    outvoted = run_job(make_job(budget_steps=120), PolicyEnsemble([stopper, quick, default]))
    assert outvoted.compute_fraction > 0.5
    # ... while two of three stopping members do stop it: the mean lands in the stop region
    majority = PolicyEnsemble([stopper, stopper, quick])
    assert majority.action(first)[-1] < STOP_BELOW
    assert run_job(make_job(budget_steps=120), majority).compute_fraction == 0.0


def test_a_median_ensemble_ignores_one_member_far_from_the_others(tmp_path, capsys):
    quick, default = AllocatorPolicy.load(QUICK), AllocatorPolicy.load(DEFAULT)
    stopper = always_stopping(quick)
    median = PolicyEnsemble([quick, stopper, quick], combine="median-action")
    for observation in observations(quick):
        # entry by entry the middle of three: the action of the two that agree, exactly
        np.testing.assert_array_equal(median.action(observation), quick.action(observation))
    first = observations(quick, count=1)[0]
    mean = PolicyEnsemble([quick, stopper, quick])
    assert not np.array_equal(mean.action(first), quick.action(first))  # the mean is pulled by it
    trio = PolicyEnsemble([stopper, quick, default], combine="median-action")
    np.testing.assert_array_equal(
        trio.action(first), np.median([stopper.action(first), quick.action(first), default.action(first)], axis=0)
    )

    # the combine rule is saved and read back; the command takes --combine
    out = tmp_path / "median"
    assert main(["ensemble", "--combine", "median", "--out", str(out), str(QUICK), str(DEFAULT), str(QUICK)]) == 0
    assert "median-action" in capsys.readouterr().out
    assert json.loads((out / "policy.json").read_text())["combine"] == "median-action"
    loaded = AllocatorPolicy.load(out)
    assert loaded.combine == "median-action"
    np.testing.assert_array_equal(loaded.action(first), quick.action(first))
    with pytest.raises(ValueError, match="unknown combine 'max'"):
        PolicyEnsemble([quick, default], combine="max")
    metadata = json.loads((out / "policy.json").read_text())
    (out / "policy.json").write_text(json.dumps(dict(metadata, combine=["median-action"])))
    with pytest.raises(ValueError, match=r"unknown 'combine' \['median-action'\]"):
        AllocatorPolicy.load(out)


def test_a_unanimous_stop_ensemble_stops_a_job_only_when_every_member_would(tmp_path, capsys):
    quick, default = AllocatorPolicy.load(QUICK), AllocatorPolicy.load(DEFAULT)
    stopper = always_stopping(quick)
    first = observations(quick, count=1)[0]
    # two of three stop: the mean ensemble stops, the unanimous one runs the interval quick would
    majority = PolicyEnsemble([stopper, stopper, quick])
    patient = PolicyEnsemble([stopper, stopper, quick], combine="unanimous-stop")
    assert majority.act(first).steps == 0
    np.testing.assert_allclose(patient.action(first)[:-1], majority.action(first)[:-1], atol=1e-7)
    np.testing.assert_allclose(patient.action(first)[-1], quick.action(first)[-1], atol=1e-7)
    assert patient.act(first).steps == quick.act(first).steps > 0
    assert run_job(make_job(budget_steps=120), majority).compute_fraction == 0.0
    assert run_job(make_job(budget_steps=120), patient).compute_fraction > 0.5
    # every member stopping stops it; where the mean goes on, the rule is the plain mean
    assert PolicyEnsemble([stopper, stopper], combine="unanimous-stop").act(first).steps == 0
    for observation in observations(quick):
        np.testing.assert_allclose(
            PolicyEnsemble([quick, default], combine="unanimous-stop").action(observation),
            PolicyEnsemble([quick, default]).action(observation),
            atol=1e-7,
        )
    batch = np.stack([first, first])  # batched observations are combined row by row
    np.testing.assert_allclose(patient.action(batch), np.stack([patient.action(first)] * 2), atol=1e-7)

    out = tmp_path / "unanimous"
    assert main(["ensemble", "--combine", "unanimous-stop", "--out", str(out), str(QUICK), str(DEFAULT)]) == 0
    assert "unanimous-stop" in capsys.readouterr().out
    assert AllocatorPolicy.load(out).combine == "unanimous-stop"


def argv_rules(policy, job_file) -> list[str]:
    return ["apply", "--policy", str(policy), "--job", f"{job_file}:make_job", "--compare", "uniform"]


def test_apply_names_the_ensemble_and_its_rule_in_its_header(tmp_path, capsys):
    out = tmp_path / "unanimous"
    assert main(["ensemble", "--combine", "unanimous-stop", "--out", str(out), str(QUICK), str(DEFAULT)]) == 0
    job_file = tmp_path / "job.py"
    job_file.write_text(
        "from tests.conftest import make_job as tiny\n\n\ndef make_job(seed=0):\n"
        "    return tiny(budget_steps=40, seed=seed)\n"
    )
    capsys.readouterr()
    assert main(argv_rules(out, job_file)) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith(f"under policy {out} (an ensemble of 2, unanimous-stop)"), header
    # the rules a policy carries are named with it, after the ensemble
    assert main([*argv_rules(out, job_file), "--token-dropping", "0.5,0.5", "--freeze-cnn-first-group"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(
        "(an ensemble of 2, unanimous-stop; token dropping 0.5 of the tokens until 0.5 of the budget; "
        "first layer group frozen on CNNs)"
    )
    # a single policy's header says nothing of the kind
    assert main(["apply", "--policy", str(QUICK), "--job", f"{job_file}:make_job"]) == 0
    assert "(an ensemble" not in capsys.readouterr().out.splitlines()[0]


def test_members_must_share_the_spec_and_an_ensemble_needs_two_single_policies():
    quick = AllocatorPolicy.load(QUICK)
    other_spec = dict(quick.metadata, spec=AllocationSpec(4, 4, 10).to_dict())
    shorter = AllocatorPolicy.from_parts(
        other_spec, quick.tensors(), where="test", weights="test", name="short"
    )
    with pytest.raises(ValueError, match=r"short differs from .* in its allocation spec: max_steps 10 against 20;"):
        PolicyEnsemble([quick, shorter])
    # a member with token dropping set: the message names it and says where the setting belongs
    dropping = quick.with_token_dropping((0.5, 0.5))
    with pytest.raises(ValueError, match=r"token_dropping 0.5 of the tokens until 0.5 of the budget against off; .*--token-dropping"):
        PolicyEnsemble([quick, dropping])
    with pytest.raises(ValueError, match="at least 2 policies"):
        PolicyEnsemble([quick])
    with pytest.raises(ValueError, match="already an ensemble"):
        PolicyEnsemble([PolicyEnsemble([quick, quick]), quick])
    with pytest.raises(TypeError, match="its own statistics"):
        PolicyEnsemble([quick, quick]).normalize(np.zeros(quick.observation_size))


def test_a_damaged_ensemble_file_is_refused_with_a_message(tmp_path):
    directory = PolicyEnsemble.from_directories([QUICK, DEFAULT]).save(tmp_path / "ensemble")
    weights = directory / "policy.safetensors"
    tensors = load_file(weights)
    del tensors["members.1.actor.context.bias"]
    tensors["members.7.actor.context.bias"] = torch.zeros(64)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"unexpected tensor 'members.7.actor.context.bias'"):
        AllocatorPolicy.load(directory)
    tensors.pop("members.7.actor.context.bias")
    save_file(tensors, weights)
    with pytest.raises(
        ValueError, match=r"\(member 1\) does not match .*missing tensor\(s\) \['actor.context.bias'\]"
    ):
        AllocatorPolicy.load(directory)


def test_the_ensemble_command_writes_a_policy_that_evaluate_reads(tmp_path, capsys):
    out = tmp_path / "ensemble"
    assert main(["ensemble", "--out", str(out), str(QUICK), str(DEFAULT)]) == 0
    assert "2 members" in capsys.readouterr().out
    report = evaluate(
        out, split=None, jobs={"tiny": lambda seed: make_job(seed=seed)}, seeds=1, baselines=["uniform"]
    )
    assert report.controllers == ["policy", "uniform"]
    assert report.run("tiny", 0, "policy").result.compute_used > 0

    # never overwrites a policy; bad input is one line on stderr
    assert main(["ensemble", "--out", str(out), str(QUICK), str(DEFAULT)]) == 2
    assert "already holds a policy" in capsys.readouterr().err
    assert main(["ensemble", "--out", str(tmp_path / "one"), str(QUICK)]) == 2
    assert "at least 2 policy directories" in capsys.readouterr().err
    assert main(["ensemble", "--out", str(tmp_path / "bad"), str(QUICK), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_published_quick_ensemble_loads_as_four_attention_members_and_trains_a_job():
    """The ensemble behind BENCHMARKS.md section 4 (four `quick` seeds) still loads and acts."""
    ensemble = AllocatorPolicy.load(ROOT / "benchmarks" / "heldout-quick-ensemble" / "policy")
    assert isinstance(ensemble, PolicyEnsemble)
    assert [member.kind for member in ensemble.members] == ["attention"] * 4
    assert [member.metadata["extra"]["seed"] for member in ensemble.members] == [0, 1, 2, 3]
    result = run_job(make_job(budget_steps=40), ensemble)
    assert np.isfinite(result.objective)


def test_the_published_default_is_four_quick_seeds_with_token_dropping_and_sets_it_on_its_jobs():
    """benchmarks/heldout-default/policy: what `train --preset default` makes (section 5, twenty-sixth round)."""
    from allocator.token_dropping import TokenDropping

    ensemble = AllocatorPolicy.load(ROOT / "benchmarks" / "heldout-default" / "policy")
    assert isinstance(ensemble, PolicyEnsemble)
    assert [member.metadata["extra"]["seed"] for member in ensemble.members] == [0, 1, 2, 3]
    assert ensemble.spec.token_dropping == TokenDropping(0.5, 0.5)
    assert ensemble.spec.freeze_cnn_first_group  # twenty-eighth round
    # its last member is the published quick policy, acting exactly as it does
    quick = AllocatorPolicy.load(ROOT / "benchmarks" / "heldout-quick" / "policy")
    job = make_job(budget_steps=40)
    ensemble.reset(job)
    assert job.token_dropping == TokenDropping(0.5, 0.5) and job.freeze_cnn_first_group
    observation = job.observation()
    np.testing.assert_array_equal(ensemble.members[3].action(observation), quick.action(observation))
    assert np.isfinite(run_job(make_job(budget_steps=40), ensemble).objective)
