"""Does a short probe of each allocation, on copies of the job, tell job by job which one pays?

The twenty-first round (BENCHMARKS.md section 5) found that on the train
split some fixed allocation, mostly selection (a backward pass for the
highest-loss share of each batch), reaches uniform's best validation loss
within 0.7 of the budget on 15 of 28 compute-bound pairs, but that no rule
applied to every job does: the pairs differ in which allocation pays. Its
next step was a measurement that tells them apart: an interval with and
without selection, on a copy of the job.

This script measures that rule, **probe and commit**: from the job's
initial state, each candidate allocation trains a copy of the job for
``share`` of the budget; the candidate whose validation loss at that
compute is lowest (linearly interpolated between its readings; ties go to
the first candidate, uniform) continues, the other copies are discarded,
and their compute is charged. Everything is computed from full runs of
each candidate, which is exact for a probe from the initial state: every
candidate's run starts from the same model, data and seed and is
deterministic, so its first readings are its probe and its continuation is
the rest of its run. Charged this way, the committed run starts at the
discarded probes' compute D (each probe ends at the first reading at or
past ``share``, where a real probe would read its loss) and is cut at the
last reading within the budget, 1 - D of its own. Its learning rate
follows its own compute, as in its full run. The discarded probes' readings
count in J at the compute they spent, but not for compute to target (their
models are thrown away).

    python benchmarks/selection_probe.py --out runs/selection-probe.csv

runs uniform and the candidates on the train split (every named train job,
both regimes, the two probe transformers of ``stochastic_depth_probe.py``
and ``--slow-learner-jobs`` many-epoch compute-bound jobs) and prints, for
every candidate set and probe share, how often the committed run reaches
uniform's best within 0.7 of the budget, the median compute to target over
all pairs (the issue's measure), mean J and how often the probe chose the
candidate whose full run has the lowest J. ``--from-csv`` prints the same
tables from a saved run without training anything. ``--heldout SET SHARE``
runs the one rule chosen on the train split on every held-out job:

    python benchmarks/selection_probe.py --heldout selection 0.1 --out runs/selection-probe-heldout.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from allocator.jobs.distribution import names, recipe
from allocator.objective import Objective
from allocator.report import format_fraction

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
from allocation_oracle import (  # noqa: E402
    TARGET_SHARE,
    add_run_arguments,
    contender_by_label,
    heldout_job_set,
    measure,
    within,
    write_csv,
)
from family_transfer import job_builders  # noqa: E402
from stochastic_depth_probe import PROBE_JOBS  # noqa: E402
from train_check import slow_learner_recipes  # noqa: E402

SELECT = "keep 0.35, even shares, all layers"  # the twenty-first round's best single contender
CANDIDATE_SETS = {
    "selection": ("uniform", SELECT),
    "keep fractions": (
        "uniform",
        "keep 0.5, even shares, all layers",
        SELECT,
        "keep 0.2, even shares, all layers",
    ),
    # freezing the first layer group is the one allocation that reached the target on the 1-D CNN
    "selection or freezing": ("uniform", SELECT, "keep 1, even shares, first frozen"),
}
PROBE_SHARES = (0.05, 0.1, 0.2)

Curve = list[tuple[float, float]]


def loss_at(curve: Curve, share: float) -> float:
    """The validation loss at ``share`` of the budget, linear between the readings around it.

    Past the last reading it is the last loss (a run ends there)."""
    for (f0, l0), (f1, l1) in zip(curve, curve[1:]):
        if f1 >= share:
            if not (math.isfinite(l0) and math.isfinite(l1)) or f1 <= f0:
                return l1
            return l0 + (l1 - l0) * (share - f0) / (f1 - f0)
    return curve[-1][1]


def probe_end(curve: Curve, share: float) -> int:
    """Index of the reading that ends a probe of ``share``: the first at or past it (the last if none)."""
    for index, (fraction, _) in enumerate(curve):
        if index and fraction >= share - 1e-12:
            return index
    return len(curve) - 1


def committed_run(
    curves: dict[str, Curve],
    candidates: tuple[str, ...],
    share: float,
    target: float,
    objective: Objective | None = None,
) -> dict:
    """The probe-and-commit rule on one pair, from each candidate's full-run curve.

    Returns the chosen candidate, the compute its discarded probes cost, the
    compute at which the committed run first reads ``target`` or below
    (``math.inf`` if never) and J of the whole run, probes included. With one
    candidate it is that candidate's run and J (nothing is probed).
    """
    objective = objective or Objective()
    probe_loss = {c: loss_at(curves[c], share) if len(candidates) > 1 else 0.0 for c in candidates}
    finite = [c for c in candidates if math.isfinite(probe_loss[c])] or list(candidates)
    choice = min(finite, key=lambda c: (probe_loss[c], candidates.index(c)))
    initial = curves[choice][0][1]

    def relative(loss: float) -> float:
        return objective.relative_loss(loss, initial, not math.isfinite(loss))

    intervals: list[tuple[float, float]] = []  # (share of the budget, relative loss), in the order run
    for c in candidates:
        if c != choice:
            curve = curves[c][: probe_end(curves[c], share) + 1]
            intervals += [(f1 - f0, relative(loss)) for (f0, _), (f1, loss) in zip(curve, curve[1:])]
    charged = sum(spent for spent, _ in intervals)
    reached = math.inf
    final = intervals[-1][1] if intervals else 1.0
    for (f0, _), (f1, loss) in zip(curves[choice], curves[choice][1:]):
        if charged + f1 > 1.0 + 1e-9:
            break  # the budget ends inside this interval: the committed run stops at the reading before
        intervals.append((f1 - f0, relative(loss)))
        final = intervals[-1][1]
        if loss <= target and reached == math.inf:
            reached = charged + f1
    return {
        "choice": choice,
        "charged": charged,
        "compute_to_target": reached,
        "objective": objective.total(intervals, final),
    }


def job_set(seeds: int, slow_learner_jobs: int) -> list[tuple[str, int, object]]:
    """``[(job name, seed, build(seed)), ...]``: every named train job (both regimes), the probe
    transformers and the many-epoch compute-bound jobs (two seeds each). No held-out job."""
    recipes = {name: recipe(name) for name in names("train")}
    recipes.update({name: r for name, r in PROBE_JOBS.items() if r.model == "transformer"})
    pairs = [(name, seed, build) for name, build in job_builders(recipes).items() for seed in range(seeds)]
    if slow_learner_jobs:
        slow = job_builders(slow_learner_recipes(slow_learner_jobs))
        pairs += [(name, seed, build) for name, build in slow.items() for seed in (0, 1)]
    return pairs


def curves_by_pair(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """``{(job, seed): {"regime": ..., "job_regime": ..., "target": ..., "runs": {contender: row}}}``."""
    pairs: dict[tuple[str, int], dict] = {}
    for r in rows:
        pair = pairs.setdefault(
            (r["job"], r["seed"]),
            {"regime": r["regime"], "job_regime": r["job_regime"], "target": r["target"], "runs": {}},
        )
        pair["runs"][r["contender"]] = r
    return pairs


def _rule_row(rule: str, job: str, seed: int, pair: dict, candidates: tuple[str, ...], share: float) -> dict:
    runs = pair["runs"]
    committed = committed_run({c: runs[c]["curve"] for c in candidates}, candidates, share, pair["target"])
    return {
        "job": job,
        "seed": seed,
        "regime": pair["regime"],
        "job_regime": pair["job_regime"],
        "rule": rule,
        **committed,
        "uniform_objective": runs["uniform"]["objective"],
    }


def rule_rows(rows: list[dict], sets: dict[str, tuple[str, ...]], shares) -> list[dict]:
    """One row per (rule, pair): the committed run's outcome beside uniform's, and whether the rule
    chose the candidate whose full run has the lowest J of its set.

    The rules of a set of several candidates: ``"SET @ p"`` for each probe share, and
    ``"SET, in hindsight"``, the reference without the probe (the candidate that reaches the
    target first, known in advance and run alone: nothing discarded, nothing charged). A set of
    one candidate is that candidate's run, named ``SET``.
    """
    out = []
    for (job, seed), pair in curves_by_pair(rows).items():
        runs = pair["runs"]
        for set_name, candidates in sets.items():
            if len(candidates) == 1:
                rules = [(set_name, candidates, 0.0)]
            else:
                fastest = min(candidates, key=lambda c: (runs[c]["compute_to_target"], runs[c]["objective"]))
                rules = [(f"{set_name}, in hindsight", (fastest,), 0.0)]
                rules += [(f"{set_name} @ {share:g}", candidates, share) for share in shares]
            best_full = min(candidates, key=lambda c: runs[c]["objective"])
            for rule, chosen_from, share in rules:
                row = _rule_row(rule, job, seed, pair, chosen_from, share)
                row["chose_lowest_full_j"] = row["choice"] == best_full
                out.append(row)
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.inf


def rule_table(rows: list[dict], regime_key: str = "regime") -> str:
    """Per rule, over every pair: within the target share by regime, the median compute to target,
    mean J against uniform's, wins over uniform, the probe's agreement with the full runs."""
    by_rule: dict[str, list[dict]] = {}
    for r in rows:
        by_rule.setdefault(r["rule"], []).append(r)
    lines = [
        f"| rule | pairs | within {TARGET_SHARE:g} | within {TARGET_SHARE:g}: compute-bound | "
        f"within {TARGET_SHARE:g}: data-bound | "
        "median compute to target | mean J (uniform's) | lower J than uniform | chose the lowest full-run J | "
        "mean compute charged for probes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in by_rule.items():
        lines.append(
            f"| {name} | {len(runs)} | {sum(r['compute_to_target'] <= TARGET_SHARE for r in runs)} | "
            f"{within(runs, 'compute-bound', regime_key)} | {within(runs, 'data-bound', regime_key)} | "
            f"{format_fraction(_median([r['compute_to_target'] for r in runs]))} | "
            f"{statistics.mean(r['objective'] for r in runs):.4f} "
            f"({statistics.mean(r['uniform_objective'] for r in runs):.4f}) | "
            # below uniform's J by more than rounding: uniform's own J, rebuilt from its curve, ties
            f"{sum(r['objective'] < r['uniform_objective'] - 1e-9 for r in runs)} | "
            f"{sum(r['chose_lowest_full_j'] for r in runs)} | "
            f"{statistics.mean(r['charged'] for r in runs):.3f} |"
        )
    return "\n".join(lines)


def read_csv(path: str | Path) -> list[dict]:
    numbers = {
        "target",
        "compute_to_target",
        "loss_by_target_share",
        "objective",
        "uniform_objective",
        "final_val_loss",
        "compute_fraction",
    }
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for r in csv.DictReader(handle):
            if "curve" not in r:
                raise ValueError(f"{path} has no curve column: it was not written by selection_probe.py")
            row = dict(r)
            row["seed"] = int(r["seed"])
            row["steps"] = int(r["steps"])
            row["curve"] = [tuple(point) for point in json.loads(r["curve"])]
            for key in numbers:
                row[key] = float(r[key])
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(
        parser, "seeds of each named and probe job", "steps per interval", slow_learner_jobs=True
    )
    parser.add_argument(
        "--from-csv", default=None, help="print the tables of a CSV written by --out; run nothing"
    )
    parser.add_argument(
        "--heldout",
        nargs=2,
        metavar=("SET", "SHARE"),
        default=None,
        help=f"run one rule chosen on the train split on every held-out job; SET is one of {', '.join(CANDIDATE_SETS)}",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.workers < 1 or args.max_steps < 1 or args.slow_learner_jobs < 0:
        parser.error("--seeds, --workers and --max-steps must be at least 1, --slow-learner-jobs at least 0")
    if args.out and not Path(args.out).parent.is_dir():
        parser.error(f"--out: the folder {Path(args.out).parent} does not exist")
    sets, shares = CANDIDATE_SETS, PROBE_SHARES
    if args.heldout:
        set_name, share = args.heldout
        if set_name not in CANDIDATE_SETS:
            parser.error(
                f"--heldout: no candidate set {set_name!r}; the sets are {', '.join(CANDIDATE_SETS)}"
            )
        try:
            shares = (float(share),)
        except ValueError:
            parser.error(f"--heldout: the probe share must be a number, got {share!r}")
        if not 0.0 < shares[0] < 1.0:
            parser.error("--heldout: the probe share must lie between 0 and 1")
        sets = {set_name: CANDIDATE_SETS[set_name]}
    if args.from_csv:
        try:
            rows = read_csv(args.from_csv)
        except (OSError, ValueError, KeyError) as error:
            parser.error(f"--from-csv: {error}")
    else:
        contenders = [
            contender_by_label(c)
            for c in dict.fromkeys(c for s in sets.values() for c in s)
            if c != "uniform"
        ]
        torch.set_num_threads(1)  # before anything runs: forked workers must not inherit a thread pool
        pairs = heldout_job_set(args.seeds) if args.heldout else job_set(args.seeds, args.slow_learner_jobs)
        print(f"{len(pairs)} pairs x {len(contenders) + 1} allocations")
        rows = measure(pairs, args.workers, contenders, args.max_steps)
        if args.out:
            write_csv(rows, args.out)  # first: the tables below are cheap to recompute, the runs are not
            print(f"\nwrote {args.out}")
    missing = {c for s in sets.values() for c in s} - {r["contender"] for r in rows}
    if missing:
        parser.error(f"the runs lack {', '.join(sorted(missing))}; rerun without --from-csv")
    print()
    # held-out pairs are counted by the jobs' own regimes, as BENCHMARKS.md counts that split
    print(
        rule_table(
            rule_rows(rows, {"uniform": ("uniform",), **sets}, shares),
            "job_regime" if args.heldout else "regime",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
