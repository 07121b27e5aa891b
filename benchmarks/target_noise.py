"""How much of "reaches uniform's best" is the draw of uniform's own evaluation grid?

Compute to target asks a controller to reach uniform's best validation loss:
the lowest of uniform's own evaluations, one per 20-step interval. The
interval grid is not only where the curve is read: the sample groups are
re-sorted by loss at each interval's end and every batch is stratified over
them, even at equal shares, so the same standard training split into other
intervals draws other batches and follows another noisy curve. On a
data-bound job, whose best is a dip before the loss turns up, that makes
uniform's best partly a draw of its grid.

This runs standard training (equal shares, keep 1, every layer group, the
same job seed) on other grids and counts how often it reaches uniform's best,
and how early:

* ``half intervals``: every interval ``max_steps // 2`` steps;
* ``shifted grid``: a first interval of ``max_steps // 2`` steps, then full
  ones (the same cadence, read half an interval later).

Neither changes what is trained per step, so a miss here is the target's
noise, not a controller's choice (BENCHMARKS.md section 5, twenty-seventh round):

    python benchmarks/target_noise.py --split heldout --seeds 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

from allocator.allocation import Allocation, AllocationSpec
from allocator.baselines import Uniform
from allocator.evaluation import build_job, resolve_jobs
from allocator.runner import run_job

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
from compare_runs import regime  # noqa: E402


class StandardTrainingOnGrid(Uniform):
    """Standard training whose first interval takes ``first`` steps and every later one ``steps``."""

    def __init__(self, name: str, first: int, steps: int) -> None:
        super().__init__()
        if first < 1 or steps < 1:
            raise ValueError(f"interval lengths must be at least 1 step, got {first} and {steps}")
        self.name, self.first, self.steps = name, first, steps
        self._intervals = 0

    def reset(self, job) -> None:
        super().reset(job)
        self._intervals = 0

    def act(self, observation) -> Allocation:
        uniform = Allocation.uniform(self.spec)
        steps = self.first if self._intervals == 0 else self.steps
        self._intervals += 1
        return Allocation(uniform.sample_shares, uniform.keep_fraction, uniform.layer_gates, steps)


def grids(max_steps: int) -> list[StandardTrainingOnGrid]:
    half = max(1, max_steps // 2)
    return [
        StandardTrainingOnGrid("half intervals", half, half),
        StandardTrainingOnGrid("shifted grid", half, max_steps),
    ]


def measure(jobs, seeds: list[int], spec: AllocationSpec, show=print) -> list[dict]:
    """One row per (grid, job, seed): uniform's best, the grid's best and its compute to target."""
    rows = []
    for source in jobs:
        for seed in seeds:
            uniform = run_job(build_job(source, seed, spec), "uniform")
            for controller in grids(spec.max_steps):
                run = run_job(build_job(source, seed, spec), controller)
                to_target = run.compute_to_reach(uniform.best_val_loss)
                rows.append(
                    {
                        "grid": controller.name,
                        "job": source.name,
                        "seed": seed,
                        "regime": regime(source.name),
                        "uniform_best": uniform.best_val_loss,
                        "best": run.best_val_loss,
                        "compute_to_target": to_target,
                    }
                )
                reached = f"at {to_target:.3f}" if math.isfinite(to_target) else "never"
                show(
                    f"{controller.name:15s} {source.name:26s} seed {seed}: best {run.best_val_loss:.4f}  "
                    f"uniform's {uniform.best_val_loss:.4f}  reaches it {reached}"
                )
    return rows


def summary_table(rows: list[dict]) -> str:
    lines = [
        "| grid | jobs | pairs | reach uniform's best | within 0.7 | median best / uniform's best |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name in dict.fromkeys(r["grid"] for r in rows):
        for kind in ("all", "compute-bound", "data-bound"):
            chosen = [r for r in rows if r["grid"] == name and kind in ("all", r["regime"])]
            if not chosen:
                continue
            reached = sum(math.isfinite(r["compute_to_target"]) for r in chosen)
            within = sum(r["compute_to_target"] <= 0.7 for r in chosen)
            ratio = statistics.median(r["best"] / r["uniform_best"] for r in chosen)
            lines.append(f"| {name} | {kind} | {len(chosen)} | {reached} | {within} | {ratio:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="heldout", choices=["train", "heldout", "all"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=20, help="steps per interval (the presets' spec)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.max_steps < 2:
        parser.error("--seeds must be at least 1 and --max-steps at least 2")
    torch.set_num_threads(1)
    jobs = resolve_jobs(None, args.split, device="cpu")
    rows = measure(jobs, list(range(args.seeds)), AllocationSpec(max_steps=args.max_steps))
    print()
    print(summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
