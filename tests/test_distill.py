"""Distillation: one actor trained to give a teacher policy's actions, in the safe policy format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from agents.config import recorded_config
from agents.distill import DistillSettings, distill, episode_env_kwargs, run_episode
from allocator import AllocatorPolicy
from allocator.cli import main
from allocator.ensemble import PolicyEnsemble
from tests.test_ensemble import DEFAULT, QUICK, observations

# Each episode is a real training job of the quick preset's distribution (about 2 s on one core).
FEW = DistillSettings(rounds=2, episodes=2, epochs=60, workers=1)


@pytest.fixture(scope="module")
def distilled():
    """A student of the shipped quick policy: two rounds, two jobs each."""
    return distill(QUICK, FEW)


def test_the_student_acts_as_the_teacher_on_a_job_it_never_saw(distilled):
    student, _ = distilled
    teacher = AllocatorPolicy.load(QUICK)
    kwargs = episode_env_kwargs(recorded_config(teacher))
    unseen = run_episode((kwargs, 0, 10_000, str(QUICK), None))  # a seed no round drew: new job, new data
    labels = unseen.teacher_actions
    error = np.mean((student.action(unseen.observations) - labels) ** 2)
    assert error < 0.25 * np.mean(labels**2)  # the zero action (standard training) as the yardstick


def test_the_student_is_an_ordinary_policy_directory(distilled, tmp_path):
    student, _ = distilled
    directory = student.save(tmp_path / "student")
    config = json.loads((directory / "policy.json").read_text())
    assert config["kind"] == "attention"
    assert config["normalization"]["observation"] is True
    assert config["extra"]["distilled_from"] == AllocatorPolicy.load(QUICK).name
    # its teacher predates selection_alignment; the student learnt from today's observations
    assert config["observation"]["features"]["global"][-1] == "selection_alignment"
    assert [r["actor"] for r in config["extra"]["distillation"]["rounds_report"]] == ["teacher", "student"]
    assert set(load_file(str(directory / "policy.safetensors"))) == set(student.tensors())
    loaded = AllocatorPolicy.load(directory)
    seen = np.stack(observations(loaded, count=3))
    np.testing.assert_array_equal(loaded.action(seen), student.action(seen))
    with pytest.raises(FileExistsError):
        student.save(directory)


def test_an_older_policy_and_a_student_of_todays_observation_make_one_ensemble(distilled):
    student, _ = distilled
    older = AllocatorPolicy.load(QUICK)
    assert older.observation_size < student.observation_size == older.job_observation_size
    ensemble = PolicyEnsemble([older, student])
    seen = np.stack(observations(student, count=3))
    expected = (older.action(seen) + student.action(seen)) / 2
    np.testing.assert_allclose(ensemble.action(seen), expected, rtol=1e-6)
    assert ensemble.metadata["observation"]["features"]["global"][-1] == "selection_alignment"


def test_each_round_reports_who_acted_and_how_closely_the_student_imitates(distilled):
    _, reports = distilled
    assert [(r.round, r.actor, r.episodes) for r in reports] == [(1, "teacher", 2), (2, "student", 2)]
    assert all(r.samples > 0 and np.isfinite(r.mean_objective) for r in reports)
    assert reports[-1].mse < 0.01
    assert 0.0 <= reports[-1].stop_agreement <= 1.0


def test_the_same_seed_gives_the_same_student_with_one_worker_or_two():
    settings = DistillSettings(rounds=1, episodes=2, epochs=5, workers=1)
    one = distill(QUICK, settings)[0].tensors()
    two = distill(QUICK, DistillSettings(rounds=1, episodes=2, epochs=5, workers=2))[0].tensors()
    assert set(one) == set(two)
    for key in one:
        np.testing.assert_array_equal(one[key].numpy(), two[key].numpy(), err_msg=key)


def test_an_ensemble_teacher_gives_a_single_actor_of_its_members_architecture_and_its_stop_veto(tmp_path):
    from allocator.stop_veto import StopVeto

    veto = StopVeto(features=("budget_used",), mean=(0.5,), scale=(1.0,), weights=(-1.0,), intercept=0.0)
    teacher = PolicyEnsemble.from_directories([QUICK, DEFAULT]).with_stop_veto(veto).save(tmp_path / "ensemble")
    student, _ = distill(teacher, DistillSettings(rounds=1, episodes=1, epochs=5, workers=1))
    assert not isinstance(student, PolicyEnsemble)
    assert student.metadata["network"] == AllocatorPolicy.load(QUICK).metadata["network"]
    assert len(student.metadata["extra"]["teacher"]["members"]) == 2
    # the veto acts on the stops, whatever network asks for them: the student carries it as it is
    assert student.stop_veto == veto and student.save(tmp_path / "student") and AllocatorPolicy.load(
        tmp_path / "student"
    ).stop_veto == veto


def test_the_teacher_must_record_its_jobs_or_be_given_them():
    teacher = AllocatorPolicy.load(QUICK)
    assert recorded_config(teacher).env.split == "train"
    teacher.metadata["extra"].pop("config")
    with pytest.raises(ValueError, match="pass --config"):
        recorded_config(teacher)


def test_a_job_distribution_of_another_spec_is_refused():
    config = recorded_config(AllocatorPolicy.load(QUICK))
    config.env.max_steps = 7
    with pytest.raises(ValueError, match="differs from the teacher's"):
        distill(QUICK, FEW, config=config)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--teacher", "no/such/policy"], "does not exist"),
        (["--teacher", str(QUICK), "--rounds", "0"], "--rounds must be an integer >= 1"),
        (["--teacher", str(QUICK), "--learning-rate", "-1"], "--learning-rate must be a number > 0"),
    ],
)
def test_bad_input_is_one_line_at_the_command_line(arguments, message, tmp_path, capsys):
    assert main(["distill", *arguments, "--out", str(tmp_path / "student")]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "student").exists()


def test_the_command_refuses_an_out_directory_in_use(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["distill", "--teacher", str(QUICK), "--out", str(tmp_path / "taken")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_the_command_writes_a_student_that_evaluate_reads(tmp_path, capsys):
    out = tmp_path / "student"
    arguments = ["--rounds", "1", "--episodes", "1", "--epochs", "5", "--workers", "1", "--no-progress-bar"]
    assert main(["distill", "--teacher", str(QUICK), "--out", str(out), *arguments]) == 0
    printed = capsys.readouterr().out
    assert "round 1 (teacher acts): 1 jobs" in printed and f"wrote {out}" in printed
    assert AllocatorPolicy.load(out).kind == "attention"


def test_the_published_distilled_policy_is_one_actor_that_acts_as_its_teacher():
    """The student behind BENCHMARKS.md section 4 (distilled from the published 4-seed ensemble)."""
    benchmarks = QUICK.parents[1]
    student = AllocatorPolicy.load(benchmarks / "heldout-quick-distilled" / "policy")
    teacher = AllocatorPolicy.load(benchmarks / "heldout-quick-ensemble" / "policy")
    assert not isinstance(student, PolicyEnsemble) and student.kind == "attention"
    assert student.metadata["extra"]["distillation"]["rounds"] == 6
    seen = np.stack(observations(teacher, count=6))
    to_teacher = np.mean((student.action(seen) - teacher.action(seen)) ** 2)
    to_members = [np.mean((member.action(seen) - teacher.action(seen)) ** 2) for member in teacher.members]
    assert to_teacher < 0.05 * min(to_members)  # far closer to the ensemble than any of its seeds is


def test_a_later_distillation_in_the_same_process_runs_its_own_jobs():
    """With one worker the episodes run in the caller's process: an env of other jobs is never reused."""
    from agents.distill import _env

    kwargs = episode_env_kwargs(recorded_config(AllocatorPolicy.load(QUICK)))
    cnn_only = {**kwargs, "families": ["cnn1d"]}
    assert _env(kwargs, 0) is _env(dict(kwargs), 0)
    assert _env(cnn_only, 0) is not _env(kwargs, 0)
    assert _env(cnn_only, 0).unwrapped.spec.kwargs["families"] == ["cnn1d"]
    assert _env(kwargs, 1) is not _env(kwargs, 0)  # env number 1 draws from its own job pool
