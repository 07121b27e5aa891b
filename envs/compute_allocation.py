"""The Gymnasium environment: allocate a real training job's compute, one interval per step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from allocator.allocation import AllocationSpec, check_selection_gate
from allocator.job import TrainingJob
from allocator.objective import Objective, ObjectiveMeter
from allocator.policy import use_policy_spec
from allocator.stats import OBSERVATION_CLIP, ObservationLayout


class ComputeAllocationEnv(gym.Env):
    """Decide where a real PyTorch training job spends its compute budget.

    Each episode is one supervised training job (real forward and backward
    passes on real data), drawn from a job distribution at ``reset``. Each step
    applies one :class:`~allocator.Allocation` for one interval of optimizer
    steps. The episode's return is ``-J``, the C/R-scaled objective.

    ## Action space

    ``Box(-1, 1, (K + 1 + G + 1,), float32)``, mapped by the job's
    :class:`~allocator.AllocationSpec`. The zero action is standard training.

    =========  ==================  ===========================================
    entries    meaning             mapping
    =========  ==================  ===========================================
    0 .. K-1   sample shares       ``softmax(3 a)``: share of each minibatch
                                   drawn from loss-quantile group k
    K          keep fraction       1 for a >= 0; below 0 from 2/3 (break-even
                                   with a plain step) down to
                                   ``min_keep_fraction`` at -1: share of the
                                   batch (highest loss first) that gets a
                                   backward pass
    K+1..K+G   layer gates         ``clip(1 + a, 0, 1)``, mapped onto
                                   ``[min_layer_gate, 1]``: probability each
                                   layer group is trained at a step
    K+G+1      steps               ``max_steps`` for a >= 0, down to 1 at
                                   a = -0.5; a < -0.5 stops the job
    =========  ==================  ===========================================

    Out-of-range actions are clipped; non-finite ones raise ``ValueError``.
    With ``dead_zone`` d > 0, entries within d of the zero action give exactly
    standard training (see :class:`~allocator.AllocationSpec`).

    ## Observation space

    ``Box(-10, 10, (16 + 4 K + 4 G,), float32)``: scale-free loss and gradient
    statistics laid out as ``[global | K x per-sample-group | G x
    per-layer-group]``; :mod:`allocator.stats` documents every feature and
    :class:`~allocator.ObservationLayout` reads them group by group.

    ## Reward

    Minus the increment of J in the interval: ``-(C_t / R) * l_t``, where
    ``l_t`` is the validation loss relative to the initial one; the last step
    also carries ``-(U (1 - s) l_T + w l_T)`` for the unused budget U and the
    final loss. The undiscounted return is ``-J``.

    ## Episode end

    ``terminated=True`` when the budget is spent, when the policy stops
    (steps = 0), or when the job diverges (NaN or inf loss; charged at
    ``divergence_loss`` relative loss, and ``info["diverged"]`` is True).
    ``truncated`` only comes from the registered ``max_episode_steps`` limit.

    ## Arguments

    * ``split``: ``"train"`` or ``"heldout"``, the job distribution to sample.
    * ``sample_groups``, ``layer_groups``, ``max_steps``, ``min_keep_fraction``,
      ``dead_zone``, ``min_layer_gate``: the :class:`~allocator.AllocationSpec`.
    * ``selection_gate``: the jobs' selection gate (``TrainingJob.selection_gate``):
      an interval asking for selective backprop runs the whole batch unless the
      last interval's gradient alignment reached this threshold; ``None``: off.
    * ``stop_before_budget``: the jobs skip the interval that would end the
      budget (``TrainingJob.stop_before_budget``; part of the spec, so the
      exported policy keeps it). The uniform reference runs without it.
    * ``share_prior``: ``"uniform"`` or ``"loss"``: with ``"loss"`` the jobs
      draw the action's sample shares times loss-proportional ones
      (``TrainingJob.share_prior``; part of the spec). The uniform reference
      runs without it.
    * ``token_dropping``: ``[keep, until]`` or ``None``: on jobs whose model has
      tokens, steps see ``keep`` of them until ``until`` of the budget
      (``TrainingJob.token_dropping``; part of the spec). The uniform reference
      runs without it.
    * ``layer_lever``: ``"all"``, ``"convolutional"`` or ``"cnn-first-group"``:
      with ``"convolutional"`` the action's layer gates act only on jobs whose
      model has a convolution, with ``"cnn-first-group"`` only the first gate
      does, on those jobs (``TrainingJob.layer_lever``; part of the spec).
    * ``gate_mapping``: ``"linear"`` or ``"binary"``: with ``"binary"`` a gate
      entry freezes its layer group for the whole interval or trains it at
      every step (``AllocationSpec.gate_mapping``; part of the spec).
    * ``gate_decision``: ``"interval"`` or ``"job"``: with ``"job"`` the layer
      gates the job runs on its first interval hold to its end, so a freeze is
      one decision per episode (``AllocationSpec.gate_decision``; part of the
      spec).
    * ``s``, ``w``, ``divergence_loss``: the :class:`~allocator.Objective`.
    * ``jobs``: a job source replacing the built-in distribution: an object
      with ``sample(rng, spec) -> TrainingJob``.
    * ``data_bound_share``: share of data-bound jobs among the built-in
      distribution's sampled recipes (default 0.5; ignored with ``jobs``).
    * ``families``: model families of the built-in distribution's jobs
      (default ``None``: all of the split's; ignored with ``jobs``).
    * ``balance_families``: draw the built-in distribution's model family
      evenly first (default ``False``; ignored with ``jobs``).
    * ``family_weights``: draw it first with these relative weights instead,
      e.g. ``{"cnn1d": 4}``; a family not named weighs 1 (default ``None``;
      ignored with ``jobs``).
    * ``many_epoch_share``: share of the built-in distribution's sampled
      compute-bound recipes that run many epochs on a smaller clean set with
      a slower learning rate, so that epochs alone do not tell the regime
      (default 0; ignored with ``jobs``; see
      :class:`~allocator.jobs.JobDistribution`).
    * ``num_threads``: torch threads for this env's process (default 1, so
      several envs in subprocesses share the cores well).
    * ``device``: device of the sampled jobs (default ``"cpu"``).
    * ``reference``: ``None`` (default: the return is ``-J``) or ``"uniform"``:
      the last reward also carries the J of standard training on the same job
      and seed, so the return is ``J_uniform - J`` (positive when the policy
      beats standard training). Jobs differ far more from each other than
      allocations do; this removes the job from the return's variance. It
      costs one uniform run per new job (cached per job).
    * ``job_pool``, ``job_pool_seed``: draw jobs from a fixed pool of this many
      jobs instead of a fresh one each episode (so reference runs are reused).
    * ``ignored_features``: names of observation features the agent does not
      see (see :data:`allocator.stats.FEATURE_NAMES`): they are 0 in every
      observation, in every section where the name appears. An exported policy
      records them and zeroes the same entries of a job's observation, so it
      sees at apply time what it saw in training.
    * ``render_mode``: ``None`` or ``"ansi"`` (``render()`` returns a line
      describing the last interval).

    ``reset(seed=...)`` samples a job with ``self.np_random``;
    ``reset(options={"job": job})`` runs a given :class:`~allocator.TrainingJob`
    (its spec is set to the env's).

    ``info`` holds ``allocation``, ``compute_used`` and ``compute_fraction``,
    ``val_loss``, ``train_loss``, ``job``, ``diverged``, and at the end
    ``objective`` (J). With a ``layer_lever`` other than ``all``, or
    ``gate_decision="job"``, it also
    holds ``acting_layer_gates``: how many of the action's layer gates, from
    the first, the job ran (``TrainingJob.acting_layer_gates``; 0 on a model
    without a convolution), and ``layer_gates_run``, the gates the interval
    ran. Trap: ``allocation`` is what the action asked for, gates the job did
    not run included (and with ``gate_decision="job"`` the later intervals'
    gates, which the job ignores).

    ## Version history

    * v0: first version.
    """

    # render_fps is declared only because Gymnasium's checker asks for it; ansi frames are text
    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        split: str = "train",
        sample_groups: int = 4,
        layer_groups: int = 4,
        max_steps: int = 10,
        min_keep_fraction: float = 0.1,
        min_layer_gate: float = 0.0,
        dead_zone: float = 0.0,
        selection_gate: float | None = None,
        stop_before_budget: bool = False,
        share_prior: str = "uniform",
        token_dropping=None,
        layer_lever: str = "all",
        gate_mapping: str = "linear",
        gate_decision: str = "interval",
        s: float = 0.2,
        w: float = 1.0,
        divergence_loss: float = 3.0,
        jobs=None,
        num_threads: int | None = 1,
        device: str = "cpu",
        render_mode: str | None = None,
        reference: str | None = None,
        job_pool: int | None = None,
        job_pool_seed: int = 0,
        ignored_features: Sequence[str] = (),
        data_bound_share: float = 0.5,
        families: Sequence[str] | None = None,
        balance_families: bool = False,
        many_epoch_share: float = 0.0,
        family_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        if reference not in (None, "uniform"):
            raise ValueError(f"reference must be None or 'uniform', got {reference!r}")
        if job_pool is not None and (not isinstance(job_pool, int) or job_pool < 1):
            raise ValueError(f"job_pool must be None or an integer >= 1, got {job_pool!r}")
        self.reference = reference
        pool_rng = np.random.default_rng(job_pool_seed)
        self._job_pool = [int(x) for x in pool_rng.integers(0, 2**31 - 1, size=job_pool)] if job_pool else None
        self._reference_cache: dict[int, float] = {}
        self._reference_objective = 0.0
        self._last_info: dict[str, Any] = {}
        self.allocation_spec = AllocationSpec(
            sample_groups=sample_groups,
            layer_groups=layer_groups,
            max_steps=max_steps,
            min_keep_fraction=min_keep_fraction,
            min_layer_gate=min_layer_gate,
            dead_zone=dead_zone,
            stop_before_budget=stop_before_budget,
            share_prior=share_prior,
            token_dropping=token_dropping,
            layer_lever=layer_lever,
            gate_mapping=gate_mapping,
            gate_decision=gate_decision,
        )
        self.selection_gate = check_selection_gate(selection_gate)
        self.objective = Objective(s=s, w=w, divergence_loss=divergence_loss)
        self.layout = ObservationLayout(self.allocation_spec)
        self.ignored_features = tuple(ignored_features)
        self._ignored_positions = self.layout.positions(self.ignored_features)
        if jobs is None:
            from allocator.jobs import JobDistribution

            jobs = JobDistribution(
                split=split,
                device=device,
                data_bound_share=data_bound_share,
                families=families,
                balance_families=balance_families,
                many_epoch_share=many_epoch_share,
                family_weights=family_weights,
            )
        if not callable(getattr(jobs, "sample", None)):
            raise ValueError("jobs must have sample(rng, spec) -> TrainingJob")
        self.jobs = jobs
        self.split = split
        self.num_threads = num_threads
        self.device = device
        self.observation_space = spaces.Box(
            -OBSERVATION_CLIP, OBSERVATION_CLIP, shape=(self.layout.size,), dtype=np.float32
        )
        self.action_space = spaces.Box(
            -1.0, 1.0, shape=(self.allocation_spec.action_size,), dtype=np.float32
        )
        self.job: TrainingJob | None = None
        self._meter: ObjectiveMeter | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        job = (options or {}).get("job")
        self._reference_objective = 0.0
        if job is None:
            # every job is rebuilt from its own seed, so a reference run can rebuild it exactly
            if self._job_pool is not None:
                job_seed = self._job_pool[int(self.np_random.integers(len(self._job_pool)))]
            else:
                job_seed = int(self.np_random.integers(0, 2**31 - 1))
            job = self._build_job(job_seed)
            if self.reference == "uniform":
                self._reference_objective = self._uniform_objective(job_seed)
        elif not isinstance(job, TrainingJob):
            raise ValueError(f"options['job'] must be a TrainingJob, got {type(job).__name__}")
        use_policy_spec(job, self.allocation_spec, self.selection_gate)
        self.job = job
        observation = self._visible(job.observation())
        self._meter = ObjectiveMeter(self.objective, job.initial_val_loss)
        info = {
            "job": job.name,
            "compute_used": 0,
            "compute_fraction": 0.0,
            "budget": job.budget,
            "val_loss": job.initial_val_loss,
            "diverged": False,
        }
        self._last_info = info
        return observation, info

    def step(self, action):
        if self.job is None or self._meter is None:
            raise RuntimeError("call reset() before step()")
        if self.job.done:
            raise RuntimeError("the episode has ended; call reset()")
        action = np.asarray(action, dtype=np.float64)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action.tolist()}")
        allocation = self.allocation_spec.to_allocation(action)
        report = self.job.advance(allocation)
        reward = 0.0
        if report.steps > 0 or report.diverged:
            reward -= self._meter.add_interval(report.compute_fraction, report.val_loss, report.diverged)
        terminated = report.done
        info = {
            "job": self.job.name,
            "allocation": allocation,
            "steps": report.steps,
            "compute_used": report.compute_used,
            "compute_fraction": report.compute_used / report.budget,
            "budget": report.budget,
            "val_loss": report.val_loss,
            "train_loss": report.train_loss,
            "val_accuracy": report.val_accuracy,
            "diverged": report.diverged,
        }
        spec = self.allocation_spec
        if spec.layer_lever != "all" or spec.gate_decision == "job":
            # the job may run other gates than the action asks (the lever, a held decision): say which
            info["acting_layer_gates"] = self.job.acting_layer_gates
            info["layer_gates_run"] = report.allocation.layer_gates
        if terminated:
            reward -= self._meter.finish()
            reward += self._reference_objective
            info["objective"] = self._meter.value
            if self.reference:
                info["reference_objective"] = self._reference_objective
            info["stopped"] = report.stopped
        self._last_info = info
        return self._visible(report.observation), float(reward), terminated, False, info

    def _visible(self, observation: np.ndarray) -> np.ndarray:
        """The observation with the ignored features at 0 (a copy: the job's own stays whole)."""
        if not self._ignored_positions:
            return observation
        observation = observation.copy()
        observation[self._ignored_positions] = 0.0
        return observation

    def _build_job(self, job_seed: int) -> TrainingJob:
        return self.jobs.sample(np.random.default_rng(job_seed), spec=self.allocation_spec)

    def _uniform_objective(self, job_seed: int) -> float:
        """J of standard training on the job of this seed: run once, then cached."""
        if job_seed not in self._reference_cache:
            from allocator.runner import run_job

            result = run_job(self._build_job(job_seed), "uniform", objective=self.objective)
            self._reference_cache[job_seed] = result.objective
        return self._reference_cache[job_seed]

    def render(self) -> str | None:
        """With ``render_mode="ansi"``: one line about the job and its last interval."""
        if self.render_mode != "ansi":
            return None
        info = self._last_info
        allocation = info.get("allocation")
        if allocation is None:
            return f"{info.get('job', '-')}: start, val loss {info.get('val_loss', float('nan')):.4f}"
        shares = " ".join(f"{x:.2f}" for x in allocation.sample_shares)
        gates = " ".join(f"{x:.2f}" for x in allocation.layer_gates)
        return (
            f"{info['job']}: {100 * info['compute_fraction']:5.1f}% of budget, val loss {info['val_loss']:.4f} | "
            f"shares [{shares}] keep {allocation.keep_fraction:.2f} gates [{gates}] steps {allocation.steps}"
        )
