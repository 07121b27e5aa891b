"""Compare evaluations of several trained policies against uniform, split by job regime.

Reads the ``results.csv`` that ``compute-allocator evaluate --out DIR`` wrote
in each directory and prints one Markdown row per evaluation: the policy's
and uniform's mean J, and the (job, seed) pairs where the policy's J is lower,
in all and on the compute-bound and data-bound jobs apart (the two regimes of
the built-in jobs, ``compute-allocator jobs``). With ``--per-job``, also each
job's J minus uniform's per seed, and the policy's compute fraction.

    python benchmarks/compare_runs.py runs/eval-e4-train runs/eval-e5-train --per-job

With ``--noise-floor FILE`` (written by ``noise_floor.py --out``), each
policy's pairs are also sorted by the noise floor of the same job and seed,
the largest change of J that a nearly uniform allocation made there: won by
more than it, lost by more than it, or within it.

This is how the recipe comparisons in BENCHMARKS.md section 5 were tabulated.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from allocator.evaluation import POLICY, REFERENCE


def read_runs(directory: str | Path) -> dict[tuple[str, int, str], dict]:
    """``{(job, seed, controller): row}`` from an evaluation directory's results.csv."""
    path = Path(directory) / "results.csv"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: pass directories written by `compute-allocator evaluate --out`")
    with open(path, newline="", encoding="utf-8") as handle:
        return {(row["job"], int(row["seed"]), row["controller"]): row for row in csv.DictReader(handle)}


def regime(job: str) -> str:
    """``compute-bound`` or ``data-bound`` for a built-in job; ``other`` for a user's own."""
    from allocator.jobs.distribution import names, recipe

    return recipe(job).regime if job in names() else "other"


def read_noise_floor(path: str | Path) -> dict[tuple[str, int], float]:
    """``{(job, seed): largest |J perturbed - J uniform|}`` from a ``noise_floor.py --out`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist: write it with `python benchmarks/noise_floor.py --out FILE`")
    floor: dict[tuple[str, int], float] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            key = (row["job"], int(row["seed"]))
            floor[key] = max(floor.get(key, 0.0), abs(float(row["perturbed"]) - float(row["uniform"])))
    return floor


def against_noise(runs: dict[tuple[str, int, str], dict], floor: dict[tuple[str, int], float]) -> dict:
    """By regime, ``(won, within, lost, pairs)``: the policy's J against uniform's, beyond the floor or not.

    A pair without a noise-floor entry is left out (the floor was measured on
    other jobs or seeds), so ``pairs`` can be smaller than the evaluation's.
    """
    counts = {"all": [0, 0, 0, 0], "compute-bound": [0, 0, 0, 0], "data-bound": [0, 0, 0, 0], "other": [0, 0, 0, 0]}
    for job, seed, controller in runs:
        if controller != POLICY or (job, seed) not in floor:
            continue
        change = float(runs[job, seed, POLICY]["objective"]) - float(runs[job, seed, REFERENCE]["objective"])
        column = 0 if change < -floor[job, seed] else 2 if change > floor[job, seed] else 1
        for key in ("all", regime(job)):
            counts[key][column] += 1
            counts[key][3] += 1
    return {key: tuple(value) for key, value in counts.items()}


def summary(runs: dict[tuple[str, int, str], dict]) -> dict:
    """Mean J of the policy and of uniform, and the policy's wins by regime."""
    pairs = sorted({(job, seed) for job, seed, controller in runs if controller == POLICY})
    if not pairs:
        raise ValueError("these results hold no policy runs (evaluate was run without --policy)")
    objective = {key: float(row["objective"]) for key, row in runs.items()}
    wins = {"all": [0, 0], "compute-bound": [0, 0], "data-bound": [0, 0], "other": [0, 0]}
    for job, seed in pairs:
        won = objective[job, seed, POLICY] < objective[job, seed, REFERENCE]
        for key in ("all", regime(job)):
            wins[key][0] += won
            wins[key][1] += 1
    return {
        "policy": statistics.fmean(objective[job, seed, POLICY] for job, seed in pairs),
        "uniform": statistics.fmean(objective[job, seed, REFERENCE] for job, seed in pairs),
        "wins": {key: tuple(value) for key, value in wins.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluations", nargs="+", metavar="DIR", help="directories written by evaluate --out")
    parser.add_argument("--per-job", action="store_true", help="also J minus uniform's per job and seed")
    parser.add_argument(
        "--noise-floor",
        metavar="CSV",
        help="a noise_floor.py --out file: also count pairs won or lost by more than their noise floor",
    )
    args = parser.parse_args(argv)
    try:
        loaded = {directory: read_runs(directory) for directory in args.evaluations}
        summaries = {directory: summary(runs) for directory, runs in loaded.items()}
        floor = read_noise_floor(args.noise_floor) if args.noise_floor else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print("| evaluation | policy mean J | uniform mean J | wins | compute-bound wins | data-bound wins |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for directory, s in summaries.items():
        cells = [f"{s['wins'][key][0]}/{s['wins'][key][1]}" for key in ("all", "compute-bound", "data-bound")]
        print(f"| {directory} | {s['policy']:.4f} | {s['uniform']:.4f} | " + " | ".join(cells) + " |")
    if floor is not None:
        print("\nAgainst the noise floor of each job and seed: won / within / lost by more than it (pairs)\n")
        print("| evaluation | all | compute-bound | data-bound |")
        print("| --- | ---: | ---: | ---: |")
        for directory, runs in loaded.items():
            counts = against_noise(runs, floor)
            cells = [f"{won} / {within} / {lost} ({pairs})" for won, within, lost, pairs in (counts[k] for k in ("all", "compute-bound", "data-bound"))]
            print(f"| {directory} | " + " | ".join(cells) + " |")
    if args.per_job:
        for directory, runs in loaded.items():
            print(f"\n{directory}: J - uniform's J (policy's compute fraction), per seed")
            for job in sorted({job for job, _, controller in runs if controller == POLICY}):
                seeds = sorted(seed for j, seed, controller in runs if j == job and controller == POLICY)
                cells = [
                    f"{float(runs[job, seed, POLICY]['objective']) - float(runs[job, seed, REFERENCE]['objective']):+.4f}"
                    f" ({float(runs[job, seed, POLICY]['compute_fraction']):.2f})"
                    for seed in seeds
                ]
                print(f"  {job:<26} {regime(job):<14} " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
