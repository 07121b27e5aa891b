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
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

from agents.processes import run_in_processes
from allocator.baselines import PatienceRule
from allocator.evaluation import build_job
from allocator.job_loading import JobSource
from allocator.jobs.distribution import measured_regime
from allocator.objective import Objective
from allocator.runner import run_job

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_transfer import load_policies  # noqa: E402
from train_check import job_sets  # noqa: E402


@functools.cache
def _sets(slow_learner_jobs: int) -> dict:
    return job_sets(slow_learner_jobs=slow_learner_jobs)


def uniform_curve(task: tuple[str, str, int, int, dict]) -> list[tuple[float, float]]:
    """Uniform's ``RunResult.curve`` on one (set, job, seed) under the spec given as a dict."""
    from allocator.allocation import AllocationSpec

    torch.set_num_threads(1)
    set_name, job, seed, slow_learner_jobs, spec = task
    source = JobSource(job, _sets(slow_learner_jobs)[set_name][1][job])
    return run_job(build_job(source, seed, AllocationSpec.from_dict(spec)), "uniform").curve


def early_stopping_objective(curve, patience: int, min_delta: float, objective: Objective) -> float:
    """J of the ``early-stopping`` run with these settings: uniform's curve cut where the rule stops."""
    stop = PatienceRule(patience, min_delta).stop_index([loss for _, loss in curve])
    return objective.stopped_values(curve)[stop]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy", default="benchmarks/heldout-default/policy", help="whose spec the runs use"
    )
    parser.add_argument("--slow-learner-jobs", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patience", default="1,2,3,4,5,6,8,10")
    parser.add_argument("--min-delta", default="0,0.001,0.01")
    args = parser.parse_args(argv)
    patiences = [int(p) for p in args.patience.split(",")]
    deltas = [float(d) for d in args.min_delta.split(",")]
    spec = load_policies(parser, [args.policy])[args.policy].spec.to_dict()

    sets = _sets(args.slow_learner_jobs)
    tasks = [
        (set_name, job, seed, args.slow_learner_jobs, spec)
        for set_name, (seeds, builders) in sets.items()
        for job in builders
        for seed in seeds
    ]
    curves = run_in_processes(
        uniform_curve,
        tasks,
        args.workers,
        on_result=lambda done: print(
            f"\r{done}/{len(tasks)} uniform runs", end="", file=sys.stderr, flush=True
        ),
    )
    print(file=sys.stderr)
    objective = Objective()
    by_set: dict[str, list] = {}
    for (set_name, job, seed, *_), curve in zip(tasks, curves):
        by_set.setdefault(set_name, []).append((job, seed, curve))

    uniform = {name: [objective.stopped_values(c)[-1] for *_, c in pairs] for name, pairs in by_set.items()}
    header = " | ".join(f"{name} J | {name} wins" for name in by_set)
    print(f"| setting | {header} | mean of the sets |")
    print("| --- |" + " ---: | ---: |" * len(by_set) + " ---: |")
    cells = " | ".join(f"{statistics.fmean(values):.4f} | -" for values in uniform.values())
    print(f"| uniform | {cells} | {statistics.fmean(statistics.fmean(v) for v in uniform.values()):.4f} |")
    scores = {}
    for patience in patiences:
        for delta in deltas:
            cells, means = [], []
            for name, pairs in by_set.items():
                values = [early_stopping_objective(c, patience, delta, objective) for *_, c in pairs]
                won = sum(v < u for v, u in zip(values, uniform[name]))
                cells.append(f"{statistics.fmean(values):.4f} | {won}/{len(values)}")
                means.append(statistics.fmean(values))
            scores[patience, delta] = statistics.fmean(means)
            print(
                f"| patience {patience}, min_delta {delta:g} | {' | '.join(cells)} | {scores[patience, delta]:.4f} |"
            )
    if "slow" in by_set:
        compute_bound = [c for *_, c in by_set["slow"] if measured_regime(c) == "compute-bound"]
        print(
            f"\nslow learners measured compute-bound under uniform: {len(compute_bound)} of {len(by_set['slow'])}"
        )
        for patience, delta in sorted(scores, key=scores.get)[:3]:
            values = [early_stopping_objective(c, patience, delta, objective) for c in compute_bound]
            early = sum(
                PatienceRule(patience, delta).stop_index([loss for _, loss in c]) < len(c) - 1
                for c in compute_bound
            )
            print(
                f"patience {patience}, min_delta {delta:g} on them: mean J {statistics.fmean(values):.4f}, "
                f"stopped before the budget on {early}"
            )
    best = min(scores, key=scores.get)
    print(f"\nchosen (lowest mean of the sets' mean J): patience {best[0]}, min_delta {best[1]:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
