"""stable-baselines3 callbacks of allocator training: what the agent chose, and how well it does.

* :class:`EpisodeAllocationCallback` logs every finished episode: the
  allocation the policy chose (averaged over the episode's intervals), the
  compute it used, its final validation loss and its J.
* :class:`HeldOutEvaluationCallback` runs the current policy (deterministic)
  and ``uniform`` on the same few held-out jobs every N timesteps.
* :class:`GateNoiseSchedule` narrows the layer-gate entries' exploration
  noise over training (``ppo.gates_log_std_final``).
* :class:`PeriodicCallback` is the base of anything done every N timesteps
  (the checkpoints of :mod:`agents.training` are one).

TensorBoard tags, beside SB3's own ``rollout/``, ``train/`` and ``time/``:

==========================  ===================================================
``allocation/*``            per episode, mean over its intervals:
                            ``sample_share_k``, ``keep_fraction``,
                            ``layer_gate_g``, ``steps`` (optimizer steps asked
                            per interval); all as the action asked, on every
                            job. With a ``layer_lever`` other than ``all``
                            or ``gate_decision: job``,
                            ``acting_layer_gate_g`` too, logged only for the
                            episodes whose job ran gate g (a CNN's): the gate
                            as run on the intervals that trained, what the
                            policy learned where the gate acts
``episode/*``               per episode: ``J`` (and with the env's uniform
                            reference ``J_uniform``, ``J_difference``),
                            ``compute_fraction`` (share of the budget used), ``final_val_loss``,
                            ``relative_val_loss`` (over the initial one),
                            ``intervals``, ``stopped`` (the policy chose 0
                            steps), ``diverged``
``eval/*``                  per evaluation, means over the held-out jobs:
                            ``J_policy``, ``J_uniform``, ``J_difference``
                            (policy minus uniform; below 0 is better),
                            ``wins`` (jobs where the policy's J is lower),
                            ``J_early_stopping`` and
                            ``wins_over_early_stopping`` (the strongest
                            hand-designed baseline, ``early-stopping``),
                            ``compute_to_target_policy`` / ``_uniform`` (budget
                            share to first reach uniform's best validation
                            loss; never counts as ``NEVER_REACHED``),
                            ``target_reached_policy``, ``final_val_loss_*``,
                            ``compute_fraction_policy``
==========================  ===================================================

Every scalar's step is the agent's timestep count (``model.num_timesteps``),
the same x-axis as SB3's scalars. :func:`allocation_layout` groups these
charts in TensorBoard's *Custom Scalars* tab.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat

from allocator.allocation import Allocation, AllocationSpec
from allocator.objective import Objective
from allocator.policy import use_policy_spec

# compute_to_target of a run that never reached uniform's best loss, in means.
NEVER_REACHED = 1.5


def tensorboard_writer(logger: Logger):
    """The ``SummaryWriter`` behind an SB3 logger's TensorBoard output (None if it has none)."""
    for output in logger.output_formats:
        if isinstance(output, TensorBoardOutputFormat):
            return output.writer
    return None


def allocation_layout(spec: AllocationSpec) -> dict:
    """The Custom Scalars layout: one chart per allocation axis, J and compute side by side.

    In the form ``SummaryWriter.add_custom_scalars`` takes:
    ``{category: {chart: ["Multiline", [tag regexes]]}}``.
    """
    return {
        "allocation (per episode)": {
            "sample shares (group 0 = lowest loss)": [
                "Multiline",
                [r"allocation/sample_share_\d+"],
            ],
            "layer gates (forward order, head last)": ["Multiline", [r"allocation/layer_gate_\d+"]],
            "keep fraction": ["Multiline", ["allocation/keep_fraction"]],
            f"steps per interval (max {spec.max_steps})": ["Multiline", ["allocation/steps"]],
        },
        "outcome (per episode)": {
            "J (lower is better)": ["Multiline", ["episode/J", "episode/J_uniform"]],
            "J difference (policy - uniform, with env.reference)": [
                "Multiline",
                ["episode/J_difference"],
            ],
            "compute used (share of budget)": ["Multiline", ["episode/compute_fraction"]],
            "final validation loss (relative)": ["Multiline", ["episode/relative_val_loss"]],
            "stopped / diverged": ["Multiline", ["episode/stopped", "episode/diverged"]],
        },
        "held-out evaluation": {
            "J: policy vs uniform and early stopping": [
                "Multiline",
                ["eval/J_policy", "eval/J_uniform", "eval/J_early_stopping"],
            ],
            "J difference (policy - uniform)": ["Multiline", ["eval/J_difference"]],
            "compute to uniform's best loss": [
                "Multiline",
                ["eval/compute_to_target_policy", "eval/compute_to_target_uniform"],
            ],
            "wins over uniform and early stopping": ["Multiline", ["eval/wins", "eval/wins_over_early_stopping"]],
        },
    }


class EpisodeAllocationCallback(BaseCallback):
    """Log, per finished episode, the allocation chosen and what it bought.

    Reads the env's ``info`` at every step: ``allocation`` (an
    :class:`~allocator.Allocation`), ``compute_fraction``, ``val_loss``,
    ``diverged``, and at the episode's end ``objective`` (J) and ``stopped``.
    Works with any number of envs; an episode cut by the time limit is logged
    without J.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._episodes: list[_EpisodeAllocation] = []
        self._writer = None
        self.episodes_logged = 0

    def _on_training_start(self) -> None:
        self._writer = tensorboard_writer(self.logger)
        self._episodes = [self._new_episode(i) for i in range(self.training_env.num_envs)]

    def _new_episode(self, index: int) -> _EpisodeAllocation:
        # The base VecEnv keeps each env's latest reset info (the auto-reset after
        # an episode's end included); it carries the new job's initial val loss.
        venv = self.training_env
        while hasattr(venv, "venv"):
            venv = venv.venv
        reset_infos = getattr(venv, "reset_infos", None) or [{}] * (index + 1)
        return _EpisodeAllocation(reset_infos[index].get("val_loss"))

    def _on_step(self) -> bool:
        infos: Sequence[dict] = self.locals["infos"]
        dones = self.locals["dones"]
        for index, (info, done) in enumerate(zip(infos, dones)):
            episode = self._episodes[index]
            episode.add(info)
            if done:
                self._log(episode.summary(info))
                self._episodes[index] = self._new_episode(index)
        return True

    def _log(self, scalars: dict[str, float]) -> None:
        self.episodes_logged += 1
        if self._writer is None or not scalars:
            return
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, self.num_timesteps)


class _EpisodeAllocation:
    """Accumulates one episode's allocations (one per interval)."""

    def __init__(self, initial_val_loss: float | None = None) -> None:
        self.shares: list[tuple[float, ...]] = []
        self.keep: list[float] = []
        self.gates: list[tuple[float, ...]] = []
        self.steps: list[int] = []
        self.initial_val_loss = initial_val_loss
        self.acting_layer_gates: int | None = None  # the env's info, with a narrowed layer lever
        self.gates_run: list[tuple[float, ...]] = []  # likewise, on the intervals that trained

    def add(self, info: dict) -> None:
        allocation = info.get("allocation")
        if isinstance(allocation, Allocation):
            self.shares.append(allocation.sample_shares)
            self.keep.append(allocation.keep_fraction)
            self.gates.append(allocation.layer_gates)
            self.steps.append(allocation.steps)
        if "acting_layer_gates" in info:
            self.acting_layer_gates = int(info["acting_layer_gates"])
        if "layer_gates_run" in info and info.get("steps", 0) > 0:
            self.gates_run.append(tuple(info["layer_gates_run"]))

    def summary(self, info: dict) -> dict[str, float]:
        scalars: dict[str, float] = {"episode/intervals": float(len(self.steps))}
        if self.steps:
            for k, share in enumerate(np.mean(self.shares, axis=0)):
                scalars[f"allocation/sample_share_{k}"] = float(share)
            for g, gate in enumerate(np.mean(self.gates, axis=0)):
                scalars[f"allocation/layer_gate_{g}"] = float(gate)
            scalars["allocation/keep_fraction"] = float(np.mean(self.keep))
            scalars["allocation/steps"] = float(np.mean(self.steps))
        if self.acting_layer_gates and self.gates_run:
            # what ran, apart from jobs where the lever ignores the ask (and, with
            # gate_decision job, from the asks of later intervals, which are ignored too)
            for g, gate in enumerate(np.mean(self.gates_run, axis=0)[: self.acting_layer_gates]):
                scalars[f"allocation/acting_layer_gate_{g}"] = float(gate)
        if "compute_fraction" in info:
            scalars["episode/compute_fraction"] = float(info["compute_fraction"])
        val_loss = info.get("val_loss")
        if val_loss is not None and math.isfinite(val_loss):
            scalars["episode/final_val_loss"] = float(val_loss)
            if self.initial_val_loss:
                scalars["episode/relative_val_loss"] = float(val_loss) / float(self.initial_val_loss)
        objective = info.get("objective")
        if objective is not None:
            scalars["episode/J"] = float(objective)
            reference = info.get("reference_objective")
            if reference is not None:  # the env's reference="uniform"
                scalars["episode/J_uniform"] = float(reference)
                scalars["episode/J_difference"] = float(objective) - float(reference)
        if "stopped" in info:
            scalars["episode/stopped"] = float(bool(info["stopped"]))
        if "diverged" in info:
            scalars["episode/diverged"] = float(bool(info["diverged"]))
        return scalars


class PeriodicCallback(BaseCallback):
    """Calls :meth:`_on_period` at the first rollout start after every ``every`` timesteps.

    Periods are aligned to multiples of ``every`` (so a resumed run keeps the
    same schedule), and the hook runs between rollouts: after the PPO update,
    when model, optimizer and VecNormalize statistics agree with
    ``num_timesteps``.

    .. warning:: With ``n_steps * n_envs`` larger than ``every``, the hook
       runs once per rollout, not once per ``every`` timesteps.
    """

    def __init__(self, every: int, verbose: int = 0) -> None:
        super().__init__(verbose)
        if every < 1:
            raise ValueError(f"every must be >= 1 timestep, got {every!r}")
        self.every = int(every)
        self._period = 0

    def _on_training_start(self) -> None:
        self._period = self.model.num_timesteps // self.every

    def _on_rollout_start(self) -> None:
        period = self.model.num_timesteps // self.every
        if period > self._period:
            self._period = period
            self.num_timesteps = self.model.num_timesteps
            self._on_period()

    def _on_step(self) -> bool:
        return True

    def _on_period(self) -> None:
        """Override: what to do every ``every`` timesteps."""


class CallOnPeriod(PeriodicCallback):
    """Calls ``function()`` every ``every`` timesteps (see :class:`PeriodicCallback`)."""

    def __init__(self, every: int, function: Callable[[], Any], verbose: int = 0) -> None:
        super().__init__(every, verbose)
        self.function = function

    def _on_period(self) -> None:
        self.function()


class RolloutBoundary(BaseCallback):
    """Knows whether PPO is collecting a rollout, and from which timestep.

    ``collecting_since`` is ``num_timesteps`` at the start of the rollout being
    collected, None from a rollout's end until the next one starts (the PPO
    update), and ``num_timesteps`` once ``learn()`` has returned. While it is
    set, the weights, the optimizer and the VecNormalize statistics are those of
    that timestep (plus the observations seen since), so a run stopped then can
    save a checkpoint there.

    .. warning:: It must come first in a ``CallbackList``: a later callback's
       ``on_rollout_end`` already runs in the update's window.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.collecting_since: int | None = None

    def _on_rollout_start(self) -> None:
        self.collecting_since = int(self.model.num_timesteps)

    def _on_rollout_end(self) -> None:
        self.collecting_since = None

    def _on_training_end(self) -> None:
        # learn() returned after its last update: the weights are those of num_timesteps.
        # A callback that ended a rollout early leaves it at that rollout's start.
        if self.collecting_since is None:
            self.collecting_since = int(self.model.num_timesteps)

    def _on_step(self) -> bool:
        return True


class GateNoiseSchedule(BaseCallback):
    """Narrows some action entries' exploration noise linearly over training: the layer gates by default.

    At every rollout start it sets ``entries`` of the policy's log std to
    ``start + (final - start) * min(1, num_timesteps / total_timesteps)`` and
    records the value as ``tag`` (``train/gates_log_std``). Why: under wide
    noise the deployed (mean) action is not the behaviour PPO rewarded; a
    narrow noise at the end makes them agree. A gate is a clipped action
    (``ppo.gates_log_std_final``); the steps entry stops the job below -0.5,
    so a noisy policy stops where its mean does not yet
    (``ppo.steps_log_std_final``, ``tag="train/steps_log_std"``).

    .. warning:: It overwrites PPO's own update of these entries' std every
       rollout: their std follows the schedule, not the gradient.
    """

    def __init__(
        self,
        entries: slice,
        start: float,
        final: float,
        total_timesteps: int,
        verbose: int = 0,
        tag: str = "train/gates_log_std",
    ) -> None:
        super().__init__(verbose)
        if total_timesteps < 1:
            raise ValueError(f"total_timesteps must be >= 1, got {total_timesteps!r}")
        self.entries = entries
        self.start = float(start)
        self.final = float(final)
        self.total_timesteps = int(total_timesteps)
        self.tag = tag

    def log_std_at(self, timesteps: int) -> float:
        """The entries' log std the schedule sets at ``timesteps``."""
        fraction = min(1.0, max(0.0, timesteps / self.total_timesteps))
        return self.start + (self.final - self.start) * fraction

    def _on_rollout_start(self) -> None:
        import torch

        value = self.log_std_at(self.model.num_timesteps)
        with torch.no_grad():
            self.model.policy.log_std[self.entries] = value
        self.logger.record(self.tag, value)

    def _on_step(self) -> bool:
        return True


class SB3Controller:
    """A controller for ``allocator.run_job`` that acts with an SB3 model, as during training.

    Normalises each raw observation with the VecNormalize observation
    statistics (read only: evaluation never updates them), takes the model's
    deterministic action and maps it with the spec. Each job runs with the
    spec's rules and ``selection_gate`` (:func:`allocator.policy.use_policy_spec`),
    as the exported policy runs it.
    """

    name = "policy"

    def __init__(self, model, vec_normalize, spec: AllocationSpec, selection_gate: float | None = None) -> None:
        self.model = model
        self.vec_normalize = vec_normalize
        self.spec = spec
        self.selection_gate = selection_gate

    def reset(self, job) -> None:
        use_policy_spec(job, self.spec, self.selection_gate)

    def act(self, observation) -> Allocation:
        obs = np.asarray(observation, dtype=np.float32)
        if self.vec_normalize is not None and self.vec_normalize.norm_obs:
            obs = self.vec_normalize.normalize_obs(obs)
        action, _ = self.model.predict(obs, deterministic=True)
        return self.spec.to_allocation(action)


class HeldOutEvaluation:
    """The current policy, ``uniform`` and ``early-stopping`` on the same fixed jobs and seeds.

    Each job is built anew from the same seed for each controller by
    ``job_factory(index)``; the baselines' results do not change while the
    agent trains, so they are computed once and kept. Training uses it twice: on
    held-out jobs (``eval/``, to watch transfer; never to choose) and, with
    ``training.validation_jobs``, on jobs of the training distribution
    (``validation/``, to choose which policy to export).

    Args:
        job_factory: ``job_factory(index) -> TrainingJob``, a fresh job each call,
            the same job for the same index.
        n_jobs: how many jobs.
        spec: the allocation spec the agent was trained with.
        objective: the J parameters of training.
        prefix: the TensorBoard section of the scalars ``run`` returns.
        selection_gate: the training envs' ``selection_gate``; the policy's
            runs use it with the spec's rules, as the exported policy does.
            The baselines run without rules.
    """

    def __init__(
        self,
        job_factory: Callable[[int], Any],
        n_jobs: int,
        spec: AllocationSpec,
        objective: Objective,
        prefix: str = "eval",
        selection_gate: float | None = None,
    ) -> None:
        self.job_factory = job_factory
        self.selection_gate = selection_gate
        self.n_jobs = int(n_jobs)
        self.spec = spec
        self.objective = objective
        self.prefix = prefix
        self._baselines: dict[str, list] = {}

    def baseline_results(self, name: str) -> list:
        """The baseline's RunResult per job, under the agent's spec; run on the first call only."""
        from allocator.runner import run_job

        if name not in self._baselines:
            results = []
            for index in range(self.n_jobs):
                job = self.job_factory(index)
                job.use_spec(self.spec)
                results.append(run_job(job, name, objective=self.objective))
            self._baselines[name] = results
        return self._baselines[name]

    def uniform_results(self) -> list:
        return self.baseline_results("uniform")

    def run(self, model, vec_normalize) -> dict[str, float]:
        """Evaluate; returns the ``{prefix}/*`` scalars (``J_difference``: mean of J policy - J uniform)."""
        from allocator.runner import run_job

        started = time.perf_counter()
        uniform = self.uniform_results()
        controller = SB3Controller(model, vec_normalize, self.spec, self.selection_gate)
        policy = [
            run_job(self.job_factory(i), controller, objective=self.objective) for i in range(self.n_jobs)
        ]
        to_target_policy, to_target_uniform, reached = [], [], []
        for mine, theirs in zip(policy, uniform):
            target = theirs.best_val_loss
            mine_fraction = mine.compute_to_reach(target)
            reached.append(math.isfinite(mine_fraction))
            to_target_policy.append(mine_fraction if math.isfinite(mine_fraction) else NEVER_REACHED)
            to_target_uniform.append(theirs.compute_to_reach(target))
        j_policy = np.array([r.objective for r in policy])
        j_uniform = np.array([r.objective for r in uniform])
        j_early_stopping = np.array([r.objective for r in self.baseline_results("early-stopping")])
        scalars = {
            "J_policy": float(j_policy.mean()),
            "J_uniform": float(j_uniform.mean()),
            "J_difference": float((j_policy - j_uniform).mean()),
            "wins": float(np.sum(j_policy < j_uniform)),
            "J_early_stopping": float(j_early_stopping.mean()),
            "wins_over_early_stopping": float(np.sum(j_policy < j_early_stopping)),
            "compute_to_target_policy": float(np.mean(to_target_policy)),
            "compute_to_target_uniform": float(np.mean(to_target_uniform)),
            "target_reached_policy": float(np.mean(reached)),
            "final_val_loss_policy": float(np.mean([r.final_val_loss for r in policy])),
            "final_val_loss_uniform": float(np.mean([r.final_val_loss for r in uniform])),
            "compute_fraction_policy": float(np.mean([r.compute_fraction for r in policy])),
            "diverged_policy": float(np.mean([r.diverged for r in policy])),
            "seconds": time.perf_counter() - started,
        }
        return {f"{self.prefix}/{name}": value for name, value in scalars.items()}


class HeldOutEvaluationCallback(PeriodicCallback):
    """Every ``every`` timesteps, evaluate the current policy against ``uniform`` on held-out jobs.

    The policy acts deterministically on observations normalised with the
    training VecNormalize's current statistics, which the evaluation does not
    update. Results go to TensorBoard under ``eval/`` and are kept in
    :attr:`history` as ``(timesteps, scalars)``.
    """

    def __init__(self, evaluation: HeldOutEvaluation, every: int, verbose: int = 0) -> None:
        super().__init__(every, verbose)
        self.evaluation = evaluation
        self.history: list[tuple[int, dict[str, float]]] = []

    def _on_period(self) -> None:
        self.evaluate()

    def evaluate(self) -> dict[str, float]:
        """Run one evaluation now and log it at the current timestep."""
        scalars = self.evaluation.run(self.model, self.model.get_vec_normalize_env())
        step = self.model.num_timesteps
        writer = tensorboard_writer(self.logger)
        if writer is not None:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)
            writer.flush()
        self.history.append((step, scalars))
        return scalars
