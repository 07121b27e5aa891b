"""Distil a trained policy, usually an ensemble, into one actor that imitates its actions.

An ensemble of several seeds' policies acts better on new jobs than its
members do (BENCHMARKS.md section 5, seventh round), but it is several
networks, each with its own normalisation. Distillation trains one actor of
the members' architecture to give the teacher's deterministic action on the
states that matter: those the *student* visits when it acts (DAgger, Ross
et al. 2011). Each round runs real training jobs of the teacher's own job
distribution, records every interval's raw observation with the teacher's
action for it, and fits the student to all the labels gathered so far:

* round 1: the teacher acts (the states an ideal student would see);
* rounds 2 and later: the student of the previous round acts, so the states
  it drifts into, where it does not yet act as the teacher would, get labels.

The student is an ordinary policy directory (``kind`` attention or mlp,
safetensors + JSON), loaded, evaluated and applied like a trained one. Its
observation statistics are the mean and variance of the raw observations
gathered, used as VecNormalize's are (clipped standardisation).

.. warning:: The student imitates the teacher only on the teacher's job
   distribution (``extra.config.env`` of the first member's policy.json, the
   jobs it was trained on). Distilling on other jobs needs ``config``.
   Episodes are real training runs: the defaults (6 rounds of 96 jobs of
   the ``quick`` distribution) take about 7 minutes on two cores. Fewer
   labels (3 rounds of 48) fit the labels as closely but won fewer pairs
   on the train split (BENCHMARKS.md section 5, ninth round).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allocator.allocation import STOP_BELOW
from allocator.policy import (
    OBSERVATION_MEAN,
    OBSERVATION_VAR,
    AllocatorPolicy,
    build_actor,
    observation_layout_sizes,
    standardize,
)
from allocator.processes import run_in_processes
from allocator.stats import ObservationLayout

#: VecNormalize's defaults, which every trained policy here was normalised with.
CLIP_OBS = 10.0
EPSILON = 1e-8


@dataclass
class DistillSettings:
    """How much to gather and how hard to fit (the ``distill`` command's options)."""

    rounds: int = 6
    """DAgger rounds: the teacher acts in the first, the student in the rest."""
    episodes: int = 96
    """Training jobs run per round (each one episode, 10 to 40 intervals)."""
    epochs: int = 200
    """Passes over all labels gathered so far, after each round."""
    learning_rate: float = 1e-3
    batch_size: int = 256
    seed: int = 0
    """Seeds the student's initial weights, the minibatch order and the jobs drawn."""
    workers: int = 2
    """Processes that run the episodes (one torch thread each)."""

    def validate(self) -> DistillSettings:
        for name in ("rounds", "episodes", "epochs", "batch_size", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)) or (
            self.learning_rate <= 0
        ):
            raise ValueError(f"--learning-rate must be a number > 0, got {self.learning_rate!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed!r}")
        return self


@dataclass
class RoundReport:
    """What one DAgger round gathered and how well the student then imitated the teacher."""

    round: int
    actor: str  # "teacher" or "student": who acted in this round's episodes
    episodes: int
    samples: int  # labels gathered in this round
    mean_objective: float  # J of this round's episodes, under the actor that acted
    stopped: int  # episodes the actor stopped before the budget was spent
    mse: float  # the student's squared error on every label so far, after fitting
    stop_agreement: float  # share of labels where student and teacher agree on stopping


# ------------------------------------------------------------------ the teacher's job distribution


def episode_env_kwargs(config) -> dict[str, Any]:
    """``gymnasium.make`` arguments for gathering: the config's env with the raw return and every feature.

    No uniform reference runs (only observations and actions are needed),
    and no hidden features: each policy hides its own ignored features itself.
    """
    from agents.training import env_kwargs

    kwargs = env_kwargs(config)
    kwargs.update(reference=None, ignored_features=[])
    return kwargs


# ------------------------------------------------------------------ gathering (worker processes)

# A process's envs (their job pools are built once) and teachers. With one worker the episodes
# run in the caller's process, where later calls may bring other jobs: envs are keyed by them.
_ENVS: dict[str, Any] = {}
_TEACHERS: dict[str, AllocatorPolicy] = {}


def _env(kwargs: dict[str, Any], rank: int):
    kwargs = dict(kwargs)
    if kwargs.get("job_pool"):  # as training's env number `rank` draws from its own pool
        kwargs["job_pool_seed"] = kwargs.get("job_pool_seed", 0) + rank
    key = json.dumps(kwargs, sort_keys=True)
    if key not in _ENVS:
        import gymnasium

        import envs

        _ENVS[key] = gymnasium.make(envs.ENV_ID, **kwargs)
    return _ENVS[key]


def _teacher(path: str) -> AllocatorPolicy:
    if path not in _TEACHERS:
        _TEACHERS[path] = AllocatorPolicy.load(path)
    return _TEACHERS[path]


@dataclass
class _Episode:
    observations: np.ndarray  # (T, N) raw
    teacher_actions: np.ndarray  # (T, A)
    objective: float
    stopped: bool


def run_episode(task: tuple) -> _Episode:
    """One training job under the acting policy, every observation labelled with the teacher's action.

    ``task`` is ``(env kwargs, rank, seed, teacher directory, student parts or None)``;
    the student travels as its policy.json and tensors (``None``: the teacher acts).
    """
    kwargs, rank, seed, teacher_path, student_parts = task
    torch.set_num_threads(1)
    teacher = _teacher(teacher_path)
    acting = teacher
    if student_parts is not None:
        metadata, tensors = student_parts
        acting = AllocatorPolicy.from_parts(metadata, tensors, "student", "student", "student")
    env = _env(kwargs, rank)
    observation, _ = env.reset(seed=seed)
    observations, labels = [], []
    terminated = truncated = False
    info: dict = {}
    while not (terminated or truncated):
        label = teacher.action(observation)
        observations.append(np.asarray(observation, dtype=np.float32))
        labels.append(label)
        action = label if acting is teacher else acting.action(observation)
        observation, _, terminated, truncated, info = env.step(action)
    return _Episode(
        np.stack(observations),
        np.stack(labels),
        float(info.get("objective", math.nan)),
        bool(info.get("stopped", False)),
    )


# ------------------------------------------------------------------ fitting


def _members(teacher: AllocatorPolicy) -> list[AllocatorPolicy]:
    """An ensemble's members, or the policy itself."""
    return list(getattr(teacher, "members", [teacher]))


def _student_metadata(teacher: AllocatorPolicy, settings: DistillSettings, config) -> dict:
    members = _members(teacher)
    first = members[0].metadata
    # The student learns from today's observations, whatever version its teacher read, and
    # sees every feature in them (a teacher's ignored_features are not carried over).
    layout = ObservationLayout(teacher.spec)
    observation = {"size": layout.size, **observation_layout_sizes(layout), "features": layout.names()}
    return {
        "format": first["format"],
        "format_version": first["format_version"],
        "kind": first["kind"],
        "spec": teacher.spec.to_dict(),
        # the student runs its jobs under the teacher's rule, as the gathering env did
        **({} if teacher.selection_gate is None else {"selection_gate": teacher.selection_gate}),
        "observation": observation,
        "network": first["network"],
        "normalization": {"observation": True, "clip_obs": CLIP_OBS, "epsilon": EPSILON, "reward": False},
        "versions": first.get("versions", {}),
        "extra": {
            "distilled_from": teacher.name,
            "teacher": {"kind": teacher.kind, "members": [m.metadata.get("extra", {}) for m in members]},
            "distillation": asdict(settings),
            "config": config.to_dict(),
        },
    }


def _fit(
    actor: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    settings: DistillSettings,
    generator: torch.Generator,
) -> None:
    """Minimise the squared error between the actor's action means and the teacher's actions."""
    optimizer = torch.optim.Adam(actor.parameters(), lr=settings.learning_rate)
    actor.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            loss = torch.mean((actor(inputs[batch]) - targets[batch]) ** 2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    actor.eval()


def _mean_finite(values: Sequence[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan


def _stop_agreement(student_actions: np.ndarray, teacher_actions: np.ndarray) -> float:
    # the steps entry is the last of the action; below STOP_BELOW the job stops
    return float(np.mean((student_actions[:, -1] < STOP_BELOW) == (teacher_actions[:, -1] < STOP_BELOW)))


def distill(
    teacher_path: str | os.PathLike,
    settings: DistillSettings | None = None,
    config=None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[AllocatorPolicy, list[RoundReport]]:
    """Train one actor to act as the policy in ``teacher_path`` does; returns it and each round's report.

    Args:
        teacher_path: a policy directory (an ensemble or a single policy).
        settings: rounds, episodes, fitting; :class:`DistillSettings` defaults.
        config: the :class:`agents.config.TrainConfig` whose env gives the jobs;
            by default the teacher's own (:func:`agents.config.recorded_config`).
        on_progress: called as ``on_progress(description, done, total)`` after
            each episode (for a progress bar).

    The student has the architecture of the teacher's (first) member, and the
    teacher's stop veto if it carries one (the labels are the teacher's actions
    without it). Save it with ``student.save(DIR)``.
    """
    settings = (settings or DistillSettings()).validate()
    teacher_path = str(Path(teacher_path))
    teacher = AllocatorPolicy.load(teacher_path)
    from agents.config import recorded_config
    from agents.training import allocation_spec

    config = config if config is not None else recorded_config(teacher)

    if allocation_spec(config) != teacher.spec:
        raise ValueError(
            f"the job distribution's spec {allocation_spec(config)} differs from the teacher's {teacher.spec}"
        )
    kwargs = episode_env_kwargs(config)
    n_envs = max(1, int(config.training.n_envs))
    metadata = _student_metadata(teacher, settings, config)
    generator = torch.Generator().manual_seed(settings.seed)
    student: AllocatorPolicy | None = None
    actor = None
    observations: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    reports: list[RoundReport] = []
    for round_index in range(settings.rounds):
        parts = None
        if student is not None:
            parts = (metadata, student.tensors())
        # episode seeds never repeat across rounds: each round draws new jobs and job seeds
        first_seed = settings.seed * 1_000_003 + round_index * settings.episodes
        tasks = [
            (kwargs, episode % n_envs, first_seed + episode, teacher_path, parts)
            for episode in range(settings.episodes)
        ]
        description = f"round {round_index + 1}/{settings.rounds} ({'student' if parts else 'teacher'} acts)"

        def advance(done: int, description: str = description) -> None:
            if on_progress is not None:
                on_progress(description, done, settings.episodes)

        episodes = run_in_processes(run_episode, tasks, settings.workers, advance)
        observations += [episode.observations for episode in episodes]
        labels += [episode.teacher_actions for episode in episodes]

        raw = np.concatenate(observations).astype(np.float64)
        mean, var = raw.mean(axis=0), raw.var(axis=0)
        tensors = {OBSERVATION_MEAN: torch.from_numpy(mean), OBSERVATION_VAR: torch.from_numpy(var)}
        if actor is None:
            actor = _new_actor(metadata, teacher.spec, settings.seed)
        inputs = torch.from_numpy(standardize(raw, mean, var, EPSILON, CLIP_OBS))
        targets = torch.from_numpy(np.concatenate(labels).astype(np.float32))
        _fit(actor, inputs, targets, settings, generator)
        tensors.update({f"actor.{key}": value.detach().clone() for key, value in actor.state_dict().items()})
        student = AllocatorPolicy.from_parts(metadata, tensors, "student", "student", "distilled")
        predicted = student.action(raw)
        reports.append(
            RoundReport(
                round=round_index + 1,
                actor="student" if parts else "teacher",
                episodes=len(episodes),
                samples=sum(len(episode.observations) for episode in episodes),
                mean_objective=_mean_finite([episode.objective for episode in episodes]),
                stopped=sum(episode.stopped for episode in episodes),
                mse=float(np.mean((predicted - targets.numpy()) ** 2)),
                stop_agreement=_stop_agreement(predicted, targets.numpy()),
            )
        )
    assert student is not None
    # JSON has no NaN: an episode cut off by the env's step limit has no J
    student.metadata["extra"]["distillation"]["rounds_report"] = [
        {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in asdict(r).items()}
        for r in reports
    ]
    # a veto acts on the stops whatever network asks for them (it reads the job's observation)
    return student.with_stop_veto(teacher.stop_veto), reports


def _new_actor(metadata: dict, spec, seed: int) -> torch.nn.Module:
    """The student's untrained actor, its initial weights drawn from ``seed`` (torch's stream left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sizes = observation_layout_sizes(metadata["observation"])
        return build_actor(metadata["kind"], spec, sizes, metadata["network"])


def summary_lines(reports: Sequence[RoundReport]) -> list[str]:
    """One line per round, for the command's output."""
    return [
        f"round {r.round} ({r.actor} acts): {r.episodes} jobs, {r.samples} labels, mean J {r.mean_objective:.4f}, "
        f"{r.stopped} stopped early; student after fitting: squared error {r.mse:.5f}, "
        f"agrees on stopping {100 * r.stop_agreement:.1f} %"
        for r in reports
    ]
