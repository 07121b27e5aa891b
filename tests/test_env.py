"""The Gymnasium environment over real training jobs."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from allocator import Allocation, run_job
from tests.conftest import make_job

ENV_ID = "ComputeAllocator/TrainingJob-v0"


def make_env(**kwargs):
    return gym.make(ENV_ID, **kwargs)


def rollout(env, policy, seed=None, options=None):
    observation, info = env.reset(seed=seed, options=options)
    rewards, infos = [], []
    done = False
    while not done:
        observation, reward, terminated, truncated, info = env.step(policy(observation))
        rewards.append(reward)
        infos.append(info)
        done = terminated or truncated
    return rewards, infos


def test_registered_on_import_with_a_safety_time_limit():
    assert envs.ENV_ID == ENV_ID
    spec = gym.spec(ENV_ID)
    assert spec.max_episode_steps == envs.MAX_EPISODE_STEPS


def test_gymnasium_and_sb3_env_checkers_pass_without_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = make_env()
        gymnasium_check_env(env.unwrapped)
        sb3_check_env(make_env().unwrapped, warn=True)
    messages = [str(w.message) for w in caught if "compute" in str(w.filename) or "gymnasium" in str(w.filename) or "stable_baselines3" in str(w.filename)]
    assert messages == []


def test_spaces_follow_the_allocation_spec():
    env = make_env(sample_groups=3, layer_groups=2, max_steps=5)
    assert env.action_space.shape == (3 + 1 + 2 + 1,)
    assert env.observation_space.shape == (16 + 4 * 3 + 4 * 2,)
    assert env.action_space.dtype == np.float32 and env.observation_space.dtype == np.float32
    observation, _ = env.reset(seed=0)
    assert env.observation_space.contains(observation)


def test_ignored_features_are_zero_in_every_observation_and_change_nothing_else():
    ignored = ["budget_used", "previous_gate"]
    env = make_env(ignored_features=ignored)
    positions = env.unwrapped.layout.positions(ignored)
    uniform = np.zeros(env.action_space.shape, np.float32)
    hidden, _ = env.reset(options={"job": make_job(seed=3)})
    full, _ = make_env().reset(options={"job": make_job(seed=3)})
    observations = [hidden]
    for _ in range(3):
        observations.append(env.step(uniform)[0])
    assert all(np.all(obs[positions] == 0.0) for obs in observations)
    assert not np.all(env.unwrapped.job.observation()[positions] == 0.0)  # the job's own is whole
    kept = np.setdiff1d(np.arange(len(full)), positions)
    assert np.array_equal(hidden[kept], full[kept])


def test_an_unknown_ignored_feature_is_refused():
    with pytest.raises(ValueError, match="unknown observation feature"):
        make_env(ignored_features=["budget"])


def test_the_env_runs_every_job_under_its_selection_gate():
    env = make_env(selection_gate=0.7)
    env.reset(options={"job": make_job(seed=3)})
    assert env.unwrapped.job.selection_gate == 0.7
    env.reset(seed=0)  # a sampled job too
    assert env.unwrapped.job.selection_gate == 0.7
    with pytest.raises(ValueError, match="selection_gate must be in"):
        make_env(selection_gate=2.0)


def test_with_stop_before_budget_the_episode_ends_before_the_last_interval_and_the_reference_does_not():
    # make_job: 60 steps in intervals of 10, so the rule stops after 50
    env = make_env(stop_before_budget=True, reference="uniform", job_pool=1)
    zero = np.zeros(env.action_space.shape, np.float32)
    rewards, infos = rollout(env, lambda _: zero, options={"job": make_job(seed=5)})
    assert env.unwrapped.job.stop_before_budget and infos[-1]["stopped"]
    assert infos[-1]["compute_fraction"] == pytest.approx(5 / 6)
    # a sampled job: standard training, its reference, runs to the end without the rule
    rewards, infos = rollout(env, lambda _: zero, seed=0)
    assert infos[-1]["stopped"] and infos[-1]["compute_fraction"] < 1.0
    assert sum(rewards) == pytest.approx(infos[-1]["reference_objective"] - infos[-1]["objective"], abs=1e-9)
    assert sum(rewards) != 0.0  # the reference is not the ruled run


def test_with_the_loss_share_prior_the_zero_action_is_loss_sampling_and_the_reference_is_not():
    env = make_env(share_prior="loss", reference="uniform", job_pool=1)
    zero = np.zeros(env.action_space.shape, np.float32)
    rewards, infos = rollout(env, lambda _: zero, seed=0)
    assert env.unwrapped.job.share_prior == "loss"
    job_seed = env.unwrapped._job_pool[0]
    loss_sampling = run_job(env.unwrapped._build_job(job_seed), "loss-sampling")
    uniform = run_job(env.unwrapped._build_job(job_seed), "uniform")
    assert infos[-1]["objective"] == pytest.approx(loss_sampling.objective, rel=1e-6)
    assert infos[-1]["reference_objective"] == pytest.approx(uniform.objective, rel=1e-9)
    assert infos[-1]["objective"] != pytest.approx(uniform.objective, rel=1e-6)


def test_rewards_sum_to_minus_j_and_match_run_job_under_uniform():
    env = make_env()
    rewards, infos = rollout(env, lambda _: np.zeros(env.action_space.shape, np.float32), options={"job": make_job(seed=5)})
    result = run_job(make_job(seed=5), "uniform")
    assert sum(rewards) == pytest.approx(-result.objective, abs=1e-9)
    assert infos[-1]["objective"] == pytest.approx(result.objective)
    assert [i["val_loss"] for i in infos] == [loss for _, loss in result.curve[1:]]
    assert infos[-1]["compute_used"] == result.compute_used == result.budget


def test_with_a_dead_zone_a_near_zero_policy_trains_exactly_like_uniform():
    """The trajectory, not just the allocation: a 1 % tilt would change every later loss."""
    result = run_job(make_job(seed=5), "uniform")
    uniform_losses = [loss for _, loss in result.curve[1:]]
    for dead_zone in (0.0, 0.1):
        env = make_env(dead_zone=dead_zone)
        wobble = np.random.default_rng(0)  # every entry within 0.05 of 0: no share deviates by more than 0.1
        rewards, infos = rollout(
            env,
            lambda _, wobble=wobble, shape=env.action_space.shape: wobble.uniform(-0.05, 0.05, shape).astype(np.float32),
            options={"job": make_job(seed=5)},
        )
        same = [i["val_loss"] for i in infos] == uniform_losses
        assert same == (dead_zone > 0), f"dead_zone {dead_zone}"
    assert sum(rewards) == pytest.approx(-result.objective, abs=1e-9)


def test_stopping_ends_the_episode_with_the_budget_unspent():
    env = make_env()
    action = np.zeros(env.action_space.shape, np.float32)
    env.reset(options={"job": make_job()})
    env.step(action)
    action[-1] = -1.0  # steps = 0
    _, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated and info["stopped"]
    assert info["compute_fraction"] == pytest.approx(1 / 6)  # 10 of 60 steps
    assert reward < 0


def test_diverging_job_terminates_with_a_finite_penalty():
    env = make_env()
    rewards, infos = rollout(env, lambda _: np.zeros(env.action_space.shape, np.float32), options={"job": make_job(optimizer="sgd", lr=1e9)})
    assert infos[-1]["diverged"] and np.isfinite(sum(rewards))
    assert -sum(rewards) > 1.8


def test_non_finite_actions_raise_and_out_of_range_ones_are_clipped():
    env = make_env()
    env.reset(options={"job": make_job()})
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(env.action_space.shape, np.nan, np.float32))
    _, _, _, _, info = env.step(np.full(env.action_space.shape, 7.0, np.float32))
    assert info["allocation"] == Allocation.uniform(env.unwrapped.allocation_spec)


def test_ansi_render_describes_the_last_interval():
    env = make_env(render_mode="ansi")
    env.reset(options={"job": make_job()})
    env.step(np.zeros(env.action_space.shape, np.float32))
    line = env.render()
    assert "16.7% of budget" in line and "keep 1.00" in line and "steps 10" in line


def test_reset_with_a_seed_samples_the_same_job():
    env = make_env()
    first, info_a = env.reset(seed=11)
    second, info_b = env.reset(seed=11)
    assert info_a["job"] == info_b["job"] and np.array_equal(first, second)


def mean_objective(controller, seeds):
    env = make_env()
    values = []
    for seed in seeds:
        _, infos = rollout(env, controller, seed=seed)
        values.append(infos[-1]["objective"])
    return float(np.mean(values))


def test_stopping_at_once_and_acting_at_random_score_worse_than_uniform():
    seeds = range(100, 116)  # 16 jobs of the default distribution
    env = make_env()
    size = env.action_space.shape
    uniform = mean_objective(lambda _: np.zeros(size, np.float32), seeds)
    stop = np.zeros(size, np.float32)
    stop[-1] = -1.0
    stop_at_once = mean_objective(lambda _: stop, seeds)
    rng = np.random.default_rng(0)
    random_actions = mean_objective(lambda _: rng.uniform(-1, 1, size).astype(np.float32), seeds)
    assert stop_at_once == pytest.approx(1.8)
    assert uniform < random_actions
    assert uniform < stop_at_once


def test_short_ppo_run_on_two_vectorised_envs_completes():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    vec_env = make_vec_env(ENV_ID, n_envs=2, seed=0, env_kwargs={"render_mode": None})
    model = PPO("MlpPolicy", vec_env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256


def test_uniform_reference_makes_the_return_the_saving_against_standard_training():
    env = make_env(reference="uniform", job_pool=2)
    zero = np.zeros(env.action_space.shape, np.float32)
    rewards, infos = rollout(env, lambda _: zero, seed=0)
    # uniform actions reproduce the reference run exactly: nothing saved, nothing lost
    assert sum(rewards) == pytest.approx(0.0, abs=1e-9)
    assert infos[-1]["reference_objective"] == pytest.approx(infos[-1]["objective"])
    stop = zero.copy()
    stop[-1] = -1.0
    rewards, infos = rollout(env, lambda _: stop, seed=0)
    assert sum(rewards) == pytest.approx(infos[-1]["reference_objective"] - 1.8)
