"""Train the allocator policy with PPO over a distribution of real training jobs.

:func:`train` is the whole pipeline, top to bottom:

1. the envs: ``ComputeAllocator/TrainingJob-v0`` over the configured job
   split, each in a ``Monitor``, in a ``SubprocVecEnv`` (one process and one
   torch thread per env) when ``n_envs > 1``, else a ``DummyVecEnv``;
2. ``VecNormalize`` of observations (and rewards) -- its statistics are saved
   beside the model and shipped with the exported policy;
3. PPO (``MlpPolicy`` or :class:`agents.networks.AttentionAllocatorPolicy`,
   on the CPU) seeded through SB3, logging to TensorBoard in ``DIR/tb``;
4. callbacks: per-episode allocations, held-out evaluation against
   ``uniform``, and checkpoints with a policy export every N timesteps;
5. at the end, a final checkpoint and the exported policy.

The policy directory ``DIR``::

    policy.safetensors, policy.json   the deployable policy (agents.export; no pickle)
    config.yaml                       the resolved configuration
    command.txt                       the command line(s) that trained it
    checkpoint/model.zip              the SB3 model (to resume)
    checkpoint/vecnormalize.pkl       its VecNormalize statistics (SB3's pickle format)
    checkpoint/state.json             timesteps and wall time at the checkpoint
    snapshots/<timesteps>/            with training.keep_snapshots: each checkpoint's policy
    tb/                               TensorBoard event files

A checkpoint is written into a temporary directory that then replaces
``checkpoint/`` by ``os.replace``, so a run killed at any moment leaves a
complete checkpoint, at most one checkpoint interval old. A run stopped by
Ctrl-C or SIGTERM while it collects a rollout (most of its time) also saves
one at that rollout's start, so it loses at most one rollout's steps.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.config import TrainConfig, config_from_yaml

CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"
CHECKPOINT_DIR = "checkpoint"
MODEL_FILE = "model.zip"
VECNORMALIZE_FILE = "vecnormalize.pkl"
STATE_FILE = "state.json"
SNAPSHOTS_DIR = "snapshots"
TENSORBOARD_DIR = "tb"
_CHECKPOINT_TMP = ".checkpoint.tmp"
_CHECKPOINT_OLD = ".checkpoint.old"
# VecNormalize's observation clip; the exported policy applies the same.
CLIP_OBSERVATION = 10.0
_VALIDATION_STREAM = 7919  # separates the validation jobs' seeds from every other job stream


@dataclass
class TrainingSummary:
    """What a call of :func:`train` did."""

    out_dir: Path
    timesteps: int  # the model's total timesteps at the end
    timesteps_this_run: int
    wall_time: float  # seconds of this call
    episodes: int  # episodes finished in this call
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    selected: dict | None = None  # with validation: {"timesteps", "J_difference"} of the exported policy

    @property
    def timesteps_per_second(self) -> float:
        return self.timesteps_this_run / self.wall_time if self.wall_time > 0 else math.nan


# ---------------------------------------------------------------------- the envs


def env_kwargs(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of ``gymnasium.make`` for the configured env."""
    env = config.env
    return {
        "split": env.split,
        "sample_groups": env.sample_groups,
        "layer_groups": env.layer_groups,
        "max_steps": env.max_steps,
        "min_keep_fraction": env.min_keep_fraction,
        "min_layer_gate": env.min_layer_gate,
        "dead_zone": env.dead_zone,
        "selection_gate": env.selection_gate,
        "stop_before_budget": env.stop_before_budget,
        "share_prior": env.share_prior,
        "token_dropping": env.token_dropping,
        "layer_lever": env.layer_lever,
        "gate_mapping": env.gate_mapping,
        "gate_decision": env.gate_decision,
        # not env.freeze_cnn_first_group: a rule of the exported policy, which the envs do not run
        "s": env.s,
        "w": env.w,
        "reference": None if env.reference == "none" else env.reference,
        "job_pool": env.job_pool or None,
        "job_pool_seed": env.job_pool_seed,
        "ignored_features": list(env.ignored_features),
        **env.distribution_options(),
        "num_threads": 1,
        "device": env.device,
    }


def make_env(rank: int = 0, seed: int | None = None, **kwargs):
    """Env number ``rank``: ``ComputeAllocator/TrainingJob-v0`` in a ``Monitor``.

    Module-level, so SubprocVecEnv workers can build it. With a job pool, env
    ``rank`` draws from its own pool (seed ``job_pool_seed + rank``): more
    distinct jobs for the same number of reference runs.
    """
    import multiprocessing
    import signal

    import gymnasium
    from stable_baselines3.common.monitor import Monitor

    import envs

    if multiprocessing.parent_process() is not None:
        # A SubprocVecEnv worker: Ctrl-C is for the main process, which then closes the envs.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if kwargs.get("job_pool"):
        kwargs["job_pool_seed"] = kwargs.get("job_pool_seed", 0) + rank
    env = Monitor(gymnasium.make(envs.ENV_ID, **kwargs))
    if seed is not None:
        env.action_space.seed(seed + rank)
    return env


def allocation_spec(config: TrainConfig):
    from allocator.allocation import AllocationSpec

    env = config.env
    return AllocationSpec(
        sample_groups=env.sample_groups,
        layer_groups=env.layer_groups,
        max_steps=env.max_steps,
        min_keep_fraction=env.min_keep_fraction,
        dead_zone=env.dead_zone,
        min_layer_gate=env.min_layer_gate,
        stop_before_budget=env.stop_before_budget,
        share_prior=env.share_prior,
        token_dropping=env.token_dropping,
        freeze_cnn_first_group=env.freeze_cnn_first_group,
        layer_lever=env.layer_lever,
        gate_mapping=env.gate_mapping,
        gate_decision=env.gate_decision,
    )


def make_vec_env(config: TrainConfig, seed: int):
    """The vectorised envs: SubprocVecEnv when n_envs > 1, else DummyVecEnv.

    Env ``i`` is seeded with ``seed + i`` at its first reset (as SB3's
    ``make_vec_env`` does).
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    n_envs = config.training.n_envs
    kwargs = env_kwargs(config)
    builders = [functools.partial(make_env, rank, seed, **kwargs) for rank in range(n_envs)]
    venv = SubprocVecEnv(builders) if n_envs > 1 else DummyVecEnv(builders)
    venv.seed(seed)
    return venv


def stop_envs(venv) -> None:
    """Stop the envs after an interrupt or an error, without waiting on them.

    SubprocVecEnv's ``close()`` first reads every worker's pending step result
    when a step was in flight. Interrupted between two of those reads (Ctrl-C
    while one env is slower than the other), it would wait forever for a
    result already read. The workers hold nothing worth saving: terminate them.
    """
    base = venv.unwrapped
    processes = getattr(base, "processes", None)
    if processes is None or getattr(base, "closed", False):
        base.close()
        return
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
    for remote in getattr(base, "remotes", []):
        remote.close()
    base.closed = True


# ---------------------------------------------------------------------- the agent


def _policy_and_kwargs(config: TrainConfig) -> tuple[Any, dict]:
    """The SB3 policy class (or name) and its ``policy_kwargs``."""
    import torch

    ppo = config.ppo
    kwargs: dict[str, Any] = {"log_std_init": ppo.log_std_init, "activation_fn": torch.nn.Tanh}
    if ppo.policy == "attention":
        from agents.networks import AttentionAllocatorPolicy
        from allocator.stats import ObservationLayout

        kwargs.update(
            layout=ObservationLayout(allocation_spec(config)),
            hidden_size=ppo.attention_hidden_size,
            net_arch=list(ppo.net_arch),
        )
        return AttentionAllocatorPolicy, kwargs
    kwargs["net_arch"] = {"pi": list(ppo.net_arch), "vf": list(ppo.net_arch)}
    return "MlpPolicy", kwargs


def build_model(config: TrainConfig, venv):
    """A fresh PPO agent for ``venv``, as configured."""
    from stable_baselines3 import PPO

    ppo = config.ppo
    policy, policy_kwargs = _policy_and_kwargs(config)
    model = PPO(
        policy,
        venv,
        learning_rate=ppo.learning_rate,
        n_steps=ppo.n_steps,
        batch_size=ppo.batch_size,
        n_epochs=ppo.n_epochs,
        gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda,
        ent_coef=ppo.ent_coef,
        vf_coef=ppo.vf_coef,
        clip_range=ppo.clip_range,
        max_grad_norm=ppo.max_grad_norm,
        target_kl=ppo.target_kl,
        policy_kwargs=policy_kwargs,
        seed=config.training.seed,
        device="cpu",
        verbose=0,
    )
    if ppo.steps_log_std_init is not None or ppo.gates_log_std_init is not None:
        import torch

        with torch.no_grad():  # log_std has one entry per action entry (AllocationSpec.to_allocation)
            if ppo.gates_log_std_init is not None:
                model.policy.log_std[allocation_spec(config).gate_entries] = ppo.gates_log_std_init
            if ppo.steps_log_std_init is not None:  # the steps entry is the action's last
                model.policy.log_std[-1] = ppo.steps_log_std_init
    return model


def export(model, vec_normalize, config: TrainConfig, out_dir: Path, extra: dict) -> None:
    """Write ``policy.safetensors`` + ``policy.json`` (the one call into agents.export)."""
    from agents.export import export_policy

    export_policy(
        model,
        vec_normalize,
        allocation_spec(config),
        out_dir,
        extra_metadata=extra,
        ignored_features=config.env.ignored_features,
        selection_gate=config.env.selection_gate,
    )


def make_logger(tensorboard_dir: Path, purge_step: int | None):
    """An SB3 logger writing TensorBoard only; ``purge_step`` hides earlier events from it on.

    A resumed run logs again the steps between its checkpoint and the moment
    the earlier run was killed; ``purge_step`` (one past the checkpoint's
    timestep) makes TensorBoard drop the earlier run's copies, so the curve
    stays one line.
    """
    from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
    from torch.utils.tensorboard import SummaryWriter

    class _TensorBoard(TensorBoardOutputFormat):
        def __init__(self, folder: str) -> None:  # the parent's, with purge_step
            self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
            self._is_closed = False

    tensorboard_dir.mkdir(parents=True, exist_ok=True)
    return Logger(folder=str(tensorboard_dir), output_formats=[_TensorBoard(str(tensorboard_dir))])


# ---------------------------------------------------------------------- checkpoints


def find_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint directory in ``out_dir`` (None if there is none).

    Normally ``checkpoint/``; after a kill in the middle of replacing it, the
    complete temporary or previous one.
    """
    for name in (CHECKPOINT_DIR, _CHECKPOINT_TMP, _CHECKPOINT_OLD):
        directory = out_dir / name
        if all((directory / f).is_file() for f in (MODEL_FILE, VECNORMALIZE_FILE, STATE_FILE)):
            return directory
    return None


def save_checkpoint(model, vec_normalize, out_dir: Path, state: dict) -> Path:
    """Write model, VecNormalize statistics and ``state.json``; swap them in atomically."""
    temporary = out_dir / _CHECKPOINT_TMP
    previous = out_dir / _CHECKPOINT_OLD
    final = out_dir / CHECKPOINT_DIR
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    model.save(temporary / MODEL_FILE)
    vec_normalize.save(str(temporary / VECNORMALIZE_FILE))
    # written last: its presence marks the temporary checkpoint complete
    (temporary / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        os.replace(final, previous)
    os.replace(temporary, final)
    shutil.rmtree(previous, ignore_errors=True)
    return final


def read_checkpoint_state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint {checkpoint} is damaged: {error}") from None


# ---------------------------------------------------------------------- the policy directory


def check_new_out_dir(
    out_dir: Path, advice: str = "pass --resume to continue the run in it, or choose another directory"
) -> None:
    """``out_dir`` must not exist, or be an empty directory (else ``ValueError`` ending in ``advice``)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"--out {str(out_dir)!r} exists and is not a directory")
        if any(out_dir.iterdir()):
            raise ValueError(f"--out {str(out_dir)!r} exists and is not empty; {advice}")


def resume_config(out_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The saved configuration of the run in ``out_dir``, with ``training`` overrides applied."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"--resume: {str(out_dir)!r} does not exist; nothing to resume")
    if find_checkpoint(out_dir) is None:
        seeds = sorted(path.name for path in out_dir.glob("seed-*") if find_checkpoint(path) is not None)
        if seeds:  # an ensemble's directory (--seeds, training.seeds): its runs are resumed one by one
            raise ValueError(
                f"--resume: {str(out_dir)!r} holds an ensemble of runs ({', '.join(seeds)}); resume one with "
                f"--out {str(out_dir / seeds[0])!r} --resume, then combine them with compute-allocator "
                f"ensemble --out NEW_DIR {str(out_dir)}/seed-*"
            )
        raise ValueError(
            f"--resume: no checkpoint in {str(out_dir)!r} (expected {CHECKPOINT_DIR}/{MODEL_FILE}, "
            f"{VECNORMALIZE_FILE} and {STATE_FILE})"
        )
    if not (out_dir / CONFIG_FILE).is_file():
        raise ValueError(f"--resume: {str(out_dir)!r} has no {CONFIG_FILE}")
    config = config_from_yaml(out_dir / CONFIG_FILE)
    given = {key: value for key, value in overrides.items() if value is not None}
    return config.updated({"training": given}, "command line").validate("command line")


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _config_markdown(config: TrainConfig) -> str:
    # TensorBoard renders text as markdown: indent to show YAML verbatim
    return "\n".join("    " + line for line in config.to_yaml().splitlines())


# ---------------------------------------------------------------------- train


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    command: str | None = None,
    progress_bar: bool = True,
    preset: str | None = None,
) -> TrainingSummary:
    """Train (or resume training) an allocator policy; write the policy directory.

    Args:
        config: the resolved, validated configuration.
        out_dir: the policy directory. It must not exist or be empty, unless
            ``resume``, in which case it must hold a checkpoint.
        resume: continue from the last checkpoint in ``out_dir``: model,
            optimizer, VecNormalize statistics and timestep count, on the same
            TensorBoard curve, until ``config.training.timesteps`` in total.
        command: the command line, appended to ``command.txt``.
        progress_bar: show SB3's progress bar.
        preset: the preset name, recorded in the exported policy's metadata.

    Raises ``ValueError`` for a non-empty ``out_dir`` without ``resume`` and
    for ``resume`` without a checkpoint.

    .. warning:: The calling process runs with one torch thread while this
       runs (restored afterwards): the PPO update and the held-out evaluation
       are small, and on a busy machine several threads per process wait on
       each other at every operation (measured: a held-out job 50 times
       slower with 2 threads on 2 loaded cores).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config, Path(out_dir), resume, command, progress_bar, preset)
    finally:
        torch.set_num_threads(threads)


def _progress_bar_available() -> bool:
    """SB3's progress bar imports tqdm and rich; without them, train without it and say so.

    Both are dependencies of compute-allocator, but an environment installed
    with ``--no-deps`` (or an older one) may lack them, and SB3 would raise
    ``ImportError`` only after the envs and their jobs are built.
    """
    missing = []
    for name in ("tqdm", "rich"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(
            f"no progress bar: SB3's needs {' and '.join(missing)} (pip install {' '.join(missing)})",
            file=sys.stderr,
        )
    return not missing


def _train(
    config: TrainConfig,
    out_dir: Path,
    resume: bool,
    command: str | None,
    progress_bar: bool,
    preset: str | None,
) -> TrainingSummary:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.callbacks import (
        CallOnPeriod,
        EpisodeAllocationCallback,
        GateNoiseSchedule,
        HeldOutEvaluation,
        HeldOutEvaluationCallback,
        RolloutBoundary,
        allocation_layout,
        tensorboard_writer,
    )
    from allocator.objective import Objective

    config.validate()
    started = time.perf_counter()
    spec = allocation_spec(config)
    training = config.training

    checkpoint = None
    previous_state: dict = {}
    if resume:
        checkpoint = find_checkpoint(out_dir)
        if checkpoint is None:
            raise ValueError(f"--resume: no checkpoint in {str(out_dir)!r}")
        previous_state = read_checkpoint_state(checkpoint)
    else:
        check_new_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text_atomically(out_dir / CONFIG_FILE, config.to_yaml())
    if command:
        with open(out_dir / COMMAND_FILE, "a", encoding="utf-8") as handle:
            handle.write(command.rstrip("\n") + "\n")

    start_timesteps = int(previous_state.get("num_timesteps", 0))
    # a resumed run draws new jobs rather than replaying the first ones
    venv = make_vec_env(config, seed=training.seed + start_timesteps)
    if checkpoint is not None:
        vec_normalize = VecNormalize.load(str(checkpoint / VECNORMALIZE_FILE), venv)
        vec_normalize.training = True
        model = PPO.load(checkpoint / MODEL_FILE, env=vec_normalize, device="cpu")
        model.set_random_seed(training.seed + start_timesteps)
        start_timesteps = model.num_timesteps
    else:
        vec_normalize = VecNormalize(
            venv,
            norm_obs=True,
            norm_reward=config.ppo.normalize_reward,
            clip_obs=CLIP_OBSERVATION,
            gamma=config.ppo.gamma,
        )
        model = build_model(config, vec_normalize)
    model.set_logger(
        make_logger(out_dir / TENSORBOARD_DIR, purge_step=start_timesteps + 1 if start_timesteps else None)
    )
    writer = tensorboard_writer(model.logger)
    writer.add_custom_scalars(allocation_layout(spec))
    writer.add_text("config", _config_markdown(config), start_timesteps)
    if command:
        writer.add_text("command", command, start_timesteps)

    wall_before = float(previous_state.get("wall_time", 0.0))

    objective = Objective(s=config.env.s, w=config.env.w)
    validation = None
    best: dict | None = previous_state.get("best_validation")
    if training.validation_jobs > 0:
        from allocator.jobs import JobDistribution

        options = config.env.distribution_options()
        if training.validation_families:  # validate on a family left out of training
            options["families"] = list(training.validation_families)
            # the weights shape the training mix and may name families left out here
            options["family_weights"] = None
        validation_distribution = JobDistribution(config.env.split, device=config.env.device, **options)

        def validation_job(index: int):
            # a seed sequence of its own: not one of the envs' job pools, nor a fresh job an env draws
            rng = np.random.default_rng([training.validation_seed, _VALIDATION_STREAM, index])
            return validation_distribution.sample(rng, spec=spec)

        validation = HeldOutEvaluation(
            validation_job,
            training.validation_jobs,
            spec,
            objective,
            prefix="validation",
            selection_gate=config.env.selection_gate,
        )

    def metadata() -> dict:
        extra = {
            "preset": preset,
            "timesteps": int(model.num_timesteps),
            "seed": training.seed,
            "config": config.to_dict(),
        }
        if best is not None:
            extra["validation"] = dict(best, jobs=training.validation_jobs, seed=training.validation_seed)
        return extra

    last_validated: int | None = None

    def checkpoint_state() -> dict:
        return {
            "num_timesteps": int(model.num_timesteps),
            "wall_time": wall_before + time.perf_counter() - started,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def checkpoint_now() -> None:
        nonlocal best, last_validated
        state = checkpoint_state()
        if validation is None:
            save_checkpoint(model, vec_normalize, out_dir, state)
            export(model, vec_normalize, config, out_dir, metadata())
            if training.keep_snapshots:
                # a policy a few checkpoints old is a cheap second opinion (an ensemble member)
                export(model, vec_normalize, config, out_dir / SNAPSHOTS_DIR / str(model.num_timesteps), metadata())
            return
        if last_validated != model.num_timesteps:  # the final checkpoint can fall on the last periodic one
            last_validated = model.num_timesteps
            # PPO samples its actions from torch's global generator, and a job may draw from it too
            # (dropout, say): fork it, so that validating chooses among the policies training makes
            # without changing them
            import torch

            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
                scalars = validation.run(model, vec_normalize)
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, model.num_timesteps)
            score = scalars["validation/J_difference"]
            if best is None or score < best["J_difference"]:
                best = {"timesteps": int(model.num_timesteps), "J_difference": score}
                export(model, vec_normalize, config, out_dir, metadata())  # before the state that records it
            writer.add_scalar("validation/exported_timesteps", best["timesteps"], model.num_timesteps)
        save_checkpoint(model, vec_normalize, out_dir, dict(state, best_validation=best))

    def checkpoint_on_stop(saved: int) -> int | None:
        """Save what a stopped run can keep, past the checkpoint of ``saved`` timesteps;
        the timesteps of the checkpoint saved, or None.

        Only while a rollout is being collected do the weights, the optimizer and the
        VecNormalize statistics agree with a timestep count: the one at that rollout's
        start, to which ``num_timesteps`` is set back (the unfinished rollout's steps were
        never learned from, and a resumed run purges what they logged). Stopped in the
        middle of a PPO update the weights are half-updated, so nothing is saved.
        """
        since = rollouts.collecting_since
        if since is None or since <= saved:  # nothing learned since the last checkpoint
            return None
        model.num_timesteps = since
        save_checkpoint(model, vec_normalize, out_dir, dict(checkpoint_state(), best_validation=best))
        if validation is None:  # with validation the exported policy is the best validated one
            export(model, vec_normalize, config, out_dir, metadata())
        return since

    rollouts = RolloutBoundary()
    episodes = EpisodeAllocationCallback()
    # RolloutBoundary first: at a rollout's end it marks the update before the others run
    callbacks = [rollouts, episodes, CallOnPeriod(training.checkpoint_every, checkpoint_now)]
    ppo = config.ppo
    if ppo.gates_log_std_final is not None:
        start = ppo.log_std_init if ppo.gates_log_std_init is None else ppo.gates_log_std_init
        callbacks.append(GateNoiseSchedule(spec.gate_entries, start, ppo.gates_log_std_final, training.timesteps))
    if ppo.steps_log_std_final is not None:  # the steps entry is the action's last
        start = ppo.log_std_init if ppo.steps_log_std_init is None else ppo.steps_log_std_init
        callbacks.append(
            GateNoiseSchedule(
                slice(-1, None), start, ppo.steps_log_std_final, training.timesteps, tag="train/steps_log_std"
            )
        )
    evaluation_callback = None
    if training.eval_jobs > 0:
        from allocator.jobs import JobDistribution

        heldout = JobDistribution("heldout", device=config.env.device)

        def heldout_job(index: int):
            rng = np.random.default_rng([training.eval_seed, index])
            return heldout.sample(rng, spec=spec)

        evaluation = HeldOutEvaluation(
            heldout_job, training.eval_jobs, spec, objective, selection_gate=config.env.selection_gate
        )
        # eval_every 0: only the final evaluation
        every = training.eval_every or (training.timesteps + 1)
        evaluation_callback = HeldOutEvaluationCallback(evaluation, every)
        callbacks.append(evaluation_callback)

    remaining = training.timesteps - model.num_timesteps
    interrupted = finished = False
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                reset_num_timesteps=False,
                progress_bar=progress_bar and _progress_bar_available(),
            )
            model.logger.dump(model.num_timesteps)  # the last update's train/ scalars
        checkpoint_now()
        if evaluation_callback is not None and (
            not evaluation_callback.history or evaluation_callback.history[-1][0] != model.num_timesteps
        ):
            evaluation_callback.init_callback(model)
            evaluation_callback.evaluate()
        finished = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        writer.flush()
        model.logger.close()
        if finished:
            vec_normalize.close()
        else:
            stop_envs(vec_normalize)
        if interrupted:
            stopped_at = int(model.num_timesteps)
            last = find_checkpoint(out_dir)
            saved = None if last is None else int(read_checkpoint_state(last)["num_timesteps"])
            try:
                kept = checkpoint_on_stop(saved or 0)
            except Exception as error:  # the stop, not this, is what the user must see
                kept = None
                print(f"could not save a checkpoint at the stop: {error}", file=sys.stderr)
            if kept is not None:
                print(
                    f"training interrupted at {stopped_at} timesteps; saved a checkpoint at {kept} timesteps "
                    f"(the last completed update) in {out_dir}: continue with --resume",
                    file=sys.stderr,
                )
            elif saved is None:  # --resume needs a checkpoint, and a fresh run an empty directory
                print(
                    f"training interrupted at {stopped_at} timesteps, before its first checkpoint: "
                    f"nothing to resume; delete {out_dir} to start again",
                    file=sys.stderr,
                )
            else:
                print(
                    f"training interrupted at {stopped_at} timesteps; the last checkpoint "
                    f"({saved} timesteps) is in {out_dir}: continue with --resume",
                    file=sys.stderr,
                )
    return TrainingSummary(
        out_dir=out_dir,
        timesteps=int(model.num_timesteps),
        timesteps_this_run=int(model.num_timesteps) - start_timesteps,
        wall_time=time.perf_counter() - started,
        episodes=episodes.episodes_logged,
        evaluations=evaluation_callback.history if evaluation_callback else [],
        selected=best if validation is not None else None,
    )
