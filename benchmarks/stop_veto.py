"""Fit a stop veto for a policy from hindsight, and write the policy with it.

BENCHMARKS.md section 5, forty-first and forty-second rounds. On uniform's
own curves of the train check's jobs, the published policies ask to stop
where a later stop would give a lower J far more often on the slow
learners than a logistic regression reading the same global features
does. This script fits that regression as a veto on a trained policy's
stops (:mod:`allocator.stop_veto`) and writes the policy with the veto in
its policy.json, as a new policy directory that ``compute-allocator apply``
and ``evaluate``, ``train_check.py`` and ``cnn_freeze_probe.py`` run like
any other:

    python benchmarks/stop_veto.py fit --policy P --jobs 64 --out runs/r42/P-vetoed

``fit`` runs uniform, with the policy's spec (its interval length), on
``--jobs`` distinct jobs drawn from the train split's distribution
(``many_epoch_share`` 0.5, as the recipes train), none of them a job of
``train_check.py`` or ``cnn_freeze_probe.py``. Every interval but the first
and the last is labelled "continuing pays" when some later stop on the same
curve, the full run included, gives a lower J (at ``Objective()``'s
defaults), weighted by the J at stake, and a standardised logistic
regression on the observation's global features is fitted to the labels;
its threshold is its own (probability 1/2). With ``--only-its-stops`` it is
fitted only on the intervals after which the policy asks to stop, where a
veto acts. A veto the policy already carries is replaced.

Trap: the labels come from uniform's curves; under a policy the curve is
its own (selection, a frozen stem), read through the same features.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import torch

from allocator import AllocatorPolicy
from allocator.baselines import make as make_baseline
from allocator.jobs import JobDistribution, names
from allocator.objective import Objective
from allocator.policy import CONFIG_FILE, WEIGHTS_FILE
from allocator.runner import run_job
from allocator.stats import GLOBAL_FEATURES, ObservationLayout
from allocator.stop_veto import StopVeto

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_transfer import distinct_recipes  # noqa: E402
from stopping_oracle import stopped_objectives  # noqa: E402
from train_check import job_sets  # noqa: E402

VETO_JOB_SEED = 4141  # apart from the check's and the probe's draws


class _Recorder:
    """Uniform, recording every observation it is shown."""

    name = "uniform"

    def __init__(self) -> None:
        self.inner = make_baseline("uniform")
        self.observations: list[np.ndarray] = []

    def reset(self, job) -> None:
        self.inner.reset(job)
        self.layout = ObservationLayout(job.spec)
        self.observations = []

    def act(self, observation):
        self.observations.append(np.array(observation))
        return self.inner.act(observation)


def labelled_intervals(build, spec=None, policy=None) -> list[tuple[np.ndarray, bool, float]]:
    """``[(global features, continuing pays, J at stake)]`` after each interval of uniform's run on
    ``build(0)`` (set to ``spec``) but the last (nothing follows it); the full run is one of the
    later stops. With ``policy``, only the intervals after which it asks to stop."""
    recorder = _Recorder()
    job = build(0)
    if spec is not None:
        job.use_spec(spec)
    result = run_job(job, recorder)
    stop_j = stopped_objectives(result.curve, Objective())  # [k]: J (at its defaults) stopped after interval k
    rows = []
    # observations[k] is what the controller saw after interval k (observations[0]: before any)
    for k, observation in enumerate(recorder.observations[1:], start=1):
        if policy is not None and policy.act(observation).steps > 0:
            continue
        later = min(stop_j[k + 1 :])
        rows.append((observation[: recorder.layout.global_size], later < stop_j[k], abs(later - stop_j[k])))
    return rows


_FIT: dict = {}  # the policy and the restriction, inherited by forked workers


def _fit_job(item):
    torch.set_num_threads(1)
    name, recipe = item
    policy = _FIT["policy"]
    return name, labelled_intervals(
        lambda seed: recipe.build(seed=seed, device="cpu"), policy.spec, policy if _FIT["only_its_stops"] else None
    )


def fit(policy, jobs: int, workers: int, only_its_stops: bool = False) -> dict:
    """The veto for ``policy``: uniform runs with its spec (its interval length), on ``jobs`` drawn
    train-split jobs; with ``only_its_stops`` fitted only on the intervals where it asks to stop."""
    from sklearn.linear_model import LogisticRegression

    checked = set(names("train"))
    for _, builders in job_sets(slow_learner_jobs=16).values():
        checked |= set(builders)
    distribution = JobDistribution("train", many_epoch_share=0.5)
    recipes = distinct_recipes(distribution, jobs, VETO_JOB_SEED, keep=lambda r: r.name not in checked)
    _FIT.update(policy=policy, only_its_stops=only_its_stops)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        data = dict(pool.imap_unordered(_fit_job, sorted(recipes.items())))
    rows = [row for name in sorted(data) for row in data[name]]
    x = np.stack([features for features, _, _ in rows]).astype(np.float64)
    y = np.array([label for _, label, _ in rows])
    weight = np.array([stake for _, _, stake in rows])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-8] = 1.0  # a feature constant on these jobs carries no weight
    model = LogisticRegression(max_iter=5000).fit((x - mean) / scale, y, sample_weight=weight / weight.mean())
    return StopVeto(
        features=GLOBAL_FEATURES,
        mean=tuple(mean.tolist()),
        scale=tuple(scale.tolist()),
        weights=tuple(model.coef_[0].tolist()),
        intercept=float(model.intercept_[0]),
        extra={
            "fitted_for": policy.name,
            "only_its_stops": only_its_stops,
            "job_seed": VETO_JOB_SEED,
            "jobs": sorted(data),
            "intervals": len(rows),
            "continue_pays": int(y.sum()),
            "training_accuracy": float(model.score((x - mean) / scale, y)),
        },
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fitting = sub.add_parser("fit", help="fit the veto on uniform's curves of drawn train-split jobs")
    fitting.add_argument("--policy", required=True, help="the policy to veto: its spec sets the intervals")
    fitting.add_argument(
        "--only-its-stops", action="store_true", help="fit only on the intervals where the policy asks to stop"
    )
    fitting.add_argument("--jobs", type=int, default=64, help="distinct drawn jobs (default: 64)")
    fitting.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    fitting.add_argument(
        "--out", type=Path, required=True, help="a new policy directory: the policy with its veto in policy.json"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.workers < 1:
        parser.error("--jobs and --workers must be >= 1")
    if (args.out / CONFIG_FILE).exists() or (args.out / WEIGHTS_FILE).exists():
        parser.error(f"{str(args.out)!r} already holds a policy; choose a new --out")  # before the fit, not after
    try:
        policy = AllocatorPolicy.load(args.policy).with_stop_veto(None)  # a veto it carries is refitted
    except (OSError, ValueError) as error:
        parser.error(str(error))
    veto = fit(policy, args.jobs, args.workers, args.only_its_stops)
    policy.with_stop_veto(veto).save(args.out)
    notes = veto.extra
    largest = sorted(zip(veto.features, veto.weights), key=lambda pair: -abs(pair[1]))[:6]
    print(
        f"{len(notes['jobs'])} jobs, {notes['intervals']} intervals, continuing pays on {notes['continue_pays']}; "
        f"training accuracy {notes['training_accuracy']:.3f}; weights "
        + ", ".join(f"{name} {weight:+.2f}" for name, weight in largest)
        + f"; the vetoed policy written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
