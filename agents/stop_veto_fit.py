"""Fit a stop veto for a trained policy from hindsight on standard training's curves.

A policy learns when to stop from the reward alone, and the published ones
stop some slow learners early (BENCHMARKS.md section 5, forty-first round).
A :class:`~allocator.stop_veto.StopVeto` is fitted to hindsight instead:

1. standard training (``uniform``) runs, with the policy's spec (its
   interval length), on the jobs given (``compute-allocator stop-veto``
   draws 64 from the train split), recording the observation after every
   interval;
2. every interval but the first and the last is labelled "continuing pays"
   when some later stop on the same curve, the full run included, gives a
   lower J (at ``Objective()``'s defaults), and weighted by the J at stake;
3. a logistic regression on the standardised global features is fitted to
   the weighted labels; its threshold is its own (probability 1/2).

With ``only_its_stops`` the regression is fitted only on the intervals after
which the policy asks to stop, where a veto acts.

.. warning:: The labels come from uniform's curves; under the policy the
   curve is its own (selection, frozen layers), read through the same
   features. Measured: on the published learned freeze the veto runs the
   slow learners on and costs little elsewhere; on ``default``, which
   already runs them further, it cost J on the train split (forty-second
   round). Check a vetoed policy on jobs it was not fitted on before using it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from allocator.objective import Objective
from allocator.policy import AllocatorPolicy
from allocator.processes import run_in_processes
from allocator.runner import run_job
from allocator.stats import GLOBAL_FEATURES, ObservationLayout
from allocator.stop_veto import StopVeto

#: the labelled rows of one job: (global features, continuing pays, J at stake)
Rows = list[tuple[np.ndarray, bool, float]]


class _Recorder:
    """Uniform, recording every observation it is shown."""

    name = "uniform"

    def __init__(self) -> None:
        from allocator.baselines import make

        self.inner = make("uniform")
        self.observations: list[np.ndarray] = []

    def reset(self, job) -> None:
        self.inner.reset(job)
        self.layout = ObservationLayout(job.spec)
        self.observations = []

    def act(self, observation):
        self.observations.append(np.array(observation))
        return self.inner.act(observation)


def labelled_intervals(job, policy: AllocatorPolicy | None = None) -> Rows:
    """``[(global features, continuing pays, J at stake)]`` after each interval of uniform's run on
    the fresh ``job`` (its spec as it is) but the last, after which nothing follows; the full run
    is one of the later stops. With ``policy``, only the intervals after which it asks to stop."""
    recorder = _Recorder()
    result = run_job(job, recorder)
    stop_j = Objective().stopped_values(result.curve)  # [k]: J stopped after interval k
    rows = []
    # observations[k] is what the controller saw after interval k (observations[0]: before any)
    for k, observation in enumerate(recorder.observations[1:], start=1):
        if policy is not None and policy.act(observation).steps > 0:
            continue
        later = min(stop_j[k + 1 :])
        rows.append((observation[: recorder.layout.global_size], later < stop_j[k], abs(later - stop_j[k])))
    return rows


@functools.cache
def _policy_without_veto(policy_path: str) -> AllocatorPolicy:
    """Loaded once per worker process, not once per job (its ``act`` keeps no state between jobs)."""
    return AllocatorPolicy.load(policy_path).with_stop_veto(None)


def _fit_job(task: tuple) -> tuple[str, Rows]:
    """One job's rows: ``task`` is ``(name, recipe, spec, policy directory or None)``."""
    name, recipe, spec, policy_path = task
    torch.set_num_threads(1)
    job = recipe.build(seed=0, device="cpu")
    job.use_spec(spec)
    policy = None if policy_path is None else _policy_without_veto(policy_path)
    return name, labelled_intervals(job, policy)


def fit_stop_veto(
    policy_path: str | Path,
    recipes: dict,
    workers: int = 1,
    only_its_stops: bool = False,
    on_job: Callable[[int], None] | None = None,
    notes: dict | None = None,
) -> StopVeto:
    """The veto for the policy in ``policy_path``, fitted on uniform's runs of ``recipes``.

    Args:
        policy_path: the policy directory; its spec sets the intervals (a veto it carries is ignored).
        recipes: ``{name: JobRecipe}`` to run, e.g. ``JobDistribution.distinct_recipes(...)``;
            each is built with seed 0.
        workers: processes (spawned, one torch thread each; 1 runs them in this one).
        only_its_stops: fit only on the intervals after which the policy asks to stop.
        on_job: called with the number of jobs done, after each (a progress bar).
        notes: more to record in the veto's ``extra`` (where the jobs came from).
    """
    from sklearn.linear_model import LogisticRegression

    policy = AllocatorPolicy.load(policy_path)
    if not recipes:
        raise ValueError("a stop veto needs at least one job to fit on")
    acting = str(policy_path) if only_its_stops else None
    _policy_without_veto.cache_clear()  # with workers=1 the jobs run here: never a policy of an earlier fit
    tasks = [(name, recipe, policy.spec, acting) for name, recipe in sorted(recipes.items())]
    data = dict(run_in_processes(_fit_job, tasks, workers, on_job))
    rows = [row for name in sorted(data) for row in data[name]]
    if not rows:
        raise ValueError(
            "no interval to fit on: the jobs ran too few intervals"
            + (", or the policy never asks to stop on them" if only_its_stops else "")
        )
    x = np.stack([features for features, _, _ in rows]).astype(np.float64)
    y = np.array([label for _, label, _ in rows])
    if y.all() or not y.any():
        same = "continuing pays" if y.all() else "stopping pays"
        raise ValueError(f"every interval is labelled the same ({same}): fit on more jobs")
    weight = np.array([stake for _, _, stake in rows])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-8] = 1.0  # a feature constant on these jobs carries no weight
    standardized = (x - mean) / scale
    model = LogisticRegression(max_iter=5000).fit(standardized, y, sample_weight=weight / weight.mean())
    return StopVeto(
        features=GLOBAL_FEATURES,
        mean=tuple(mean.tolist()),
        scale=tuple(scale.tolist()),
        weights=tuple(model.coef_[0].tolist()),
        intercept=float(model.intercept_[0]),
        extra={
            "fitted_for": policy.name,
            "only_its_stops": only_its_stops,
            "jobs": sorted(data),
            "intervals": len(rows),
            "continue_pays": int(y.sum()),
            "training_accuracy": float(model.score(standardized, y)),
            **(notes or {}),
        },
    )
