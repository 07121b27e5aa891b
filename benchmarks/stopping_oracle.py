"""How much J can stopping alone buy? Computed from uniform training's own curves.

Runs uniform training on every job and seed of a split, then, from each run's
curve of (compute fraction, validation loss), computes J as if the run had
stopped after interval k, for every k (the prefix of a run does not depend on
when it stops: the learning rate decays with compute spent). Reports

* the oracle: the best stopping interval in hindsight (an upper bound on what
  a stopping decision alone can buy);
* a causal rule: stop once the running mean of the log-validation-loss slope per
  unit of budget rises above ``-theta / (1 + 0.8 U)`` (where one more interval
  stops paying under J with s = 0.2; U is the unused budget share);
* standard training stopped ``k`` intervals before the budget, for ``k`` = 1 ..
  ``--early`` (a hand rule with no feedback at all: where it wins, a pair is won
  by the last intervals' tiny loss change, below what J pays for their compute),
  with its wins on compute-bound and data-bound jobs apart;
* whether the oracle's stop reaches uniform's best validation loss (the
  target of compute to target): one more interval pays under J only while
  the relative loss falls by more than ``c * s * l' / ((1 - F) * (1 - s) + w)``
  per interval of budget share ``c`` (``F`` the share spent), so where the
  curve flattens towards its minimum the best stop under J comes before it.

    python benchmarks/stopping_oracle.py --split train --max-steps 20
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

from allocator.allocation import AllocationSpec
from allocator.evaluation import build_job, resolve_jobs
from allocator.objective import Objective
from allocator.runner import run_job
from allocator.stats import TREND_DECAY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_runs import regime  # noqa: E402


def oracle_to_target(curve: list[tuple[float, float]], stop: int) -> float:
    """Compute to target of the run stopped after interval ``stop``: where it first reaches its best loss.

    The target is the full run's best validation loss (uniform's best, as in
    ``evaluate``); ``inf`` when the stop comes before the interval that reaches it.
    """
    losses = [loss for _, loss in curve[1:]]
    first_best = 1 + losses.index(min(losses))
    return curve[first_best][0] if stop >= first_best else math.inf


def rule_stop(curve: list[tuple[float, float]], theta: float, decay: float = TREND_DECAY) -> int:
    """The interval after which the causal slope rule stops (the last one if never)."""
    trend = None
    for k in range(1, len(curve)):
        spent = max(curve[k][0] - curve[k - 1][0], 1e-9)
        slope = (math.log(curve[k][1]) - math.log(curve[k - 1][1])) / spent
        trend = slope if trend is None else decay * trend + (1 - decay) * slope
        if k >= 2 and trend > -theta / (1 + 0.8 * (1 - curve[k][0])):
            return k
    return len(curve) - 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=20, help="steps per interval (the policy's spec)")
    parser.add_argument("--theta", type=float, default=0.2, help="threshold of the causal rule")
    parser.add_argument(
        "--early", type=int, default=2, help="also stop uniform 1 .. N intervals before the budget"
    )
    args = parser.parse_args(argv)
    if args.early < 0:
        parser.error(f"--early must be >= 0, got {args.early}")
    torch.set_num_threads(1)

    objective = Objective()
    spec = AllocationSpec(max_steps=args.max_steps)
    uniform, oracle, rule = [], [], []
    early: dict[int, list[float]] = {k: [] for k in range(1, args.early + 1)}
    regimes = []
    oracle_target: list[float] = []  # compute to target of the oracle's stop (inf: stopped before it)
    for source in resolve_jobs(None, args.split, device="cpu"):
        for seed in range(args.seeds):
            result = run_job(build_job(source, seed, spec), "uniform")
            values = objective.stopped_values(result.curve)
            stop = rule_stop(result.curve, args.theta)
            uniform.append(values[-1])
            oracle.append(min(values))
            rule.append(values[stop])
            for k in early:  # a run shorter than k + 1 intervals stops at once
                early[k].append(values[max(len(values) - 1 - k, 0)])
            regimes.append(regime(source.name))
            best_at = oracle_to_target(result.curve, values.index(min(values)))
            oracle_target.append(best_at)
            print(
                f"{source.name:26s} seed {seed}: uniform {values[-1]:.4f}  oracle {min(values):.4f} "
                f"(after {values.index(min(values))}/{len(values) - 1}, uniform's best "
                f"{'at ' + format(best_at, '.3f') if math.isfinite(best_at) else 'not reached'})  "
                f"rule {values[stop]:.4f} (after {stop})",
                flush=True,
            )
    print(
        f"\n| | mean J | wins over uniform |\n| --- | ---: | ---: |\n| uniform | {statistics.mean(uniform):.4f} | - |"
    )
    rows = [("oracle stop", oracle), (f"slope rule, theta {args.theta}", rule)]
    rows += [
        (f"uniform stopped {k} interval{'s' if k > 1 else ''} before the budget", early[k]) for k in early
    ]

    def wins(values: list[float], kind: str | None = None) -> str:
        pairs = [(v, u) for v, u, r in zip(values, uniform, regimes) if kind in (None, r)]
        return f"{sum(v < u - 1e-9 for v, u in pairs)}/{len(pairs)}"

    for label, values in rows:
        print(f"| {label} | {statistics.mean(values):.4f} | {wins(values)} |")
    for label, values in rows[2:]:
        print(
            f"{label}: wins on compute-bound {wins(values, 'compute-bound')}, data-bound {wins(values, 'data-bound')}"
        )
    for kind in ("compute-bound", "data-bound"):
        reached = [c for c, r in zip(oracle_target, regimes) if r == kind]
        print(
            f"oracle stop on {kind} pairs: reaches uniform's best on {sum(math.isfinite(c) for c in reached)}/"
            f"{len(reached)}, within 0.7 of the budget on {sum(c <= 0.7 for c in reached)}"
        )
    print(f"oracle stop: median compute to target {statistics.median(oracle_target):.3f} (inf: never)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
