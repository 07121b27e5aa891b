"""Would a trained policy do better with a hand-made rule on when it stops?

Wraps a policy so that a stop (zero steps) is honoured only when the last
validation loss is above the best so far (``val_loss_above_best > 0``);
otherwise the interval runs ``max_steps`` steps with the policy's other
entries. With ``--falling-faster-than X`` a stop at the best is refused only
while the loss is still falling fast (``val_loss_trend < -X``, in log-loss per
budget share). ``--rule before-budget`` instead adds a stop: the policy stops
once the budget left is no more than its last interval spent, so it skips the
interval that would end the budget (standard training stopped this way wins
21 of 24 train pairs, ``stopping_oracle.py``). Runs uniform, the policy and the
guarded policy on every job and seed of a split and prints mean J and wins
over uniform:

    python benchmarks/stop_guard.py --split train runs/quick-here-s2 runs/e13-s0-last
    python benchmarks/stop_guard.py --split train --rule before-budget runs/distilled

BENCHMARKS.md section 5 (fourth and eleventh rounds) has what it found.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from family_transfer import load_policies  # noqa: E402

from allocator.allocation import Allocation  # noqa: E402
from allocator.evaluation import build_job, resolve_jobs  # noqa: E402
from allocator.runner import run_job  # noqa: E402
from allocator.stats import ObservationLayout  # noqa: E402


class StopGuard:
    """``policy``, except that it cannot stop while the validation loss is at its best.

    With ``falling_faster_than`` set, only while it is at its best and its
    trend is below ``-falling_faster_than``.
    """

    name = "stop-guard"

    def __init__(self, policy, falling_faster_than: float | None = None) -> None:
        self.policy = policy
        self.falling_faster_than = falling_faster_than

    def reset(self, job) -> None:
        self.policy.reset(job)
        self.spec = job.spec
        layout = ObservationLayout(job.spec)
        self.above_best = layout.global_index("val_loss_above_best")
        self.trend = layout.global_index("val_loss_trend")

    def act(self, observation) -> Allocation:
        allocation = self.policy.act(observation)
        at_best = observation[self.above_best] <= 0.0
        falling = self.falling_faster_than is None or observation[self.trend] < -self.falling_faster_than
        if allocation.stops and at_best and falling:
            return dataclasses.replace(allocation, steps=self.spec.max_steps)
        return allocation


class StopBeforeTheBudget:
    """``policy``, run on jobs that stop once the budget left is at most what the last interval spent.

    The interval it skips is the one that would spend the rest of the budget,
    where the learning rate has decayed to near zero. The rule is the job's
    (``TrainingJob.stop_before_budget``, what a policy trained with
    ``env.stop_before_budget`` sets); this puts it under a policy trained
    without it.
    """

    name = "stop-before-budget"

    def __init__(self, policy) -> None:
        self.policy = policy

    def reset(self, job) -> None:
        self.policy.reset(job)
        job.stop_before_budget = True

    def act(self, observation) -> Allocation:
        return self.policy.act(observation)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", metavar="DIR", help="trained policy directories")
    parser.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--falling-faster-than",
        type=float,
        default=None,
        metavar="X",
        help="refuse a stop at the best only while val_loss_trend < -X (default: always at the best)",
    )
    parser.add_argument(
        "--rule",
        choices=["at-best", "before-budget"],
        default="at-best",
        help="at-best: refuse a stop while the validation loss is at its best; "
        "before-budget: stop once the budget left is at most the last interval's spend",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    jobs = resolve_jobs(None, args.split, device="cpu")
    print("| policy | uniform mean J | policy mean J (wins) | with the stop guard (wins) |")
    print("| --- | ---: | ---: | ---: |")
    policies = load_policies(parser, args.policies)  # each reset by run_job before every run
    for path, policy in policies.items():
        if args.rule == "before-budget":
            guard = StopBeforeTheBudget(policy)
        else:
            guard = StopGuard(policy, args.falling_faster_than)
        rows = []
        for source in jobs:
            for seed in range(args.seeds):
                uniform = run_job(build_job(source, seed, policy.spec), "uniform").objective
                plain = run_job(build_job(source, seed, policy.spec), policy).objective
                guarded = run_job(build_job(source, seed, policy.spec), guard).objective
                rows.append((uniform, plain, guarded))
        cells = [
            f"{statistics.fmean(r[column] for r in rows):.4f} ({sum(r[column] < r[0] for r in rows)}/{len(rows)})"
            for column in (1, 2)
        ]
        print(
            f"| {path} | {statistics.fmean(r[0] for r in rows):.4f} | " + " | ".join(cells) + " |", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
