"""The deployable policy format: export from SB3, load safely, act exactly as trained."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import load_file, save_file
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.export import export_policy
from agents.networks import AttentionAllocatorPolicy
from allocator.allocation import AllocationSpec
from allocator.policy import AllocatorPolicy, AttentionActor

SPEC = AllocationSpec(sample_groups=3, layer_groups=4, max_steps=6)
LAYOUT = {"global": 5, "per_sample_group": 3, "per_layer_group": 2}
OBS_SIZE = 5 + 3 * 3 + 4 * 2


class FakeAllocatorEnv(gym.Env):
    """Random observations of the allocator's layout, with offsets and scales that make
    VecNormalize matter; the reward prefers small actions."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (OBS_SIZE,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (SPEC.action_size,), np.float32)
        self.offset = np.linspace(-3.0, 4.0, OBS_SIZE).astype(np.float32)
        self.scale = np.linspace(0.05, 6.0, OBS_SIZE).astype(np.float32)
        self.t = 0

    def observation(self) -> np.ndarray:
        noise = self.np_random.standard_normal(OBS_SIZE)
        return (self.offset + self.scale * noise).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation(), {}

    def step(self, action):
        self.t += 1
        reward = -float(np.abs(action).sum())
        return self.observation(), reward, self.t >= 8, False, {}


def train(policy, policy_kwargs):
    torch.manual_seed(0)
    venv = VecNormalize(DummyVecEnv([FakeAllocatorEnv]), norm_obs=True, norm_reward=True)
    venv.seed(0)
    model = PPO(
        policy,
        venv,
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        seed=0,
        device="cpu",
        policy_kwargs=policy_kwargs,
    )
    model.learn(total_timesteps=256)
    # Move the weights away from the near-zero initial action head so that the
    # comparison below covers large and clipped actions too.
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for parameter in model.policy.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model, venv


@pytest.fixture(scope="module")
def mlp_agent(tmp_path_factory):
    model, venv = train("MlpPolicy", {"net_arch": {"pi": [32, 16], "vf": [32]}})
    path = export_policy(
        model,
        venv,
        SPEC,
        tmp_path_factory.mktemp("mlp") / "policy",
        extra_metadata={"timesteps": np.int64(256), "preset": "test"},
        observation_layout=LAYOUT,
    )
    return model, venv, path


@pytest.fixture(scope="module")
def attention_agent(tmp_path_factory):
    model, venv = train(
        AttentionAllocatorPolicy,
        {"layout": LAYOUT, "spec": SPEC, "hidden_size": 16, "net_arch": [32]},
    )
    path = export_policy(model, venv, SPEC, tmp_path_factory.mktemp("attention") / "policy")
    return model, venv, path


@pytest.fixture(params=["mlp", "attention"])
def agent(request):
    return request.getfixturevalue(f"{request.param}_agent")


def raw_observations(n: int = 32) -> np.ndarray:
    env = FakeAllocatorEnv()
    env.reset(seed=123)
    return np.stack([env.observation() for _ in range(n)])


def test_exported_policy_acts_like_sb3_predict_on_normalized_observations(agent):
    model, venv, path = agent
    policy = AllocatorPolicy.load(path)
    raw = raw_observations()
    expected, _ = model.predict(venv.normalize_obs(raw), deterministic=True)
    np.testing.assert_allclose(policy.action(raw), expected, atol=1e-5, rtol=0)
    assert np.abs(expected).max() == 1.0, "the test should cover clipped actions"
    for obs, action in zip(raw[:4], expected[:4]):
        np.testing.assert_allclose(policy.action(obs), action, atol=1e-5, rtol=0)
        got = policy.act(obs)
        want = SPEC.to_allocation(action)
        assert got.steps == want.steps
        np.testing.assert_allclose(got.sample_shares, want.sample_shares, atol=1e-4)
        np.testing.assert_allclose(got.layer_gates, want.layer_gates, atol=1e-4)


def test_policy_json_describes_spec_layout_network_and_normalization(mlp_agent, attention_agent):
    mlp = json.loads((mlp_agent[2] / "policy.json").read_text())
    attention = json.loads((attention_agent[2] / "policy.json").read_text())
    assert mlp["format_version"] == 1
    assert (mlp["kind"], attention["kind"]) == ("mlp", "attention")
    assert mlp["spec"] == SPEC.to_dict()
    assert {k: mlp["observation"][k] for k in LAYOUT} == LAYOUT
    assert mlp["observation"]["size"] == OBS_SIZE
    assert mlp["network"] == {"activation": "tanh", "hidden_sizes": [32, 16]}
    assert attention["network"] == {"activation": "tanh", "hidden_size": 16}
    assert mlp["normalization"] == {
        "observation": True,
        "clip_obs": 10.0,
        "epsilon": 1e-8,
        "reward": True,
    }
    assert set(mlp["versions"]) == {"torch", "stable_baselines3", "compute_allocator"}
    assert mlp["extra"] == {"timesteps": 256, "preset": "test"}
    policy = AllocatorPolicy.load(mlp_agent[2] / "policy.json")
    assert policy.spec == SPEC and policy.kind == "mlp"
    assert policy.name == "policy:policy"
    assert policy.metadata["extra"]["preset"] == "test"


def test_safetensors_hold_only_the_actor_and_normalization_statistics(mlp_agent):
    tensors = load_file(str(mlp_agent[2] / "policy.safetensors"))
    assert set(tensors) == {
        "actor.hidden.0.weight",
        "actor.hidden.0.bias",
        "actor.hidden.1.weight",
        "actor.hidden.1.bias",
        "actor.output.weight",
        "actor.output.bias",
        "observation.mean",
        "observation.var",
    }
    assert tensors["actor.output.weight"].dtype == torch.float32
    np.testing.assert_array_equal(tensors["observation.mean"].numpy(), mlp_agent[1].obs_rms.mean)


def test_load_uses_no_pickle(agent, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle must not be used to load a policy")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    policy = AllocatorPolicy.load(agent[2])
    policy.act(raw_observations(1)[0])


def test_loading_and_exporting_a_policy_leave_torchs_random_stream_alone(agent, tmp_path):
    """Building the actor draws placeholder weights; a job or PPO seeded before must not notice."""
    model, vec_normalize, directory = agent
    torch.manual_seed(123)
    before = torch.get_rng_state()
    AllocatorPolicy.load(directory)
    export_policy(model, vec_normalize, SPEC, tmp_path / "again", observation_layout=LAYOUT)
    assert torch.equal(torch.get_rng_state(), before)


def test_policy_module_imports_neither_gymnasium_nor_stable_baselines3():
    code = (
        "import sys, allocator.policy; "
        "bad = [m for m in ('gymnasium', 'stable_baselines3') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def rewrite_json(path: Path, change) -> None:
    data = json.loads((path / "policy.json").read_text())
    change(data)
    (path / "policy.json").write_text(json.dumps(data))


def rewrite_tensors(path: Path, change) -> None:
    tensors = load_file(str(path / "policy.safetensors"))
    change(tensors)
    save_file(tensors, str(path / "policy.safetensors"))


DAMAGES = {
    "missing json": (lambda p: (p / "policy.json").unlink(), "policy.json is missing"),
    "missing weights": (
        lambda p: (p / "policy.safetensors").unlink(),
        "policy.safetensors is missing",
    ),
    "invalid json": (lambda p: (p / "policy.json").write_text("{not json"), "not valid JSON"),
    "corrupt weights": (
        lambda p: (p / "policy.safetensors").write_bytes(b"\x00garbage"),
        "not a readable safetensors",
    ),
    "unknown format version": (
        lambda p: rewrite_json(p, lambda d: d.update(format_version=99)),
        "unknown format_version 99",
    ),
    "unknown kind": (
        lambda p: rewrite_json(p, lambda d: d.update(kind="lstm")),
        "unknown policy kind 'lstm'",
    ),
    "missing tensor": (
        lambda p: rewrite_tensors(p, lambda t: t.pop("observation.var")),
        r"missing tensor\(s\) \['observation.var'\]",
    ),
    "extra tensor": (
        lambda p: rewrite_tensors(p, lambda t: t.update(critic=torch.zeros(3))),
        r"unexpected tensor\(s\) \['critic'\]",
    ),
    "wrong tensor shape": (
        lambda p: rewrite_tensors(
            p, lambda t: t.update({"observation.mean": torch.zeros(3, dtype=torch.float64)})
        ),
        r"'observation.mean' .* shape \(3,\), expected \(22,\)",
    ),
    "spec does not match observation size": (
        lambda p: rewrite_json(p, lambda d: d["spec"].update(sample_groups=4)),
        "observation size 22 does not match the spec",
    ),
    "spec and size changed together, weights do not match": (
        lambda p: rewrite_json(
            p, lambda d: (d["spec"].update(layer_groups=5), d["observation"].update(size=24))
        ),
        "do not match policy.json's spec",
    ),
    "invalid spec": (
        lambda p: rewrite_json(p, lambda d: d["spec"].update(max_steps=0)),
        "invalid spec",
    ),
    "ignored features named on another observation layout": (
        lambda p: rewrite_json(p, lambda d: d["observation"].update(ignored_features=["budget_used"])),
        "reads 22 observation features.*another version of the observation; retrain it",
    ),
    "selection gate outside [-1, 1]": (
        lambda p: rewrite_json(p, lambda d: d.update(selection_gate=1.5)),
        r"policy.json: selection_gate must be in \[-1, 1\]",
    ),
    "non-finite weight": (
        lambda p: rewrite_tensors(p, lambda t: t["actor.output.bias"].fill_(float("nan"))),
        "NaN or inf",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_policy_raises_value_error_saying_what_is_wrong(mlp_agent, tmp_path, damage):
    path = tmp_path / "policy"
    shutil.copytree(mlp_agent[2], path)
    apply_damage, message = DAMAGES[damage]
    apply_damage(path)
    with pytest.raises(ValueError, match=message):
        AllocatorPolicy.load(path)


def test_missing_directory_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        AllocatorPolicy.load(tmp_path / "nowhere")


def test_act_rejects_an_observation_from_a_job_with_another_spec(mlp_agent):
    policy = AllocatorPolicy.load(mlp_agent[2])
    with pytest.raises(ValueError, match="must come from a job with the policy's spec"):
        policy.act(np.zeros(OBS_SIZE + 2, dtype=np.float32))


def test_reset_makes_the_job_use_the_policy_spec(mlp_agent):
    policy = AllocatorPolicy.load(mlp_agent[2])

    class Job:
        spec = AllocationSpec()

        def use_spec(self, spec):
            self.spec = spec

    job = Job()
    policy.reset(job)
    assert job.spec == SPEC

    class FixedJob:
        spec = AllocationSpec()

    with pytest.raises(ValueError, match="differs from the policy's"):
        policy.reset(FixedJob())


def test_export_refuses_to_drop_the_vec_normalize_of_the_training_env(mlp_agent, tmp_path):
    model = mlp_agent[0]
    with pytest.raises(ValueError, match="wrapped in VecNormalize"):
        export_policy(model, None, SPEC, tmp_path, observation_layout=LAYOUT)


def group_blocks(obs: torch.Tensor, k: int, g: int):
    n_g, n_s, n_l = LAYOUT["global"], LAYOUT["per_sample_group"], LAYOUT["per_layer_group"]
    samples = obs[:, n_g : n_g + k * n_s].reshape(len(obs), k, n_s)
    layers = obs[:, n_g + k * n_s :].reshape(len(obs), g, n_l)
    return obs[:, :n_g], samples, layers


def test_attention_actor_scores_groups_with_shared_weights(attention_agent):
    actor = attention_agent[0].policy.actor
    k, g = SPEC.sample_groups, SPEC.layer_groups
    obs = torch.randn(8, OBS_SIZE, generator=torch.Generator().manual_seed(2))
    head, samples, layers = group_blocks(obs, k, g)
    sample_perm, layer_perm = torch.tensor([2, 0, 1]), torch.tensor([3, 1, 0, 2])
    permuted = torch.cat(
        [head, samples[:, sample_perm].flatten(1), layers[:, layer_perm].flatten(1)], dim=1
    )
    with torch.no_grad():
        out, out_permuted = actor(obs), actor(permuted)
    shares, keep, gates, steps = out[:, :k], out[:, k], out[:, k + 1 : k + 1 + g], out[:, -1]
    torch.testing.assert_close(out_permuted[:, :k], shares[:, sample_perm])
    torch.testing.assert_close(out_permuted[:, k + 1 : k + 1 + g], gates[:, layer_perm])
    torch.testing.assert_close(out_permuted[:, k], keep)
    torch.testing.assert_close(out_permuted[:, -1], steps)


def test_attention_actor_runs_with_other_group_counts(attention_agent):
    trained = attention_agent[0].policy.actor
    actor = AttentionActor(
        LAYOUT["global"],
        LAYOUT["per_sample_group"],
        LAYOUT["per_layer_group"],
        sample_groups=6,
        layer_groups=2,
        hidden_size=16,
    )
    actor.load_state_dict(trained.state_dict())
    obs = torch.randn(4, actor.input_size)
    assert actor(obs).shape == (4, 6 + 1 + 2 + 1)


def test_attention_model_survives_sb3_save_and_load(attention_agent, tmp_path):
    model, venv, _ = attention_agent
    model.save(tmp_path / "checkpoint")
    loaded = PPO.load(tmp_path / "checkpoint", device="cpu")
    obs = venv.normalize_obs(raw_observations(4))
    np.testing.assert_allclose(
        loaded.predict(obs, deterministic=True)[0],
        model.predict(obs, deterministic=True)[0],
        atol=1e-6,
    )


def test_a_policy_trained_on_another_observation_layout_is_refused_with_a_clear_message(mlp_agent):
    from tests.conftest import make_job

    policy = AllocatorPolicy.load(mlp_agent[2])  # 22 features: not what a TrainingJob builds
    with pytest.raises(ValueError, match="another version of the observation; retrain it"):
        policy.reset(make_job())


def test_a_policy_exported_with_the_selection_gate_sets_it_on_every_job_it_runs(agent, tmp_path):
    """The gate is a rule of the jobs the agent trained on: policy.json carries it, reset applies it."""
    model, vec_normalize, _ = agent
    gated = export_policy(model, vec_normalize, SPEC, tmp_path / "gated", observation_layout=LAYOUT, selection_gate=0.7)
    plain = export_policy(model, vec_normalize, SPEC, tmp_path / "plain", observation_layout=LAYOUT)
    assert json.loads((gated / "policy.json").read_text())["selection_gate"] == 0.7
    assert "selection_gate" not in json.loads((plain / "policy.json").read_text())  # absent: off

    class Job:
        spec = AllocationSpec()
        selection_gate = 0.2  # whatever the job had before

        def use_spec(self, spec):
            self.spec = spec

    job = Job()
    AllocatorPolicy.load(gated).reset(job)
    assert job.selection_gate == 0.7
    AllocatorPolicy.load(plain).reset(job)
    assert job.selection_gate is None
