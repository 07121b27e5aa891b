"""The train-split check of BENCHMARKS.md section 5 for several policies at once, uniform run once.

Since the fifth round every recipe is judged on two sets of train-split jobs,
each policy against uniform: the named train jobs (8 jobs x 3 seeds) and 16
jobs drawn from the train split's 1-D CNN family (x 2 seeds, the jobs of
``family_transfer.py``). Running ``evaluate`` and ``family_transfer.py`` per
policy reruns uniform for every policy; this runs each (job, seed) pair once
under uniform and once under each policy, spreads the pairs over
``--workers`` processes (one torch thread each), and prints per policy mean J
and wins over uniform on each set and in total:

    python benchmarks/train_check.py runs/quick-s0 runs/quick-s1 runs/ensemble --out runs/check

Every run is the one ``evaluate`` makes (a fresh job built with the pair's
seed and the policies' spec), so the numbers equal those of the two commands.
``--out DIR`` writes an ``evaluate``-style ``results.csv`` per policy and set
(``DIR/NAME-named``, ``DIR/NAME-cnn1d``) that ``compare_runs.py`` reads.

``--slow-learner-jobs N`` adds a third set, a train-split stand-in for the
held-out slow learners (a CNN or a transformer on 1,400 digits, still
improving after 10 epochs): N many-epoch compute-bound jobs
(``JobDistribution(many_epoch_share=1)``, 6 to 30 epochs on a clean set at
a slower learning rate) x 2 seeds. Its table counts only the pairs whose
uniform run measures compute-bound (``measured_regime``), where stopping
early loses, and gives each policy's mean compute fraction there and how
many of those pairs it stops before 0.9 of the budget (BENCHMARKS.md
section 5, sixteenth round). The bar's table above it is unchanged.

``--baseline NAME`` (repeatable) also runs a hand-designed controller of
``allocator.baselines`` under the policies' spec, as a row of its own:
``--baseline stop-before-budget`` is the rule a policy trained or applied
with ``stop_before_budget`` adds, so the row says what the rule alone does
(BENCHMARKS.md section 5, seventeenth round).

``--selection-gate T`` also runs every policy with the jobs' selection gate
at alignment threshold T (``TrainingJob.selection_gate``): a policy trained
without the gate, applied with it, as a cheap screen of the rule before
training with it (BENCHMARKS.md section 5, fourteenth round). Its rows are
named ``NAME@gateT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import sys
from pathlib import Path

import torch

from allocator.baselines import BASELINES
from allocator.baselines import make as make_baseline
from allocator.evaluation import (
    POLICY,
    REFERENCE,
    EvaluatedRun,
    EvaluationReport,
    build_job,
    describe_machine,
)
from allocator.job_loading import JobSource
from allocator.jobs import JobDistribution, make_job, names
from allocator.jobs.distribution import measured_regime
from allocator.runner import run_job

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_transfer import (  # noqa: E402
    job_builders,
    load_policies,
    report_names,
    transfer_recipes,
)

# set name -> (job seeds, {job name: build(seed)}); built once, inherited by forked workers
SETS: dict[str, tuple[list[int], dict]] = {}
POLICIES: dict = {}
# apart from the envs' job pools (job_pool_seed 0), family_transfer.py and regime_mix.py
SLOW_LEARNER_SEED = 3036
EARLY = 0.9  # a compute-bound run that ends before this share of its budget was stopped early


class GatedPolicy:
    """A policy run with the job's selection gate at ``threshold``: it acts as the policy does,
    and the job keeps the whole batch whenever the last interval's alignment is below it."""

    def __init__(self, policy, threshold: float) -> None:
        self.policy, self.threshold = policy, threshold
        self.spec = policy.spec
        self.name = f"{policy.name}@gate{threshold:g}"

    def reset(self, job) -> None:
        self.policy.reset(job)
        job.selection_gate = self.threshold

    def act(self, observation):
        return self.policy.act(observation)


def slow_learner_recipes(count: int) -> dict:
    """``{name: JobRecipe}``: ``count`` distinct many-epoch compute-bound recipes of the train split."""
    distribution = JobDistribution("train", named_share=0.0, many_epoch_share=1.0)
    return distribution.distinct_recipes(count, SLOW_LEARNER_SEED, keep=lambda recipe: "-many-epochs-" in recipe.name)


def job_sets(
    cnn_jobs: int = 16, named_seeds: int = 3, cnn_seeds: int = 2, slow_learner_jobs: int = 0
) -> dict[str, tuple[list[int], dict]]:
    """The sets of the check: the named train jobs, jobs of the train split's 1-D CNN family and
    (``slow_learner_jobs`` > 0) many-epoch compute-bound jobs, two seeds each."""
    named = {
        name: (lambda seed, name=name: make_job(name, seed=seed, device="cpu")) for name in names("train")
    }
    cnn = job_builders(transfer_recipes("train", ["cnn1d"], cnn_jobs))
    sets = {"named": (list(range(named_seeds)), named), "cnn1d": (list(range(cnn_seeds)), cnn)}
    if slow_learner_jobs:
        sets["slow"] = ([0, 1], job_builders(slow_learner_recipes(slow_learner_jobs)))
    return sets


def slow_learner_row(path: str, report: EvaluationReport) -> str:
    """One Markdown row: the policy on the slow-learner pairs whose uniform run is compute-bound."""
    pairs = [
        (run, report.run(run.job, run.seed, POLICY))
        for run in report.select(controller=REFERENCE)
        if measured_regime(run.result.curve) == "compute-bound"
    ]
    if not pairs:
        return f"| {path} | 0 | - | - | - | - | - |"
    fractions = [mine.result.compute_used / mine.result.budget for _, mine in pairs]
    return (
        f"| {path} | {len(pairs)} | {statistics.fmean(u.result.objective for u, _ in pairs):.4f} "
        f"| {statistics.fmean(m.result.objective for _, m in pairs):.4f} "
        f"| {sum(m.result.objective < u.result.objective for u, m in pairs)} "
        f"| {statistics.fmean(fractions):.3f} | {sum(f < EARLY for f in fractions)} |"
    )


def check_one_spec(policies) -> None:
    """``ValueError`` unless the policies share a spec: every pair runs under the first one's.

    They may differ in ``stop_before_budget`` and ``share_prior``, rules each policy
    sets on its own jobs in ``reset``: a policy and its copy with a rule compare.
    """
    specs = {
        dataclasses.replace(policy.spec, stop_before_budget=False, share_prior="uniform") for policy in policies
    }
    if len(specs) > 1:
        raise ValueError(f"the policies have different specs {sorted(map(str, specs))}; check them one spec at a time")


def _run_pair(task: tuple[str, str, int]) -> tuple[tuple[str, str, int], dict]:
    """Uniform and every policy on one (set, job, seed): ``{label: RunResult}``."""
    set_name, job, seed = task
    source = JobSource(job, SETS[set_name][1][job])
    spec = next(iter(POLICIES.values())).spec
    results = {REFERENCE: run_job(build_job(source, seed, spec), REFERENCE)}
    for path, policy in POLICIES.items():
        results[path] = run_job(build_job(source, seed, spec), policy)
    return task, results


def _init_worker() -> None:
    torch.set_num_threads(1)


def reports(results: dict, policies: dict) -> dict[tuple[str, str], EvaluationReport]:
    """``{(policy path, set): EvaluationReport}`` of the policy against uniform, as ``evaluate`` makes it."""
    made = {}
    machine = describe_machine("cpu")
    for path in policies:
        for set_name, (seeds, builders) in SETS.items():
            runs = []
            for job in builders:
                for seed in seeds:
                    pair = results[set_name, job, seed]
                    target = pair[REFERENCE].best_val_loss
                    for label, result in ((POLICY, pair[path]), (REFERENCE, pair[REFERENCE])):
                        runs.append(
                            EvaluatedRun(job, seed, label, result, target, result.compute_to_reach(target))
                        )
            made[path, set_name] = EvaluationReport(
                runs=runs,
                jobs=list(builders),
                seeds=seeds,
                controllers=[POLICY, REFERENCE],
                policy=str(path),
                machine=machine,
            )
    return made


def wins(report: EvaluationReport) -> int:
    return report.wins(REFERENCE)[0]


def selecting_share(report: EvaluationReport) -> float:
    """Share of the policy's intervals that ran with selective backprop (keep fraction < 1)."""
    intervals = [i for run in report.select(controller=POLICY) for i in run.result.intervals if i["steps"] > 0]
    return sum(i["allocation"]["keep_fraction"] < 1.0 for i in intervals) / max(len(intervals), 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", metavar="DIR", help="policy directories (one spec for all)")
    parser.add_argument("--out", type=Path, help="write DIR/NAME-named and DIR/NAME-cnn1d results.csv files")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes running pairs (one torch thread each)"
    )
    parser.add_argument(
        "--cnn-jobs", type=int, default=16, help="distinct 1-D CNN jobs (16 since the fifth round)"
    )
    parser.add_argument("--named-seeds", type=int, default=3, help="job seeds per named train job")
    parser.add_argument("--cnn-seeds", type=int, default=2, help="job seeds per 1-D CNN job")
    parser.add_argument(
        "--slow-learner-jobs",
        type=int,
        default=0,
        metavar="N",
        help="also run N many-epoch compute-bound jobs x 2 seeds, a stand-in for slow learners (default: 0, not run)",
    )
    parser.add_argument(
        "--selection-gate",
        type=float,
        metavar="T",
        help="also run each policy with the selection gate at alignment threshold T (in [-1, 1])",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME",
        help="also run this baseline (allocator.baselines) under the policies' spec, as a row; repeatable",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.baseline if name not in BASELINES]
    if unknown:
        parser.error(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    if args.selection_gate is not None and not -1.0 <= args.selection_gate <= 1.0:
        parser.error(f"--selection-gate must be in [-1, 1], got {args.selection_gate}")
    for option in ("workers", "cnn_jobs", "named_seeds", "cnn_seeds"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.slow_learner_jobs < 0:
        parser.error(f"--slow-learner-jobs must be >= 0, got {args.slow_learner_jobs}")
    torch.set_num_threads(1)  # before anything runs: forked workers must not inherit a thread pool
    POLICIES.update(load_policies(parser, args.policies))
    try:
        check_one_spec(POLICIES.values())
    except ValueError as error:
        parser.error(str(error))
    if args.selection_gate is not None:
        for path, policy in list(POLICIES.items()):
            POLICIES[f"{path}@gate{args.selection_gate:g}"] = GatedPolicy(policy, args.selection_gate)
    for name in args.baseline:  # after the policies: the pairs run under the first policy's spec
        POLICIES[name] = make_baseline(name)
    SETS.update(job_sets(args.cnn_jobs, args.named_seeds, args.cnn_seeds, args.slow_learner_jobs))
    tasks = [
        (name, job, seed) for name, (seeds, builders) in SETS.items() for job in builders for seed in seeds
    ]
    torch.set_num_threads(1)
    if args.workers == 1:
        results = dict(map(_run_pair, tasks))
    else:
        # fork: the workers inherit the loaded policies and the job builders (closures cannot be pickled)
        with multiprocessing.get_context("fork").Pool(args.workers, initializer=_init_worker) as pool:
            results = dict(pool.imap_unordered(_run_pair, tasks))
    made = reports(results, POLICIES)
    if args.out is not None:
        folders = report_names([path for path in POLICIES if "@" not in path])
        for (path, set_name), report in made.items():
            base, _, gate = path.partition("@")
            suffix = f"@{gate}" if gate else ""
            report.write(args.out / f"{folders[base]}{suffix}-{set_name}")
    first = next(iter(POLICIES))
    uniform = {s: made[first, s].mean_objective(REFERENCE) for s in SETS}
    pairs = {s: len(made[first, s].select(controller=REFERENCE)) for s in SETS}
    print(
        f"uniform mean J: named {uniform['named']:.4f} ({pairs['named']} pairs), 1-D CNN {uniform['cnn1d']:.4f} ({pairs['cnn1d']} pairs)"
    )
    print(
        "| policy | named mean J | named wins | 1-D CNN mean J | 1-D CNN wins | total wins "
        "| selecting intervals, named / 1-D CNN |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    totals = []
    for path in POLICIES:
        named, cnn = made[path, "named"], made[path, "cnn1d"]
        totals.append(wins(named) + wins(cnn))
        print(
            f"| {path} | {named.mean_objective(POLICY):.4f} | {wins(named)} | {cnn.mean_objective(POLICY):.4f} "
            f"| {wins(cnn)} | {totals[-1]} | {selecting_share(named):.2f} / {selecting_share(cnn):.2f} |"
        )
    if len(POLICIES) > 1:
        print(f"mean total wins {statistics.fmean(totals):.2f}")
    if "slow" in SETS:
        print(
            f"\nslow learners: {len(SETS['slow'][1])} many-epoch jobs x 2 seeds; the pairs whose uniform run is compute-bound"
        )
        print("| policy | pairs | uniform mean J | policy mean J | wins | compute fraction | stopped before 0.9 |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for path in POLICIES:
            print(slow_learner_row(path, made[path, "slow"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
