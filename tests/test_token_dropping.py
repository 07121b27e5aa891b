"""Token dropping: transformer steps see part of the tokens early in the budget, at their reduced cost."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from allocator import AllocationSpec, run_job
from allocator.cli import main
from allocator.ensemble import PolicyEnsemble
from allocator.evaluation import evaluate, policy_with_token_dropping
from allocator.jobs.models import build_model
from allocator.policy import AllocatorPolicy
from allocator.token_dropping import TokenDropper, TokenDropping
from tests.conftest import make_job

QUICK = Path(__file__).resolve().parents[1] / "benchmarks" / "heldout-quick" / "policy"


def transformer_job(seed: int = 0, dropping=None, budget_steps: int = 40):
    model = build_model("transformer", (16,), 4, 16, 1, seed=seed)  # 16 tokens of one feature
    job = make_job(budget_steps=budget_steps, seed=seed, model=model, spec=AllocationSpec(max_steps=5))
    job.token_dropping = dropping
    return job


def test_settings_are_checked_and_read_in_every_form_users_write_them():
    assert TokenDropping.parse("0.5,0.25") == TokenDropping(0.5, 0.25)
    assert TokenDropping.from_value({"keep": 0.5, "until": 1}) == TokenDropping(0.5, 1.0)
    assert TokenDropping.from_value([0.75, 0.5]) == TokenDropping(0.75, 0.5)
    assert TokenDropping.from_value(None) is None
    for bad in ("0.5", "half,0.5", "1,0.5", "0.5,0"):
        with pytest.raises(ValueError, match="token dropping"):
            TokenDropping.parse(bad)
    with pytest.raises(ValueError, match="unknown token dropping field"):
        TokenDropping.from_value({"keep": 0.5, "until": 0.5, "layers": 2})


def test_the_spec_carries_it_through_policy_json_and_older_files_mean_off():
    spec = AllocationSpec(max_steps=20, token_dropping={"keep": 0.5, "until": 0.5})
    assert spec.token_dropping == TokenDropping(0.5, 0.5)
    assert spec.to_dict()["token_dropping"] == {"keep": 0.5, "until": 0.5}
    assert AllocationSpec.from_dict(spec.to_dict()) == spec
    assert "token_dropping" not in AllocationSpec().to_dict()  # absent unless set: files stay as they were
    assert AllocationSpec.from_dict({"max_steps": 20}).token_dropping is None


def test_a_reduced_forward_pass_sees_part_of_the_tokens_and_an_inactive_one_all_of_them():
    model = build_model("transformer", (16,), 4, 16, 1)
    dropper = TokenDropper(model, 0.5, torch.Generator().manual_seed(0))
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[1]))
    x = torch.randn(3, 16)
    model(x)
    dropper.draw()
    dropper.active = True
    model(x)
    model(x)  # the scoring and the training pass of one step keep the same positions
    first = dropper._index[16].clone()
    dropper.draw()
    model(x)
    assert seen == [16, 8, 8, 8]
    assert not torch.equal(first, dropper._index[16])  # each step draws anew
    assert not TokenDropper(build_model("mlp", (16,), 4, 16, 3), 0.5).applies


def test_the_early_steps_cost_less_so_the_budget_buys_more_of_them_and_the_late_ones_see_every_token():
    standard = run_job(transformer_job(), "uniform")
    half = transformer_job(dropping=TokenDropping(0.5, 0.5))
    assert half.drops_tokens
    dropped_half = run_job(half, "uniform")
    dropped_all = run_job(transformer_job(dropping=TokenDropping(0.5, 1.0)), "uniform")
    assert standard.steps == 40 < dropped_half.steps < dropped_all.steps
    for result in (dropped_half, dropped_all):
        assert result.budget == standard.budget and result.compute_used <= result.budget
    reduced = half._costs.step_flops(32, 32, (True,) * 4, reduced=True)
    assert 0.4 < reduced / half.uniform_step_flops < 0.75
    # after half the budget every step is a standard one: the intervals spend what standard ones do
    late = [i for i in dropped_half.intervals if i["compute_used_fraction"] > 0.5 + 0.2 and i["steps"] == 5]
    assert late and all(
        i["compute_fraction"] == pytest.approx(5 * half.uniform_step_flops / half.budget) for i in late
    )
    assert dropped_half.initial_val_loss == standard.initial_val_loss  # validation sees every token


def test_a_model_without_tokens_trains_as_before_and_the_setting_is_fixed_once_training_starts():
    plain = run_job(make_job(budget_steps=40), "uniform")
    job = make_job(budget_steps=40)
    job.token_dropping = TokenDropping(0.5, 0.5)
    assert not job.drops_tokens
    assert run_job(job, "uniform").curve == plain.curve
    started = transformer_job()
    started.advance(started.spec.to_allocation([0.0] * started.spec.action_size))
    with pytest.raises(RuntimeError, match="before the job's first interval"):
        started.token_dropping = TokenDropping()


def test_a_trained_policy_takes_it_without_retraining_and_sets_it_on_the_jobs_it_runs():
    policy = AllocatorPolicy.load(QUICK)
    dropping = policy.with_token_dropping(TokenDropping(0.5, 0.5))
    assert policy.spec.token_dropping is None  # the loaded policy is left as it was
    job = transformer_job(budget_steps=60)
    dropping.reset(job)
    assert job.token_dropping == TokenDropping(0.5, 0.5) and job.spec == dropping.spec
    report = evaluate(
        policy=policy_with_token_dropping(QUICK, TokenDropping(0.5, 0.5)),
        jobs={"tiny-transformer": lambda seed: transformer_job(seed, budget_steps=60)},
        seeds=1,
        baselines=["uniform"],
        progress=False,
    )
    runs = {run.controller: run.result for run in report.runs}
    # the baselines run without it: uniform takes its 60 standard steps, the policy's steps are cheaper
    assert runs["uniform"].steps == 60
    assert runs["policy"].compute_used / max(runs["policy"].steps, 1) < 0.8 * runs["uniform"].budget / 60


def test_a_policy_or_ensemble_saved_with_it_loads_with_it_and_acts_as_before(tmp_path):
    """with_token_dropping(...).save(dir) is how benchmarks/heldout-default/policy was written."""
    single = AllocatorPolicy.load(QUICK)
    ensemble = PolicyEnsemble([single, AllocatorPolicy.load(QUICK)])
    observation = np.random.default_rng(0).normal(size=single.job_observation_size).astype(np.float32)
    for name, policy in (("single", single), ("ensemble", ensemble)):
        saved = policy.with_token_dropping(TokenDropping(0.5, 0.5)).save(tmp_path / name)
        loaded = AllocatorPolicy.load(saved)
        assert loaded.spec.token_dropping == TokenDropping(0.5, 0.5), name
        assert loaded.spec == dataclasses.replace(policy.spec, token_dropping=TokenDropping(0.5, 0.5))
        np.testing.assert_array_equal(loaded.action(observation), policy.action(observation))
    assert [member.spec.token_dropping for member in AllocatorPolicy.load(tmp_path / "ensemble").members] == [
        TokenDropping(0.5, 0.5)
    ] * 2


def test_apply_says_so_when_the_policy_itself_drops_tokens(tmp_path, capsys):
    """The default preset's policy carries the setting in its spec; apply's header names it without the flag."""
    policy_dir = AllocatorPolicy.load(QUICK).with_token_dropping(TokenDropping(0.5, 0.5)).save(tmp_path / "policy")
    job_file = tmp_path / "job.py"
    job_file.write_text(
        "from tests.test_token_dropping import transformer_job\n\n\n"
        "def make_job(seed=0):\n    return transformer_job(seed, budget_steps=40)\n"
    )
    threads = torch.get_num_threads()
    try:
        argv = ["apply", "--policy", str(policy_dir), "--job", f"{job_file}:make_job", "--compare", "uniform"]
        assert main([*argv, "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1  # --threads 1: the numbers evaluate gives for this job and seed
    finally:
        torch.set_num_threads(threads)
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("(token dropping 0.5 of the tokens until 0.5 of the budget)"), header


def test_the_command_line_refuses_a_bad_setting_or_one_without_a_policy_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["evaluate", "--policy", str(QUICK), "--token-dropping", "1.5,0.5", "--out", str(tmp_path / "a")]
        )
    assert exit_info.value.code == 2
    assert "keep must be in (0, 1)" in capsys.readouterr().err
    assert main(["evaluate", "--token-dropping", "0.5,0.5", "--out", str(tmp_path / "b")]) != 0
    error = capsys.readouterr().err.strip()
    assert "give --policy too" in error and "Traceback" not in error and len(error.splitlines()) == 1


def test_each_interval_reports_the_share_of_tokens_its_steps_saw_and_tensorboard_charts_it(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_job(
        transformer_job(dropping=TokenDropping(0.5, 0.5)), "uniform", tensorboard_dir=tmp_path / "tb"
    )
    shares = [interval["token_share"] for interval in result.intervals]
    assert shares[0] == 0.5 and shares[-1] == 1.0  # half the tokens early, all of them late
    assert all(0.5 <= share <= 1.0 for share in shares) and shares == sorted(shares)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("allocation/token_share")] == pytest.approx(shares)
    plain = run_job(transformer_job(), "uniform", tensorboard_dir=tmp_path / "plain")
    assert {interval["token_share"] for interval in plain.intervals} == {1.0}
    events = EventAccumulator(str(tmp_path / "plain"))
    events.Reload()
    assert "allocation/token_share" not in events.Tags()["scalars"]  # no chart where nothing was dropped


def test_a_training_configuration_records_it_in_the_spec_and_the_env_sets_it_on_every_job():
    import yaml

    from agents.config import TrainConfig
    from agents.training import allocation_spec, env_kwargs
    from envs.compute_allocation import ComputeAllocationEnv

    config = TrainConfig().updated({"env": {"token_dropping": [0.5, 0.5]}}, "test").validate("test")
    assert allocation_spec(config).token_dropping == TokenDropping(0.5, 0.5)
    assert TrainConfig().updated(yaml.safe_load(config.to_yaml()), "x") == config  # config.yaml round trip
    with pytest.raises(ValueError, match="env.token_dropping"):
        TrainConfig().updated({"env": {"token_dropping": [2, 0.5]}}, "test").validate("test")
    env = ComputeAllocationEnv(**{**env_kwargs(config), "job_pool": 2})
    env.reset(seed=0, options={"job": transformer_job()})
    assert env.job.token_dropping == TokenDropping(0.5, 0.5) and env.job.drops_tokens
    env.close()
