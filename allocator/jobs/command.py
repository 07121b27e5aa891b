"""List the built-in training jobs, one a line: its name, then what it trains and how.

``compute-allocator jobs`` prints every named job; ``--split`` keeps one split.
``--measure`` also runs each job once under uniform training on one CPU
thread and prints the wall time and the regime its validation curve shows
(compute-bound: still falling at the budget; data-bound: turned up before it).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split",
        choices=("train", "heldout", "all"),
        default="all",
        help="list the jobs of one split only",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="run each job once under uniform training (CPU, one thread) and print its "
        "wall time and measured regime",
    )
    parser.add_argument("--seed", type=int, default=0, help="job seed for --measure")


def run(args: argparse.Namespace) -> int:
    from allocator.jobs.distribution import describe, names

    for name in names(args.split):
        line = f"{name}  {describe(name)}"
        if args.measure:
            line += "  " + _measure(name, args.seed)
        print(line, flush=True)
    return 0


def _measure(name: str, seed: int) -> str:
    import time

    import torch

    from allocator.jobs.distribution import make_job, measured_regime
    from allocator.runner import run_job

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the per-episode cost a single environment worker pays
    try:
        started = time.perf_counter()
        job = make_job(
            name, seed=seed, device="cpu"
        )  # data generation is cached after the first build
        built = time.perf_counter()
        result = run_job(job, "uniform")
        finished = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    best_at = next(fraction for fraction, loss in result.curve if loss == result.best_val_loss)
    return (
        f"| uniform episode {finished - built:.2f} s (build {built - started:.2f} s): "
        f"{measured_regime(result.curve)} (val loss {result.curve[0][1]:.3f} -> best "
        f"{result.best_val_loss:.3f} at {best_at:.0%} of the budget -> final {result.final_val_loss:.3f})"
    )
