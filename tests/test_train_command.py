"""`compute-allocator train`: flags, and bad input as one line on stderr with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from allocator.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv: str) -> tuple[int, str]:
    code = main(["train", *argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("compute-allocator train: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_train_help_lists_the_contract_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--preset", "--config", "--out", "--timesteps", "--seed", "--n-envs", "--resume"):
        assert flag in out


def test_unknown_preset(capsys, tmp_path):
    code, err = run_main(capsys, "--preset", "huge", "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "unknown preset 'huge'", "quick")
    assert not (tmp_path / "out").exists()


def test_unknown_config_key(capsys, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("ppo:\n  learning_rate: 0.001\n  n_step: 64\n")
    code, err = run_main(capsys, "--config", str(config), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "mine.yaml", "unknown key 'ppo.n_step'")


def test_missing_config_file(capsys, tmp_path):
    code, err = run_main(capsys, "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "nope.yaml", "does not exist")


@pytest.mark.parametrize("flag, value", [("--timesteps", "-100"), ("--timesteps", "0"), ("--n-envs", "0")])
def test_non_positive_counts(capsys, tmp_path, flag, value):
    code, err = run_main(capsys, "--preset", "tiny", "--out", str(tmp_path / "out"), flag, value)
    assert_one_line_error(code, err, flag)


def test_existing_non_empty_out_without_resume(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, err = run_main(capsys, "--preset", "tiny", "--out", str(tmp_path))
    assert_one_line_error(code, err, "not empty", "--resume")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_without_checkpoint(capsys, tmp_path):
    code, err = run_main(capsys, "--out", str(tmp_path), "--resume")
    assert_one_line_error(code, err, "--resume", "no checkpoint")
    code, err = run_main(capsys, "--out", str(tmp_path / "missing"), "--resume")
    assert_one_line_error(code, err, "--resume", "does not exist")


def test_resume_does_not_take_another_configuration(capsys, tmp_path):
    code, err = run_main(capsys, "--out", str(tmp_path), "--resume", "--preset", "default")
    assert_one_line_error(code, err, "--resume", "--preset")


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("training:\n  timesteps: 100\n  n_env: 2\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "allocator.cli",
            "train",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            "compute-allocator train: error: bad.yaml: unknown key 'training.n_env'; the keys of "
            "training are timesteps, n_envs, seed, seeds, checkpoint_every, eval_every, eval_jobs, eval_seed, "
            "validation_jobs, validation_seed, validation_families, keep_snapshots"
        )
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--seeds", "0"], "at least 2 different seeds"),
        (["--seeds", "1,1"], "at least 2 different seeds"),
        (["--seeds", "0,one"], "comma-separated seeds"),
        (["--seeds", "0,1", "--seed", "2"], "cannot be combined with --seed or --resume"),
        (["--seeds", "0,1", "--resume"], "cannot be combined with --seed or --resume"),
    ],
)
def test_bad_seeds(capsys, tmp_path, extra, fragment):
    code, err = run_main(capsys, "--preset", "tiny", "--out", str(tmp_path / "out"), *extra)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_seeds_into_a_non_empty_out_is_refused(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, err = run_main(capsys, "--preset", "tiny", "--seeds", "0,1", "--out", str(tmp_path))
    assert_one_line_error(code, err, "not empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_seeds_trains_each_seed_and_writes_their_ensemble(capsys, tmp_path):
    import numpy as np

    from allocator import AllocatorPolicy
    from allocator.ensemble import PolicyEnsemble
    from tests.conftest import make_job

    out = tmp_path / "ensemble"
    argv = ["train", "--preset", "tiny", "--timesteps", "64", "--seeds", "0,3", "--out", str(out)]
    assert main([*argv, "--no-progress-bar"]) == 0
    assert "ensemble of 2 seeds (0, 3) written to" in capsys.readouterr().out

    seeds = [AllocatorPolicy.load(out / name) for name in ("seed-0", "seed-3")]
    assert [policy.metadata["extra"]["seed"] for policy in seeds] == [0, 3]
    assert "--seed 3" in (out / "seed-3" / "command.txt").read_text()  # each seed reruns on its own
    ensemble = AllocatorPolicy.load(out)
    assert isinstance(ensemble, PolicyEnsemble) and len(ensemble.members) == 2
    job = make_job()
    ensemble.reset(job)
    observation = job.observation()
    actions = [policy.action(observation) for policy in seeds]
    assert not np.array_equal(*actions)  # two seeds, two policies
    np.testing.assert_allclose(ensemble.action(observation), (actions[0] + actions[1]) / 2, rtol=0, atol=1e-7)


def test_a_configuration_with_training_seeds_trains_an_ensemble_and_seed_trains_one_run_of_it(capsys, tmp_path):
    """The default preset's shape: training.seeds in the file does what --seeds does; --seed N picks one."""
    from allocator import AllocatorPolicy
    from allocator.ensemble import PolicyEnsemble
    from allocator.token_dropping import TokenDropping

    config = tmp_path / "ensemble.yaml"
    config.write_text("env:\n  token_dropping: [0.5, 0.5]\ntraining:\n  seeds: [0, 2]\n  timesteps: 64\n")
    out = tmp_path / "ensemble"
    assert main(["train", "--preset", "tiny", "--config", str(config), "--out", str(out), "--no-progress-bar"]) == 0
    assert "ensemble of 2 seeds (0, 2) written to" in capsys.readouterr().out
    ensemble = AllocatorPolicy.load(out)
    assert isinstance(ensemble, PolicyEnsemble) and len(ensemble.members) == 2
    assert ensemble.spec.token_dropping == TokenDropping(0.5, 0.5)  # the env's rule travels in the spec
    # each member's config.yaml is one run, so `--out DIR/seed-N --resume` resumes just that seed
    assert "seeds: []" in (out / "seed-2" / "config.yaml").read_text()
    code, err = run_main(capsys, "--out", str(out), "--resume")  # the ensemble's directory has no checkpoint
    assert_one_line_error(code, err, "holds an ensemble of runs (seed-0, seed-2)", "seed-0' --resume")

    single = tmp_path / "single"
    argv = ["train", "--preset", "tiny", "--config", str(config), "--seed", "2", "--out", str(single)]
    assert main([*argv, "--no-progress-bar"]) == 0
    policy = AllocatorPolicy.load(single)
    assert not isinstance(policy, PolicyEnsemble) and policy.metadata["extra"]["seed"] == 2
    assert not (single / "seed-0").exists()


def test_bad_training_seeds_in_a_configuration_file_is_one_line(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("training:\n  seeds: [1, 1]\n")
    code, err = run_main(capsys, "--preset", "tiny", "--config", str(config), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "training.seeds", "at least 2 different")
    assert not (tmp_path / "run").exists()


def test_an_interrupt_before_the_first_checkpoint_says_there_is_nothing_to_resume(capsys, tmp_path, monkeypatch):
    from stable_baselines3 import PPO

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PPO, "learn", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--no-progress-bar"]) == 130
    err = capsys.readouterr().err
    assert "before its first checkpoint: nothing to resume; delete" in err and str(out) in err
    assert "--resume" not in err  # --resume would fail: there is no checkpoint
