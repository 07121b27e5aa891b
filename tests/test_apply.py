"""`compute-allocator apply`: a trained policy on a user's own job file, compared, logged and saved."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import load_file, load_model

from allocator import AllocationSpec, TrainingJob, apply_command
from allocator.cli import main
from allocator.job_loading import load_job_source
from allocator.stats import ObservationLayout

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_JOB = f"{ROOT / 'examples' / 'my_cnn_job.py'}:make_job"
# Not the default spec, so that the tests can see it applied to every job.
POLICY_SPEC = AllocationSpec(sample_groups=3, layer_groups=2, max_steps=8)


class RandomObservationEnv(gym.Env):
    """Observations of the real layout for POLICY_SPEC, random; rewards small actions.

    Enough to train and export a real PPO policy in a second: what it learned does
    not matter to these tests, only that it is a genuine exported policy.
    """

    def __init__(self) -> None:
        size = ObservationLayout(POLICY_SPEC).size
        self.observation_space = spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (POLICY_SPEC.action_size,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.standard_normal(self.observation_space.shape).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        observation = self.np_random.standard_normal(self.observation_space.shape).astype(
            np.float32
        )
        return observation, -float(np.abs(action).sum()), self.t >= 8, False, {}


def make_policy_dir(directory: Path) -> Path:
    """Train SB3 PPO for a few steps on RandomObservationEnv and export it as a policy directory."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from agents.export import export_policy

    torch.manual_seed(0)
    venv = VecNormalize(DummyVecEnv([RandomObservationEnv]), norm_obs=True, norm_reward=True)
    venv.seed(0)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=64,
        batch_size=32,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": [16]},
    )
    model.learn(total_timesteps=128)
    return export_policy(model, venv, POLICY_SPEC, directory)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    return make_policy_dir(tmp_path_factory.mktemp("trained") / "policy")


def tensorboard_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_apply_runs_the_policy_on_a_users_cnn_job_file_and_compares(
    policy_dir, tmp_path, capsys, monkeypatch
):
    built = []
    build_job = apply_command.build_job
    monkeypatch.setattr(
        apply_command, "build_job", lambda *a: built.append(build_job(*a)) or built[-1]
    )
    tensorboard = tmp_path / "tb"
    saved = tmp_path / "weights" / "my_cnn.safetensors"

    code = main(
        [
            "apply",
            "--policy",
            str(policy_dir),
            "--job",
            EXAMPLE_JOB,
            "--compare",
            "uniform,freezeout",
            "--tensorboard",
            str(tensorboard),
            "--save-model",
            str(saved),
            "--device",
            "cpu",
        ]
    )

    out = capsys.readouterr().out
    assert code == 0
    assert "job my-digits-cnn" in out
    for column in (
        "J",
        "final val loss",
        "best val loss",
        "val accuracy",
        "compute used",
        "to uniform's best",
    ):
        assert column in out
    rows = {line.split()[0] for line in out.splitlines() if line.split()}
    assert {"policy", "uniform", "freezeout"} <= rows
    assert "policy: compute to reach uniform's best:" in out or "policy: never reached" in out
    assert "against freezeout" in out or "policy: never reached" in out

    # One TensorBoard run per controller; every job ran with the policy's spec (G = 2 gates).
    assert sorted(p.name for p in tensorboard.iterdir()) == ["freezeout", "policy", "uniform"]
    for run in tensorboard.iterdir():
        tags = tensorboard_tags(run)
        assert {"curve/val_loss_vs_compute", "loss/val", "allocation/keep_fraction"} <= tags
        assert {t for t in tags if t.startswith("allocation/layer_gate_")} == {
            "allocation/layer_gate_0",
            "allocation/layer_gate_1",
        }
    assert [job.spec for job in built] == [POLICY_SPEC] * 3
    assert all(isinstance(job, TrainingJob) and job.done for job in built)

    # The saved weights are those trained under the policy (the first job built).
    tensors = load_file(str(saved))
    trained = built[0].model.state_dict()
    assert set(tensors) == set(trained)
    for name, tensor in tensors.items():
        torch.testing.assert_close(tensor, trained[name].cpu(), rtol=0, atol=0)
    assert not torch.equal(tensors["head.weight"], built[1].model.state_dict()["head.weight"].cpu())
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from my_cnn_job import DigitsCNN
    finally:
        sys.path.remove(str(ROOT / "examples"))
    fresh = DigitsCNN()
    load_model(fresh, str(saved))
    torch.testing.assert_close(fresh.head.weight, trained["head.weight"].cpu(), rtol=0, atol=0)


def test_apply_without_a_policy_compares_baselines_with_uniform(tmp_path, capsys):
    saved = tmp_path / "freezeout.safetensors"
    code = main(
        ["apply", "--job", EXAMPLE_JOB, "--compare", "freezeout", "--save-model", str(saved)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "freezeout: " in out and "uniform's best validation loss" in out
    assert "saved the model trained under freezeout" in out
    assert saved.is_file()


def test_job_file_function_gets_the_seed_and_builds_a_fresh_job_every_time():
    source = load_job_source(EXAMPLE_JOB)
    first, second, other = source.build(3), source.build(3), source.build(4)
    assert first is not second and first.seed == 3 and other.seed == 4
    torch.testing.assert_close(first.model.head.weight, second.model.head.weight)
    assert not torch.equal(first.model.head.weight, other.model.head.weight)


JOB_FILES = {
    "syntax error": (
        "def make_job(seed=0:\n    return None\n",
        "syntax error in job file .*line 1",
    ),
    "returns something else": (
        "def make_job(seed=0):\n    return {'model': None}\n",
        "returned a value of type dict, not an allocator.TrainingJob",
    ),
    "missing function": (
        "def build(seed=0):\n    pass\n",
        "has no function 'make_job'; functions defined there: build",
    ),
    "raises while loading": (
        "raise RuntimeError('no GPU here')\n",
        "raised RuntimeError: no GPU here .*line 1.* while loading",
    ),
    "raises while building": (
        "def make_job():\n    return 1 / 0\n",
        "raised ZeroDivisionError: division by zero",
    ),
    "not callable": ("make_job = 3\n", "is a int, not a function"),
}


def bad_job_arguments(case: str, tmp_path: Path, policy_dir: Path) -> tuple[list[str], str]:
    if case == "missing policy directory":
        return [
            "--policy",
            str(tmp_path / "nowhere"),
            "--job",
            EXAMPLE_JOB,
        ], "policy directory .* does not exist"
    if case == "unknown job name":
        return ["--policy", str(policy_dir), "--job", "no-such-job"], "unknown job 'no-such-job'"
    if case == "missing job file":
        return [
            "--job",
            f"{tmp_path / 'missing.py'}:make_job",
        ], "job file .*missing.py' does not exist"
    if case == "unknown baseline":
        return ["--job", EXAMPLE_JOB, "--compare", "uniform,bogus"], "unknown baseline.*'bogus'"
    if case == "negative threads":
        return ["--job", EXAMPLE_JOB, "--threads", "-1"], "--threads must be >= 0"
    text, message = JOB_FILES[case]
    path = tmp_path / "user_job.py"
    path.write_text(text)
    return ["--policy", str(policy_dir), "--job", f"{path}:make_job"], message


@pytest.mark.parametrize(
    "case",
    [
        "missing policy directory",
        "unknown job name",
        "missing job file",
        "unknown baseline",
        "negative threads",
        *JOB_FILES,
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(case, tmp_path, policy_dir, capsys):
    import re

    arguments, message = bad_job_arguments(case, tmp_path, policy_dir)
    code = main(["apply", *arguments])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("compute-allocator apply: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert captured.out == ""


def test_bad_job_file_in_a_real_process_prints_one_line_without_traceback(tmp_path):
    path = tmp_path / "broken_job.py"
    path.write_text(
        textwrap.dedent("""
        import torch

        def make_job(seed=0)
            return None
    """)
    )
    process = subprocess.run(
        [sys.executable, "-m", "allocator.cli", "apply", "--job", f"{path}:make_job"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines() == [
        f"compute-allocator apply: error: syntax error in job file {path}, line 4: expected ':'"
    ]
