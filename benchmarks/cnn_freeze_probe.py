"""Does freezing a CNN's first layer group give a policy compute to target on convolutional jobs?

BENCHMARKS.md section 5, twenty-first round: on the train split's 1-D CNN the
one allocation that reaches uniform's best within 0.7 of the budget is
standard training with the first layer group frozen (no weight gradients and
no backward pass into it: cheaper steps, more of them in the budget). The
published policies' actions never freeze (``min_layer_gate: 1``). This runs, on every
(job, seed) pair of a set of convolutional jobs, uniform, the policy, the
policy with its first layer group frozen on jobs whose model has a
convolution (``policy.with_cnn_first_group_frozen()``, the rule as the
product runs it: the job sets the first gate to 0), and that fixed
allocation alone, and reports per controller how many compute-bound pairs
(by uniform's own curve) reach uniform's best within 0.7, mean J and wins
over uniform:

    python benchmarks/cnn_freeze_probe.py --policy benchmarks/heldout-default/policy --set train

``--set train``: the 1-D CNN jobs of ``train_check.py`` (16 drawn jobs x 2
seeds) and the named ``mnist1d-cnn1d`` (3 seeds). ``--set heldout``: the
held-out convolutional jobs (``digits-cnn``, ``mnist1d-hard-cnn1d``) x 3
seeds: the once-only check of a rule chosen on the train split.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

import torch

from allocator.evaluation import resolve_jobs
from allocator.policy import AllocatorPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
from allocation_oracle import TARGET_SHARE, FixedAllocation, measure  # noqa: E402
from family_transfer import job_builders, transfer_recipes  # noqa: E402

HELDOUT_CNN_JOBS = ("digits-cnn", "mnist1d-hard-cnn1d")
TRAIN_CNN_JOBS = ("mnist1d-cnn1d",)


def with_and_without_the_rule(policy: AllocatorPolicy) -> tuple[AllocatorPolicy, AllocatorPolicy]:
    """The policy without the rule and with it (``with_cnn_first_group_frozen``), named apart.

    Whatever the policy's own spec says: the published ``default`` carries the rule
    since the twenty-eighth round, and this probe compares the two.
    """
    alone = policy.with_cnn_first_group_frozen(False)
    frozen = policy.with_cnn_first_group_frozen(True)
    alone.name, frozen.name = "policy", "policy, first group frozen on CNNs"
    return alone, frozen


def pairs_of(which: str, seeds: int) -> list[tuple[str, int, object]]:
    """``[(job name, seed, build(seed)), ...]`` of the train or held-out convolutional set."""
    if which == "train":
        drawn = job_builders(transfer_recipes("train", ["cnn1d"], 16))
        pairs = [(name, seed, build) for name, build in drawn.items() for seed in (0, 1)]
        sources = [s for s in resolve_jobs(None, "train", device="cpu") if s.name in TRAIN_CNN_JOBS]
    else:
        pairs = []
        sources = [s for s in resolve_jobs(None, "heldout", device="cpu") if s.name in HELDOUT_CNN_JOBS]
    pairs += [(source.name, seed, source.build) for source in sources for seed in range(seeds)]
    return pairs


def first_gate(rows: list[dict]) -> str:
    """The first layer group's gate over the runs (each run's mean over its steps): how often it trained."""
    gates = [float(r["layer_gates"].split()[0]) for r in rows if r.get("layer_gates")]
    return f"{statistics.mean(gates):.2f}" if gates else "-"


def summary(rows: list[dict]) -> str:
    lines = [
        "| controller | pairs | compute-bound | within 0.7 (compute-bound) | reached at all | mean J | wins over uniform "
        "| first group's gate (mean) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in dict.fromkeys(r["contender"] for r in rows):
        mine = [r for r in rows if r["contender"] == name]
        bound = [r for r in mine if r["regime"] == "compute-bound"]
        lines.append(
            f"| {name} | {len(mine)} | {len(bound)} | {sum(r['compute_to_target'] <= TARGET_SHARE for r in bound)} | "
            f"{sum(math.isfinite(r['compute_to_target']) for r in mine)} | "
            f"{statistics.mean(r['objective'] for r in mine):.4f} | "
            f"{sum(r['objective'] < r['uniform_objective'] for r in mine)} | {first_gate(mine)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="a policy directory (an ensemble is fine)")
    parser.add_argument("--set", choices=("train", "heldout"), default="train", help="which convolutional jobs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each named job (default: 3)")
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each (default: 2)")
    parser.add_argument("--out", default=None, help="also write every run's row to this CSV file")
    args = parser.parse_args(argv)
    try:
        policy = AllocatorPolicy.load(args.policy)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    contenders = [
        *with_and_without_the_rule(policy),
        FixedAllocation("keep 1, even shares, first frozen", frozen=(0,)),
    ]
    rows = measure(pairs_of(args.set, args.seeds), args.workers, contenders, policy.spec.max_steps)
    print()
    print(summary(rows))
    if args.out:
        fields = [key for key in rows[0] if key != "curve"]
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
