"""Could any allocation the policy can ask for reach uniform's best loss within 0.7 of the budget?

The compute-to-target goal of issue 6 is a median over the held-out pairs of
the budget share at which a controller first reaches uniform training's best
validation loss, at most 0.7. The data-bound pairs reach it early; the
compute-bound ones, where uniform's best is its final loss, decide it
(BENCHMARKS.md section 5, "Where this leaves the targets"). This probe asks
whether the action space holds allocations that get there on compute-bound
jobs at all: it runs a grid of fixed allocations on train-split compute-bound
jobs and, for each (job, seed) pair, keeps the fastest in hindsight. That is
an upper bound on what a policy that knew each job in advance could do with
fixed allocations; a policy that changes its allocation between intervals
can do better only by switching at the right time, which the phase variants
(an allocation until half the budget, or from it) sample.

Every contender runs the job's own interval loop: the same model, data, seed,
minibatch generator and the learning rate decaying linearly with the compute
spent, to zero at the budget. A contender that trains on fewer FLOPs a step
(selection, frozen layer groups) takes more steps within the budget. No
contender stops, so each run is read over the whole budget.

The grid: keep fraction (the share of each drawn batch, highest loss first,
that gets a backward pass) x sample shares (even, tilted to the high-loss
groups, steeply tilted) x layer gates (every group trained, the first group
frozen, the first two frozen); the phase variants of a few of them; and the
hand-designed baselines that move a compute axis (selective-backprop,
freezeout, loss-sampling).

Jobs (the held-out split is not used): the named train jobs of the
compute-bound regime, two transformers on train-split data (the probe jobs of
``stochastic_depth_probe.py``) and ``--slow-learner-jobs`` many-epoch
compute-bound jobs (``train_check.py``'s stand-in for the held-out slow
learners, a CNN or a transformer among them). Only pairs whose uniform run
measures compute-bound are counted.

    python benchmarks/allocation_oracle.py --seeds 3 --slow-learner-jobs 8 --out runs/allocation-oracle-20.csv

Each run's curve is read every ``--max-steps`` steps (default 20, the presets'
interval, as ``evaluate`` reads a policy's runs). ``--only LABEL`` (repeatable)
runs the named contenders alone beside uniform, among them the random-subset
ones that are not in the grid (:func:`mechanism`). ``--heldout LABEL`` runs one
contender chosen on the train split beside uniform on every held-out job and
prints the issue's measure, the median compute to target over all pairs:

    python benchmarks/allocation_oracle.py --heldout "keep 0.35, even shares, all layers" --seeds 3

Prints, per contender, on how many compute-bound pairs it reaches the target
within 0.7 of the budget and its median compute to target; then per pair the
fastest contender in hindsight and the lowest loss any contender had reached
by 0.7 of the budget, relative to the target. With ``--out``, every run's row
goes to a CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import statistics
import sys
from pathlib import Path

import torch

from allocator.allocation import Allocation, AllocationSpec
from allocator.baselines import Uniform
from allocator.jobs.distribution import measured_regime, names, recipe
from allocator.report import format_fraction
from allocator.runner import RunResult, run_job

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
from family_transfer import job_builders  # noqa: E402
from stochastic_depth_probe import PROBE_JOBS  # noqa: E402
from train_check import slow_learner_recipes  # noqa: E402

TARGET_SHARE = 0.7  # the compute-to-target bound
BASELINES = ("selective-backprop", "freezeout", "loss-sampling")
SHARES = {"even": None, "tilted": (1.0, 2.0, 3.0, 4.0), "steep": (1.0, 4.0, 15.0, 30.0)}
GATES = {"all layers": (), "first frozen": (0,), "first two frozen": (0, 1)}
KEEPS = (1.0, 0.7, 0.5, 0.35, 0.2)
_RANDOM_SUBSET_STREAM = 4_000_037  # the random subsets' own stream, apart from the job's


class FixedAllocation(Uniform):
    """Standard training with some entries fixed: the same allocation at every interval.

    ``shares`` are relative weights of the sample groups from the lowest loss
    to the highest (``None``: even), one per group of the job's spec (the
    probe's spec has K = 4). ``frozen`` lists
    the layer groups (from the input) whose gate is 0; the last group (the
    output head) always trains. ``phase`` limits the allocation to the budget
    before ``switch`` (``"before"``) or from it (``"after"``); outside it the
    interval is standard training.
    """

    def __init__(
        self,
        name: str,
        keep: float = 1.0,
        shares: tuple[float, ...] | None = None,
        frozen: tuple[int, ...] = (),
        phase: str = "always",
        switch: float = 0.5,
        selection: str = "loss",
    ) -> None:
        super().__init__()
        if phase not in ("always", "before", "after"):
            raise ValueError(f"phase must be always, before or after, got {phase!r}")
        if selection not in ("loss", "random"):
            raise ValueError(f"selection must be loss or random, got {selection!r}")
        self.name = name
        self.keep = keep
        self.shares = shares
        self.frozen = frozen
        self.phase = phase
        self.switch = switch
        self.selection = selection

    def reset(self, job) -> None:
        super().reset(job)
        if self.selection == "random":
            # a uniformly random subset of each drawn batch gets the backward pass: the same FLOPs
            # and step count as selecting by loss, without the selection (the job's selector hook,
            # as selective-backprop uses it)
            generator = torch.Generator(device=job.device).manual_seed(job.seed + _RANDOM_SUBSET_STREAM)
            job.sample_selector = lambda scores: torch.rand(
                scores.shape, generator=generator, device=scores.device
            )

    def active(self, compute_fraction: float) -> bool:
        if self.phase == "before":
            return compute_fraction < self.switch
        if self.phase == "after":
            return compute_fraction >= self.switch
        return True

    def act(self, observation) -> Allocation:
        uniform = Allocation.uniform(self.spec)
        if not self.active(self.job.compute_fraction):
            return uniform
        shares = uniform.sample_shares
        if self.shares is not None:
            if len(self.shares) != len(shares):
                raise ValueError(
                    f"{self.name}: {len(self.shares)} share weights for {len(shares)} sample groups"
                )
            shares = tuple(w / sum(self.shares) for w in self.shares)
        groups = len(uniform.layer_gates)
        # the output head (the last group) always trains: a job with no trained group learns nothing
        gates = tuple(0.0 if i in self.frozen and i < groups - 1 else 1.0 for i in range(groups))
        return Allocation(shares, self.keep, gates, uniform.steps)


def grid() -> list:
    """Every contender but uniform: the fixed grid, its phase variants, the hand-designed baselines."""
    contenders = []
    for keep in KEEPS:
        for shares_name, shares in SHARES.items():
            for gates_name, frozen in GATES.items():
                if keep == 1.0 and shares is None and not frozen:
                    continue  # that is uniform
                label = f"keep {keep:g}, {shares_name} shares, {gates_name}"
                contenders.append(FixedAllocation(label, keep, shares, frozen))
    for keep, frozen in ((0.35, ()), (0.2, ()), (1.0, (0,)), (0.5, (0,))):
        for phase in ("before", "after"):
            gates_name = "first frozen" if frozen else "all layers"
            label = f"keep {keep:g}, even shares, {gates_name}, {phase} half"
            contenders.append(FixedAllocation(label, keep, None, frozen, phase))
    return contenders + list(BASELINES)


def mechanism() -> list:
    """Contenders outside the grid that tell why selection pays: the same keep fractions with a
    random subset instead of the highest losses (the same steps and FLOPs, no selection)."""
    return [
        FixedAllocation(f"keep {keep:g}, even shares, all layers, random subset", keep, selection="random")
        for keep in (0.35, 0.2)
    ]


def job_set(seeds: int, slow_learner_jobs: int) -> list[tuple[str, int, object]]:
    """``[(job name, seed, build(seed)), ...]``: the train-split pairs the probe runs."""
    recipes = {name: recipe(name) for name in names("train") if recipe(name).regime == "compute-bound"}
    recipes.update({name: r for name, r in PROBE_JOBS.items() if r.model == "transformer"})
    builders = job_builders(recipes)
    pairs = [(name, seed, build) for name, build in builders.items() for seed in range(seeds)]
    if slow_learner_jobs:
        slow = job_builders(slow_learner_recipes(slow_learner_jobs))
        pairs += [(name, seed, build) for name, build in slow.items() for seed in (0, 1)]
    return pairs


def heldout_job_set(seeds: int) -> list[tuple[str, int, object]]:
    """``[(job name, seed, build(seed)), ...]``: every held-out named job, as ``evaluate --split heldout`` runs them."""
    builders = job_builders({name: recipe(name) for name in names("heldout")})
    return [(name, seed, build) for name, build in builders.items() for seed in range(seeds)]


def contender_by_label(label: str):
    """The contender called ``label`` (a fixed allocation's label or a baseline's name), in the grid or
    :func:`mechanism`."""
    for contender in grid() + mechanism():
        if (contender if isinstance(contender, str) else contender.name) == label:
            return contender
    raise ValueError(
        f"no contender is called {label!r}; the labels are the first column of the probe's table"
    )


def loss_by(result: RunResult, share: float) -> float:
    """The lowest validation loss the run had read by ``share`` of the budget."""
    return min(loss for fraction, loss in result.curve if fraction <= share + 1e-9)


# the pairs and contenders of the run in progress; forked workers inherit them (job builders cannot be pickled)
_PAIRS: list[tuple[str, int, object]] = []
_CONTENDERS: list = []
_SPEC = [AllocationSpec(max_steps=20)]


def _job(build, seed: int):
    """A fresh job with the spec of the run in progress (its interval length is the curve's resolution)."""
    job = build(seed)
    job.use_spec(_SPEC[0])
    return job


def mean_layer_gates(result) -> str:
    """Each layer group's gate as the run ran it, averaged over its optimizer steps ("1.00 1.00 ...")."""
    ran = [(i["steps"], i["allocation"]["layer_gates"]) for i in result.intervals if i["steps"] > 0]
    total = sum(steps for steps, _ in ran)
    if not total:
        return ""
    return " ".join(f"{sum(steps * gates[g] for steps, gates in ran) / total:.2f}" for g in range(len(ran[0][1])))


def run_pair(index: int) -> list[dict]:
    """Uniform and every contender on ``_PAIRS[index]``; one row each, the target being uniform's best."""
    name, seed, build = _PAIRS[index]
    uniform = run_job(_job(build, seed), "uniform")
    target = uniform.best_val_loss
    regime = measured_regime(uniform.curve)
    # the probe's jobs that are not named (the probe transformers, the slow learners) are compute-bound recipes
    job_regime = recipe(name).regime if name in names() else "compute-bound"
    rows = []
    for contender in [None, *(_CONTENDERS or grid())]:
        result = uniform if contender is None else run_job(_job(build, seed), contender)
        rows.append(
            {
                "job": name,
                "seed": seed,
                "regime": regime,
                "job_regime": job_regime,
                "contender": result.controller_name,
                "target": target,
                "compute_to_target": result.compute_to_reach(target),
                "loss_by_target_share": loss_by(result, TARGET_SHARE),
                "objective": result.objective,
                "uniform_objective": uniform.objective,
                "final_val_loss": result.final_val_loss,
                "compute_fraction": result.compute_fraction,
                "steps": result.steps,
                "layer_gates": mean_layer_gates(result),
                "curve": result.curve,  # selection_probe.py recomputes rules from it
            }
        )
    return rows


def _init_worker() -> None:
    torch.set_num_threads(1)


def each_pair(run_pair, count: int, workers: int):
    """``run_pair(i)`` for i in ``range(count)``, in order, over ``workers`` forked processes with one
    torch thread each (1: in this process). Forked: the pairs' job builders cannot be pickled, so
    the workers read them from the module's globals."""
    if workers == 1:
        yield from map(run_pair, range(count))
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(run_pair, range(count))


def measure(pairs, workers: int, contenders=None, max_steps: int = 20, show=print) -> list[dict]:
    """Rows of :func:`run_pair` for every pair; ``contenders`` (default: the grid) beside uniform,
    every job in intervals of ``max_steps`` standard steps."""
    rows: list[dict] = []
    _PAIRS[:] = pairs
    _CONTENDERS[:] = contenders or []
    _SPEC[0] = AllocationSpec(max_steps=max_steps)
    for done, pair_rows in enumerate(each_pair(run_pair, len(pairs), workers), start=1):
        rows += pair_rows
        first = pair_rows[0]
        best = min(pair_rows[1:], key=lambda r: r["compute_to_target"])
        show(
            f"[{done}/{len(pairs)}] {first['job']} seed {first['seed']} ({first['regime']}): "
            f"fastest {best['contender']} at {format_fraction(best['compute_to_target'])}"
        )
    return rows


def add_run_arguments(
    parser: argparse.ArgumentParser, seeds_help: str, max_steps_help: str, slow_learner_jobs: bool = False
) -> None:
    """``--seeds``, ``--workers``, ``--max-steps``, ``--out`` (and ``--slow-learner-jobs``), as the
    probes of section 5 share them."""
    parser.add_argument("--seeds", type=int, default=3, help=f"{seeds_help} (default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes running pairs, one torch thread each (default: %(default)s)",
    )
    parser.add_argument("--max-steps", type=int, default=20, help=f"{max_steps_help} (default: %(default)s)")
    parser.add_argument("--out", default=None, help="also write every run's row to this CSV file")
    if slow_learner_jobs:
        parser.add_argument(
            "--slow-learner-jobs",
            type=int,
            default=8,
            help="many-epoch compute-bound jobs, two seeds each (default: %(default)s)",
        )


def within(runs: list[dict], regime: str, regime_key: str = "job_regime") -> str:
    """ "reached/all" over the runs of one regime: how many reach the target within the target share."""
    chosen = [r for r in runs if r[regime_key] == regime]
    return f"{sum(r['compute_to_target'] <= TARGET_SHARE for r in chosen)}/{len(chosen)}"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.inf


def contender_table(rows: list[dict], top: int | None = None) -> str:
    """Per contender, over the compute-bound pairs: pairs within the target share, median compute to target."""
    counted = [r for r in rows if r["regime"] == "compute-bound"]
    by_contender: dict[str, list[dict]] = {}
    for r in counted:
        by_contender.setdefault(r["contender"], []).append(r)
    ranked = sorted(
        by_contender.items(),
        key=lambda item: (
            -sum(r["compute_to_target"] <= TARGET_SHARE for r in item[1]),
            _median([r["compute_to_target"] for r in item[1]]),
        ),
    )
    lines = [
        f"| contender | compute-bound pairs | reached within {TARGET_SHARE:g} | reached at all | median compute to target | "
        f"mean loss by {TARGET_SHARE:g} / target | mean J (uniform's) | lower J than uniform |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in ranked[:top] if top else ranked:
        reached = [r["compute_to_target"] for r in runs]
        lines.append(
            f"| {name} | {len(runs)} | {sum(c <= TARGET_SHARE for c in reached)} | {sum(math.isfinite(c) for c in reached)} | "
            f"{format_fraction(_median(reached))} | {statistics.mean(r['loss_by_target_share'] / r['target'] for r in runs):.3f} | "
            f"{statistics.mean(r['objective'] for r in runs):.4f} ({statistics.mean(r['uniform_objective'] for r in runs):.4f}) | "
            f"{sum(r['objective'] < r['uniform_objective'] for r in runs)} |"
        )
    return "\n".join(lines)


def hindsight(rows: list[dict]) -> list[dict]:
    """Per compute-bound pair: the fastest contender but uniform, and the lowest loss any had by the target share."""
    pairs: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if r["regime"] == "compute-bound":
            pairs.setdefault((r["job"], r["seed"]), []).append(r)
    best = []
    for (job, seed), runs in pairs.items():
        others = [r for r in runs if r["contender"] != "uniform"]
        fastest = min(others, key=lambda r: r["compute_to_target"])
        lowest = min(others, key=lambda r: r["loss_by_target_share"])
        best.append(
            {
                "job": job,
                "seed": seed,
                "fastest": fastest["contender"],
                "compute_to_target": fastest["compute_to_target"],
                "lowest": lowest["contender"],
                "loss_by_target_share": lowest["loss_by_target_share"] / lowest["target"],
            }
        )
    return best


def hindsight_table(best: list[dict]) -> str:
    lines = [
        f"| job | seed | fastest in hindsight | its compute to target | lowest loss by {TARGET_SHARE:g} / target (contender) |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for b in sorted(best, key=lambda b: b["compute_to_target"]):
        lines.append(
            f"| {b['job']} | {b['seed']} | {b['fastest']} | {format_fraction(b['compute_to_target'])} | "
            f"{b['loss_by_target_share']:.3f} ({b['lowest']}) |"
        )
    within = sum(b["compute_to_target"] <= TARGET_SHARE for b in best)
    lines.append("")
    lines.append(
        f"{within} of {len(best)} compute-bound pairs reach uniform's best within {TARGET_SHARE:g} of the budget "
        f"under the fastest contender in hindsight; median {format_fraction(_median([b['compute_to_target'] for b in best]))}."
    )
    return "\n".join(lines)


def heldout_table(rows: list[dict]) -> str:
    """Per contender, over every pair: the median compute to target (the issue's measure) and J against uniform.

    Regimes are the jobs' own (``compute-allocator jobs``), as BENCHMARKS.md
    counts the held-out split: 12 compute-bound and 9 data-bound pairs with 3 seeds.
    """
    by_contender: dict[str, list[dict]] = {}
    for r in rows:
        by_contender.setdefault(r["contender"], []).append(r)
    lines = [
        f"| contender | pairs | median compute to target | within {TARGET_SHARE:g}: compute-bound | "
        f"within {TARGET_SHARE:g}: data-bound | never reached | mean J | lower J than uniform |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in by_contender.items():
        reached = [r["compute_to_target"] for r in runs]

        lines.append(
            f"| {name} | {len(runs)} | {format_fraction(_median(reached))} | {within(runs, 'compute-bound')} | "
            f"{within(runs, 'data-bound')} | {sum(not math.isfinite(c) for c in reached)} | "
            f"{statistics.mean(r['objective'] for r in runs):.4f} | {sum(r['objective'] < r['uniform_objective'] for r in runs)} |"
        )
    return "\n".join(lines)


def _csv_value(key: str, value):
    """Floats as repr (every digit back on reading), the curve as JSON (``selection_probe.py`` reads it)."""
    if key == "curve":
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else value


def write_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({key: _csv_value(key, value) for key, value in r.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(
        parser,
        "job seeds of each named and probe job",
        "steps per interval, where each run's validation loss is read (the presets' spec)",
        slow_learner_jobs=True,
    )
    parser.add_argument(
        "--top", type=int, default=None, help="print only this many contenders, fastest first"
    )
    parser.add_argument(
        "--heldout",
        metavar="LABEL",
        default=None,
        help="instead of the grid on the train split, run this one contender (a label of the probe's table) "
        "beside uniform on every held-out job: the once-only check of a contender chosen on the train split",
    )
    parser.add_argument(
        "--only",
        metavar="LABEL",
        action="append",
        default=None,
        help="run only this contender beside uniform on the train split (repeat for several); "
        "the mechanism checks, e.g. 'keep 0.35, even shares, all layers, random subset', are run this way",
    )
    args = parser.parse_args(argv)
    if args.heldout and args.only:
        parser.error("--heldout runs one contender chosen on the train split; --only is for the train split")
    if args.seeds < 1 or args.workers < 1 or args.max_steps < 1 or args.slow_learner_jobs < 0:
        parser.error("--seeds, --workers and --max-steps must be at least 1, --slow-learner-jobs at least 0")
    if args.out and not Path(args.out).parent.is_dir():
        parser.error(f"--out: the folder {Path(args.out).parent} does not exist")
    try:
        labels = [args.heldout] if args.heldout else args.only or []
        contenders = [contender_by_label(label) for label in labels] or None
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(1)  # before anything runs: forked workers must not inherit a thread pool
    pairs = heldout_job_set(args.seeds) if args.heldout else job_set(args.seeds, args.slow_learner_jobs)
    print(f"{len(pairs)} pairs x {len(contenders or grid()) + 1} contenders")
    rows = measure(pairs, args.workers, contenders, args.max_steps)
    if args.out:
        write_csv(rows, args.out)  # first: the tables below are cheap to recompute, the runs are not
        print(f"\nwrote {args.out}")
    print()
    if args.heldout:
        print(heldout_table(rows))
        return 0
    print(contender_table(rows, args.top))
    print()
    print(hindsight_table(hindsight(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
