"""Choose the `early-stopping` baseline's patience on the train split, from uniform's own curves.

Early stopping trains as uniform does until it stops, so its run is a prefix of
uniform's run on the same job and seed: one uniform run per pair scores every
patience and ``min_delta`` at once (``PatienceRule.stop_index`` on the run's
validation losses, ``Objective.stopped_values`` for J). The pairs are the train
check's three sets (``train_check.py``: the named train jobs x 3 seeds, 16 1-D
CNN jobs x 2 and ``--slow-learner-jobs`` many-epoch compute-bound jobs x 2),
run under the spec of ``--policy`` (the policies' 20-step intervals), spread
over ``--workers`` processes. It prints per setting the mean J and wins over
uniform of each set, and the setting with the lowest mean of the three sets'
mean J, the rule fixed before the run (BENCHMARKS.md section 5, forty-third
round):

    python benchmarks/early_stopping_sweep.py --policy benchmarks/heldout-default/policy --workers 2

``--under policy`` runs the policy itself (with its rules) instead of uniform and
scores the policy with the patience rule as one more way to stop, a diagnostic
of whether the learned stops lose to patience anywhere (forty-third round): the
rule only stops, so that run too is a prefix of the policy's own (uniform runs
too, as the reference of wins). ``--split heldout`` reads the held-out jobs x 3
seeds instead, once, for a setting already chosen on the train split.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

from allocator.allocation import AllocationSpec
from allocator.baselines import PatienceRule
from allocator.evaluation import build_job
from allocator.job_loading import JobSource
from allocator.jobs import make_job, names
from allocator.jobs.distribution import measured_regime
from allocator.objective import Objective
from allocator.policy import AllocatorPolicy
from allocator.processes import run_in_processes
from allocator.runner import compute_to_reach, run_job

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_transfer import load_policies  # noqa: E402
from train_check import job_sets  # noqa: E402


@functools.cache
def _sets(split: str, slow_learner_jobs: int) -> dict:
    """``{set: (seeds, {job: build(seed)})}``: the train check's sets, or the held-out jobs x 3 seeds."""
    if split == "heldout":
        jobs = {name: (lambda seed, name=name: make_job(name, seed=seed, device="cpu")) for name in names("heldout")}
        return {"heldout": ([0, 1, 2], jobs)}
    return job_sets(slow_learner_jobs=slow_learner_jobs)


@functools.cache
def _policy(path: str):
    return AllocatorPolicy.load(path)


def run_curve(task: tuple[str, str, int, tuple[str, int], dict, str | None]) -> list[tuple[float, float]]:
    """``RunResult.curve`` of uniform (policy path ``None``) or the policy on one (set, job, seed)."""
    torch.set_num_threads(1)
    set_name, job, seed, sets, spec, policy = task
    source = JobSource(job, _sets(*sets)[set_name][1][job])
    controller = "uniform" if policy is None else _policy(policy)
    return run_job(build_job(source, seed, AllocationSpec.from_dict(spec)), controller).curve


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy", default="benchmarks/heldout-default/policy", help="whose spec the runs use"
    )
    parser.add_argument(
        "--under",
        choices=["uniform", "policy"],
        default="uniform",
        help="whose curves the rule cuts: uniform's (the early-stopping baseline) or the policy's own",
    )
    parser.add_argument(
        "--split",
        choices=["train", "heldout"],
        default="train",
        help="train: the train check's three sets; heldout: the held-out jobs x 3 seeds, for a "
        "setting chosen on the train split, read once",
    )
    parser.add_argument("--slow-learner-jobs", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patience", default="1,2,3,4,5,6,8,10")
    parser.add_argument("--min-delta", default="0,0.001,0.01")
    args = parser.parse_args(argv)
    try:  # every setting checked before any run
        patiences = [int(p) for p in args.patience.split(",")]
        deltas = [float(d) for d in args.min_delta.split(",")]
        for patience in patiences:
            for delta in deltas:
                PatienceRule(patience, delta)
    except ValueError as error:
        parser.error(f"--patience / --min-delta: {error}")
    spec = load_policies(parser, [args.policy])[args.policy].spec.to_dict()

    if args.slow_learner_jobs < 0:
        parser.error(f"--slow-learner-jobs must be >= 0, got {args.slow_learner_jobs}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    sets_key = (args.split, args.slow_learner_jobs)
    sets = _sets(*sets_key)
    pairs = [(name, job, seed) for name, (seeds, builders) in sets.items() for job in builders for seed in seeds]
    runs = [None] + ([args.policy] if args.under == "policy" else [])  # uniform always: the reference
    tasks = [(*pair, sets_key, spec, run) for run in runs for pair in pairs]
    curves = run_in_processes(
        run_curve,
        tasks,
        args.workers,
        on_result=lambda done: print(f"\r{done}/{len(tasks)} runs", end="", file=sys.stderr, flush=True),
    )
    print(file=sys.stderr)
    uniform = dict(zip(pairs, curves[: len(pairs)]))
    cut = dict(zip(pairs, curves[-len(pairs) :]))  # the curves the rule cuts: uniform's or the policy's
    objective = Objective()
    uniform_j = {pair: objective.stopped_values(curve)[-1] for pair, curve in uniform.items()}
    # the train check's slow-learner figures count the pairs uniform's own curve calls compute-bound
    slow_bound = [pair for pair in pairs if pair[0] == "slow" and measured_regime(uniform[pair]) == "compute-bound"]

    def row(label: str, stop_of, runs: dict) -> float:
        """One Markdown row: the ``runs``' curves stopped at ``stop_of(curve)``; returns the mean of the sets' mean J."""
        cells, means = [], []
        for name in sets:
            mine = [(pair, stop_of(runs[pair])) for pair in pairs if pair[0] == name]
            values = [objective.stopped_values(runs[pair])[stop] for pair, stop in mine]
            won = sum(v < uniform_j[pair] for v, (pair, _) in zip(values, mine))
            cells.append(f"{statistics.fmean(values):.4f} | {won}/{len(values)}")
            means.append(statistics.fmean(values))
            if name == "cnn1d":
                within = sum(
                    compute_to_reach(runs[pair][: stop + 1], min(loss for _, loss in uniform[pair][1:])) <= 0.7
                    for pair, stop in mine
                )
                cells[-1] += f" | {within}"
        slow = [(runs[pair], stop_of(runs[pair])) for pair in slow_bound]
        if slow:
            slow_j = statistics.fmean(objective.stopped_values(curve)[stop] for curve, stop in slow)
            early = sum(curve[stop][0] < 0.9 for curve, stop in slow)
            cells.append(f"{slow_j:.4f} | {early}")
        print(f"| {label} | {' | '.join(cells)} | {statistics.fmean(means):.4f} |")
        return statistics.fmean(means)

    header = " | ".join(f"{name} J | {name} wins" + (" | cnn1d within 0.7" if name == "cnn1d" else "") for name in sets)
    header += f" | slow, the {len(slow_bound)} compute-bound: J | stopped before 0.9" if slow_bound else ""
    print(f"| setting | {header} | mean of the sets |")
    print("| --- |" + " ---: |" * (header.count("|") + 2))

    def last(curve) -> int:
        return len(curve) - 1

    if args.under == "policy":
        row("uniform", last, uniform)
    row(f"{args.under} alone", last, cut)
    scores = {}
    for patience in patiences:
        for delta in deltas:
            rule = PatienceRule(patience, delta)
            scores[patience, delta] = row(
                f"patience {patience}, min_delta {delta:g}",
                lambda curve, rule=rule: rule.stop_index([loss for _, loss in curve]),
                cut,
            )
    best = min(scores, key=scores.get)
    print(f"\nchosen (lowest mean of the sets' mean J): patience {best[0]}, min_delta {best[1]:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
