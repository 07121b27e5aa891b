"""How much does J move when standard training's allocation moves by a hair?

Runs uniform training and two barely different fixed allocations on every job
and seed of a split, with the same job seed (so the same initial weights and
minibatch generator):

* ``shares +-0.01``: the first sample group's share 0.01 above equal, the last
  group's 0.01 below (with K = 4: 0.26, 0.25, 0.25, 0.24);
* ``gate 0.99``: the last layer group (the output head) is trained at 99 % of
  the steps instead of all.

Neither saves compute or should change what a training run reaches. What they
do change is the trajectory: a different minibatch or one skipped update, and
SGD goes its own way from there. The spread of J they produce is the noise
floor against which a policy's "win" over uniform on the same job and seed
should be read; on compute-bound jobs, where the best a controller can gain is
0.001 to 0.02 of J (stopping_oracle.py), it decides most pairs.

    python benchmarks/noise_floor.py --split heldout --seeds 3 --out runs/noise-floor-heldout.csv

With ``--out``, every pair of runs goes to a CSV that
``compare_runs.py --noise-floor`` reads to sort a policy's pairs into wins
and losses larger than the noise floor of the same job and seed, and the rest.
"""

from __future__ import annotations

import argparse
import csv
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


class FixedAllocation(Uniform):
    """Uniform training with some entries of the allocation fixed to other values."""

    def __init__(self, name: str, share_tilt: float = 0.0, last_gate: float = 1.0) -> None:
        super().__init__()
        self.name = name
        self.share_tilt = share_tilt
        self.last_gate = last_gate

    def act(self, observation) -> Allocation:
        uniform = Allocation.uniform(self.spec)
        shares = list(uniform.sample_shares)
        shares[0] += self.share_tilt
        shares[-1] -= self.share_tilt
        gates = list(uniform.layer_gates)
        gates[-1] = self.last_gate
        return Allocation(tuple(shares), 1.0, tuple(gates), uniform.steps)


def perturbations() -> list[FixedAllocation]:
    return [FixedAllocation("shares +-0.01", share_tilt=0.01), FixedAllocation("gate 0.99", last_gate=0.99)]


def measure(jobs, seeds: list[int], spec: AllocationSpec, show=print) -> dict[str, list[dict]]:
    """``{perturbation: [{job, seed, regime, uniform, perturbed}, ...]}``, J of each pair of runs."""
    rows = {p.name: [] for p in perturbations()}
    for source in jobs:
        for seed in seeds:
            uniform = run_job(build_job(source, seed, spec), "uniform").objective
            for controller in perturbations():
                perturbed = run_job(build_job(source, seed, spec), controller).objective
                rows[controller.name].append(
                    {"job": source.name, "seed": seed, "regime": regime(source.name), "uniform": uniform, "perturbed": perturbed}
                )
                show(f"{controller.name:14s} {source.name:26s} seed {seed}: J {perturbed:.4f}  uniform {uniform:.4f}  change {perturbed - uniform:+.4f}")
    return rows


def summary_table(rows: dict[str, list[dict]]) -> str:
    lines = [
        "| perturbation | jobs | pairs | lower J than uniform | mean change of J | mean abs change | largest abs change |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in rows.items():
        for kind in ("all", "compute-bound", "data-bound"):
            chosen = [r for r in runs if kind == "all" or r["regime"] == kind]
            if not chosen:
                continue
            changes = [r["perturbed"] - r["uniform"] for r in chosen]
            lower = sum(c < 0 for c in changes)
            lines.append(
                f"| {name} | {kind} | {len(chosen)} | {lower} | {statistics.mean(changes):+.4f} | "
                f"{statistics.mean(abs(c) for c in changes):.4f} | {max(abs(c) for c in changes):.4f} |"
            )
    return "\n".join(lines)


def write_csv(rows: dict[str, list[dict]], path: str | Path) -> None:
    """One line per (perturbation, job, seed): job, seed, regime, perturbation, uniform, perturbed."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["job", "seed", "regime", "perturbation", "uniform", "perturbed"])
        for name, runs in rows.items():
            for r in runs:
                writer.writerow([r["job"], r["seed"], r["regime"], name, repr(r["uniform"]), repr(r["perturbed"])])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=20, help="steps per interval (the presets' spec)")
    parser.add_argument("--out", default=None, help="also write every pair of runs to this CSV file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = measure(resolve_jobs(None, args.split, device="cpu"), list(range(args.seeds)), AllocationSpec(max_steps=args.max_steps))
    print()
    print(summary_table(rows))
    if args.out:
        write_csv(rows, args.out)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
