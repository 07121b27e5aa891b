"""A stop veto learned from hindsight: does it win back the slow learners a policy stops early?

BENCHMARKS.md section 5, forty-first round. On uniform's own curves of the
train check's jobs, the published policies ask to stop where a later stop
would give a lower J far more often on the slow learners than a logistic
regression reading the same global features does. This script tests the
regression as a veto on a trained policy's stops. Measured there, fitted
at the published learned freeze's interval length: it runs the slow
learners on (8 of 15 stopped before 0.9 of the budget instead of 12, at a
J below uniform's), keeps the right stops on the data-bound named jobs
(named mean J 0.7964 against 0.7917), and on held-out improves 6 of 21
pairs and worsens none (mean J 0.9703 against 0.9719). Fitted on 10-step
intervals, shorter than the policy's 20, it delayed those named stops
(named mean J 0.8161).

* ``fit``: runs uniform on ``--jobs`` distinct jobs drawn from the train
  split's distribution (``many_epoch_share`` 0.5, as the recipes train),
  none of them a job of ``train_check.py`` or ``cnn_freeze_probe.py``.
  Every interval but the first and the last is labelled "continuing pays"
  when some later stop on the same curve gives a lower J (s = 0.2, w = 1),
  weighted by the J at stake, and a standardised logistic regression on the
  observation's global features is fitted to the labels. The veto is
  written as JSON (features by name, mean, scale, weights, intercept):

      python benchmarks/stop_veto.py fit --policy P --jobs 64 --out runs/r41/veto.json

  The jobs run with the policy's spec (its interval length); with
  ``--only-its-stops`` the regression is fitted only on the intervals
  after which the policy asks to stop, where a veto acts.

* ``VetoedPolicy(policy, veto)``: the policy, except that when it asks to
  stop and the regression says continuing pays (probability above 1/2),
  the job runs the interval the policy ran last once more. ``train_check.py
  --stop-veto FILE`` and ``cnn_freeze_probe.py --stop-veto FILE`` add the
  vetoed policy as a row of its own (``NAME@veto``).

* ``evaluate``: ``compute-allocator evaluate`` for the vetoed policy (the
  command takes a policy directory; the veto is not part of one):

      python benchmarks/stop_veto.py evaluate --policy P --veto runs/r41/veto.json \
          --split heldout --seeds 3 --token-dropping 0.5,0.5 \
          --baselines uniform,stop-before-budget,selective-backprop,freezeout,loss-sampling,random \
          --out runs/r41/heldout

Trap: the labels come from uniform's curves; under a policy the curve is
its own (selection, a frozen stem), read through the same features.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import torch

from allocator import AllocatorPolicy
from allocator.allocation import Allocation
from allocator.baselines import make as make_baseline
from allocator.evaluation import add_policy_rule_arguments, add_threads_argument, use_threads
from allocator.jobs import JobDistribution, names
from allocator.objective import Objective
from allocator.runner import run_job
from allocator.stats import GLOBAL_FEATURES, ObservationLayout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_transfer import distinct_recipes  # noqa: E402
from stopping_oracle import stopped_objectives  # noqa: E402
from train_check import job_sets  # noqa: E402

VETO_JOB_SEED = 4141  # apart from the check's and the probe's draws


class VetoedPolicy(AllocatorPolicy):
    """``policy`` whose stops are refused where ``veto`` (the JSON of ``fit``) says continuing pays.

    A refused stop runs the policy's last interval once more; a stop before any interval stands.
    An ``AllocatorPolicy`` as ``ablate_features.AblatedPolicy`` is (the policy's attributes, for
    ``evaluate`` and the checks), whose ``reset`` and ``act`` are the wrapped policy's and the veto's.
    """

    def __init__(self, policy, veto: dict) -> None:
        self.__dict__.update(policy.__dict__)
        self.policy, self.veto = policy, veto
        self.spec = policy.spec
        self.name = f"{policy.name}@veto"
        self._last: Allocation | None = None
        self.vetoes = 0

    def reset(self, job) -> None:
        self.policy.reset(job)
        self.layout = ObservationLayout(job.spec)
        self._last = None

    def continue_pays(self, observation) -> bool:
        features = np.array([observation[self.layout.global_index(n)] for n in self.veto["features"]])
        z = (features - np.array(self.veto["mean"])) / np.array(self.veto["scale"])
        return float(np.dot(z, self.veto["weights"]) + self.veto["intercept"]) > 0.0

    def act(self, observation) -> Allocation:
        allocation = self.policy.act(observation)
        if allocation.steps == 0 and self._last is not None and self.continue_pays(np.asarray(observation)):
            self.vetoes += 1
            allocation = self._last
        self._last = allocation
        return allocation


def load_or_exit(parser: argparse.ArgumentParser, path: str | Path, option: str = "--stop-veto") -> dict:
    """:func:`load`, a file it cannot read a one-line error of ``parser`` naming ``option``."""
    try:
        return load(path)
    except (OSError, ValueError) as error:
        parser.error(f"{option}: {error}")


def load(path: str | Path) -> dict:
    """The veto of ``fit``; ``ValueError`` when it names a feature today's observation lacks
    (a veto fitted on another version of the observation) or its lists differ in length."""
    veto = json.loads(Path(path).read_text())
    missing = [name for name in veto["features"] if name not in GLOBAL_FEATURES]
    if missing:
        raise ValueError(f"{path} reads feature(s) {missing} that this version's observation lacks")
    if not len(veto["features"]) == len(veto["mean"]) == len(veto["scale"]) == len(veto["weights"]):
        raise ValueError(f"{path}: features, mean, scale and weights differ in length")
    return veto


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
    return {
        "features": list(GLOBAL_FEATURES),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "weights": model.coef_[0].tolist(),
        "intercept": float(model.intercept_[0]),
        "policy": policy.name,
        "only_its_stops": only_its_stops,
        "jobs": sorted(data),
        "intervals": len(rows),
        "continue_pays": int(y.sum()),
        "training_accuracy": float(model.score((x - mean) / scale, y)),
    }


def evaluate_vetoed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from allocator import evaluation

    veto = load_or_exit(parser, args.veto, "--veto")
    try:
        policy = evaluation.load_policy(evaluation.policy_with_rules(args))
    except (OSError, ValueError) as error:
        parser.error(str(error))
    use_threads(args.threads)
    vetoed = VetoedPolicy(policy, veto)
    vetoed.name = f"{args.policy}@veto"
    report = evaluation.evaluate(
        vetoed, split=args.split, seeds=args.seeds, baselines=args.baselines.split(","), out_dir=args.out, device="cpu"
    )
    print(report.to_markdown())
    print(f"{vetoed.vetoes} stops vetoed; written to {args.out}")
    return 0


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
    fitting.add_argument("--out", type=Path, required=True, help="the veto's JSON file")
    evaluating = sub.add_parser("evaluate", help="compute-allocator evaluate with the policy's stops vetoed")
    evaluating.add_argument("--policy", required=True, help="a policy directory (an ensemble is fine)")
    evaluating.add_argument("--veto", type=Path, required=True, help="the JSON file of fit")
    evaluating.add_argument("--split", default="heldout", choices=("train", "heldout"))
    evaluating.add_argument("--seeds", type=int, default=3, help="job seeds 0 .. N-1 (default: 3)")
    evaluating.add_argument("--baselines", default="uniform", help="comma-separated baseline names")
    evaluating.add_argument("--out", type=Path, required=True, help="where results.csv, results.md, curves.png go")
    add_policy_rule_arguments(evaluating)
    add_threads_argument(evaluating, default=1, why="As compute-allocator evaluate: the same arithmetic as its runs")
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        return evaluate_vetoed(parser, args)
    if args.jobs < 1 or args.workers < 1:
        parser.error("--jobs and --workers must be >= 1")
    try:
        policy = AllocatorPolicy.load(args.policy)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    veto = fit(policy, args.jobs, args.workers, args.only_its_stops)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(veto, indent=1) + "\n")
    print(
        f"{len(veto['jobs'])} jobs, {veto['intervals']} intervals, continuing pays on {veto['continue_pays']}; "
        f"training accuracy {veto['training_accuracy']:.3f}; weights "
        + ", ".join(f"{n} {w:+.2f}" for n, w in sorted(zip(veto["features"], veto["weights"]), key=lambda p: -abs(p[1]))[:6])
        + f"; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
