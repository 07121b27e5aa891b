"""Which of a policy's levers costs it J on a set of jobs? Each lever in turn set back to standard training.

Runs uniform, the policy, and the policy with one lever overridden to what
standard training does -- even sample shares, keep fraction 1 (every drawn
sample gets a backward pass), layer gates 1, or no stopping (a stop runs the
interval's full steps instead) -- on the same jobs and seeds, and prints mean
J and wins over uniform for each. Jobs are the named jobs of a split, or with
``--families`` jobs drawn from those model families only (the same jobs as
``family_transfer.py``):

    python benchmarks/lever_ablation.py --families cnn1d --jobs 16 --seeds 1 runs/quick

``--slow-learner-jobs N`` runs the stand-in for the held-out slow learners
instead (``train_check.py --slow-learner-jobs``: N many-epoch compute-bound
jobs) and counts only the pairs whose uniform run measures compute-bound,
where every lever but stopping is what can still cost J once a policy runs
to the end.

BENCHMARKS.md section 5 (fifth and seventeenth rounds) has what it found.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from family_transfer import job_builders, load_policies, transfer_recipes  # noqa: E402
from train_check import slow_learner_recipes  # noqa: E402

from allocator.allocation import Allocation  # noqa: E402
from allocator.evaluation import parse_names, resolve_jobs  # noqa: E402
from allocator.jobs.distribution import measured_regime  # noqa: E402
from allocator.runner import run_job  # noqa: E402

# each lever and the Allocation field that holds it
LEVERS = {
    "sample shares": "sample_shares",
    "keep fraction": "keep_fraction",
    "layer gates": "layer_gates",
    "stopping": "steps",
}


def standard(lever: str, allocation, spec):
    """``allocation`` with ``lever`` set to what standard training (``Allocation.uniform``) does.

    For ``stopping`` only a stop is undone: an interval of fewer steps keeps them.
    """
    if lever not in LEVERS:
        raise ValueError(f"unknown lever {lever!r}")
    if lever == "stopping" and not allocation.stops:
        return allocation
    field = LEVERS[lever]
    return dataclasses.replace(allocation, **{field: getattr(Allocation.uniform(spec), field)})


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
    parser.add_argument(
        "--slow-learner-jobs",
        type=int,
        default=0,
        metavar="N",
        help="run N many-epoch compute-bound jobs of the train split (train_check.py's stand-in for slow "
        "learners) and count only the pairs uniform measures compute-bound",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.slow_learner_jobs < 0:
        parser.error(f"--slow-learner-jobs must be >= 0, got {args.slow_learner_jobs}")
    try:
        if args.slow_learner_jobs:
            builders = list(job_builders(slow_learner_recipes(args.slow_learner_jobs)).values())
        elif args.families:
            recipes = transfer_recipes(args.split, parse_names(args.families), args.jobs)
            builders = list(job_builders(recipes).values())
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
    policies = load_policies(parser, args.policies)  # each reset by run_job before every run
    for path, policy in policies.items():
        controllers = [policy] + [WithStandardLever(policy, lever) for lever in LEVERS]
        rows = []
        for build in builders:
            for seed in range(args.seeds):

                def result(controller, build=build, seed=seed, spec=policy.spec):
                    job = build(seed)
                    job.use_spec(spec)
                    return run_job(job, controller)

                uniform = result("uniform")
                if args.slow_learner_jobs and measured_regime(uniform.curve) != "compute-bound":
                    continue
                rows.append([uniform.objective] + [result(controller).objective for controller in controllers])
        if not rows:
            print(f"| {path} | no compute-bound pairs |", flush=True)
            continue
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
