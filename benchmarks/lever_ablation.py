"""Which of a policy's levers costs it J on a set of jobs? Each lever in turn set back to standard training.

Runs uniform, the policy, and the policy with one lever overridden to what
standard training does -- even sample shares, keep fraction 1 (every drawn
sample gets a backward pass), layer gates 1, or no stopping (a stop runs the
interval's full steps instead) -- on the same jobs and seeds, and prints mean
J and wins over uniform for each. Jobs are the named jobs of a split, or with
``--families`` jobs drawn from those model families only (the same jobs as
``family_transfer.py``):

    python benchmarks/lever_ablation.py --families cnn1d --jobs 16 --seeds 1 runs/quick

BENCHMARKS.md section 5 (fifth round) has what it found.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from family_transfer import transfer_recipes  # noqa: E402

from allocator import AllocatorPolicy  # noqa: E402
from allocator.evaluation import resolve_jobs  # noqa: E402
from allocator.runner import run_job  # noqa: E402


def standard(lever: str, allocation, spec):
    """``allocation`` with ``lever`` set to what standard training does."""
    if lever == "sample shares":
        count = len(allocation.sample_shares)
        return dataclasses.replace(allocation, sample_shares=(1.0 / count,) * count)
    if lever == "keep fraction":
        return dataclasses.replace(allocation, keep_fraction=1.0)
    if lever == "layer gates":
        return dataclasses.replace(allocation, layer_gates=(1.0,) * len(allocation.layer_gates))
    if lever == "stopping":
        return dataclasses.replace(allocation, steps=spec.max_steps) if allocation.stops else allocation
    raise ValueError(f"unknown lever {lever!r}")


LEVERS = ("sample shares", "keep fraction", "layer gates", "stopping")


class WithStandardLever:
    """``policy``, with one lever held at standard training."""

    def __init__(self, policy, lever: str) -> None:
        self.policy = policy
        self.lever = lever
        self.name = f"policy, standard {lever}"

    def reset(self, job) -> None:
        self.policy.reset(job)
        self.spec = job.spec

    def act(self, observation):
        return standard(self.lever, self.policy.act(observation), self.spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", metavar="DIR", help="trained policy directories")
    parser.add_argument("--split", default="train", choices=["train", "heldout"])
    parser.add_argument(
        "--families", default=None, help="jobs drawn from these model families (comma-separated)"
    )
    parser.add_argument("--jobs", type=int, default=16, help="with --families: how many distinct jobs")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.families:
            families = [f.strip() for f in args.families.split(",") if f.strip()]
            builders = [
                (lambda seed, r=recipe: r.build(seed=seed, device="cpu"))
                for recipe in transfer_recipes(args.split, families, args.jobs).values()
            ]
        else:
            builders = [source.build for source in resolve_jobs(None, args.split, device="cpu")]
    except ValueError as error:
        parser.error(str(error))
    print(
        "| policy | uniform | policy as trained | "
        + " | ".join(f"standard {lever}" for lever in LEVERS)
        + " |"
    )
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in LEVERS) + " |")
    for path in args.policies:
        policy = AllocatorPolicy.load(path)  # reset by run_job before every run
        controllers = [policy] + [WithStandardLever(policy, lever) for lever in LEVERS]
        rows = []
        for build in builders:
            for seed in range(args.seeds):

                def objective(controller, build=build, seed=seed, spec=policy.spec) -> float:
                    job = build(seed)
                    job.use_spec(spec)
                    return run_job(job, controller).objective

                uniform = objective("uniform")
                rows.append([uniform] + [objective(controller) for controller in controllers])
        cells = [
            f"{statistics.fmean(r[c] for r in rows):.4f} ({sum(r[c] < r[0] for r in rows)}/{len(rows)})"
            for c in range(1, len(controllers) + 1)
        ]
        print(
            f"| {path} | {statistics.fmean(r[0] for r in rows):.4f} | " + " | ".join(cells) + " |", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
