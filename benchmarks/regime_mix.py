"""Does the number of epochs tell a training job's regime? Uniform runs of sampled jobs, by epochs.

A policy that can read a job's regime off how many epochs its budget buys
learns to stop on that alone (BENCHMARKS.md section 5: the `quick` policy's
feature ablation), and then stops a slow-learning model family it has never
seen as if it were data-bound. This draws sampled (not named) recipes of a
split, runs each once under standard training, classifies its validation
curve (``measured_regime``: compute-bound, converged or data-bound) and
prints how the regimes fall into bands of budget epochs:

    python benchmarks/regime_mix.py --split train --jobs 120
    python benchmarks/regime_mix.py --split train --jobs 120 --many-epoch-share 0.5

With ``--out FILE.csv`` every job's row is kept (recipe, epochs, drawn and
measured regime, uniform J). Each run uses one torch thread; ``--workers``
runs that many at once.
"""

from __future__ import annotations

import argparse
import csv
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from allocator.jobs import JobDistribution
from allocator.jobs.distribution import measured_regime

# apart from the envs' job pools (job_pool_seed 0), the validation jobs and family_transfer.py
JOB_SEED = 4048
EPOCH_BANDS = ((0.0, 6.0), (6.0, 9.0), (9.0, 30.0), (30.0, float("inf")))
MEASURED = ("compute-bound", "converged", "data-bound", "diverged")


def measure(recipe_and_seed) -> dict:
    """One uniform run of a recipe on the CPU (one thread): its row of the table."""
    import torch

    from allocator.runner import run_job

    recipe, seed = recipe_and_seed
    torch.set_num_threads(1)
    result = run_job(recipe.build(seed=seed, device="cpu"), "uniform")
    return {
        "job": recipe.name,
        "seed": seed,
        "epochs": round(recipe.budget_epochs, 3),
        "drawn_regime": recipe.regime,
        "measured_regime": measured_regime(result.curve),
        "uniform_objective": round(result.objective, 6),
        "recipe": recipe.describe(),
    }


def band_table(rows: list[dict]) -> list[str]:
    """Markdown lines: per band of budget epochs, how many jobs measured in each regime."""
    lines = [
        "| budget epochs | jobs | " + " | ".join(MEASURED) + " | mean uniform J |",
        "| --- | ---: | " + " | ".join("---:" for _ in MEASURED) + " | ---: |",
    ]
    for low, high in EPOCH_BANDS:
        inside = [row for row in rows if low <= row["epochs"] < high]
        counts = [sum(row["measured_regime"] == regime for row in inside) for regime in MEASURED]
        mean_j = f"{np.mean([row['uniform_objective'] for row in inside]):.3f}" if inside else "-"
        label = f"{low:g} to {high:g}" if np.isfinite(high) else f"{low:g} or more"
        lines.append(f"| {label} | {len(inside)} | " + " | ".join(map(str, counts)) + f" | {mean_j} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="train", choices=["train", "heldout"])
    parser.add_argument("--jobs", type=int, default=120, help="sampled recipes to run (default: %(default)s)")
    parser.add_argument(
        "--many-epoch-share",
        type=float,
        default=0.0,
        help="JobDistribution's many_epoch_share (default: %(default)s, the presets' distribution)",
    )
    parser.add_argument("--workers", type=int, default=2, help="runs at once (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="CSV file for every job's row")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.workers < 1:
        parser.error("--jobs and --workers must be at least 1")
    try:
        distribution = JobDistribution(args.split, named_share=0.0, many_epoch_share=args.many_epoch_share)
    except ValueError as error:
        parser.error(str(error))
    rng = np.random.default_rng(JOB_SEED)
    draws = [(distribution.sample_recipe(rng), int(rng.integers(1000))) for _ in range(args.jobs)]
    if args.workers == 1:
        rows = list(tqdm(map(measure, draws), total=len(draws), desc="uniform runs", unit="job"))
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(tqdm(pool.map(measure, draws), total=len(draws), desc="uniform runs", unit="job"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"{len(rows)} sampled jobs of the {args.split} split, many_epoch_share {args.many_epoch_share:g}")
    for drawn in ("compute-bound", "data-bound"):
        print(f"\ndrawn {drawn}:")
        print("\n".join(band_table([row for row in rows if row["drawn_regime"] == drawn])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
