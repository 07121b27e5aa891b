"""Where does selective backprop point the right way? ``selection_alignment`` job by job.

``selection_alignment`` (``allocator/stats.py``) is the cosine between the
gradient of a batch's highest-loss third and the whole batch's gradient,
measured once per interval. This prints, for each named job under standard
training, its mean over the second half of the intervals (when the easy part
is learnt and selection would drop it), per seed and averaged, so a reader can
check whether the feature separates the jobs where selection lost (the 1-D
CNN, BENCHMARKS.md section 5, fifth round) from those where it paid:

    python benchmarks/selection_alignment.py --split train --seeds 0,1,2

It trains each job once per seed (uniform, as ``evaluate`` would) and chooses
nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from allocator.allocation import Allocation
from allocator.jobs import make_job, names
from allocator.stats import ObservationLayout


def late_alignment(name: str, seed: int) -> float:
    """Mean selection_alignment over the second half of the job's intervals under standard training."""
    job = make_job(name, seed=seed, device="cpu")
    layout = ObservationLayout(job.spec)
    index = layout.global_index("selection_alignment")
    values = []
    while not job.done:
        job.advance(Allocation.uniform(job.spec))
        values.append(float(layout.global_features(job.observation())[index]))
    return float(np.mean(values[len(values) // 2 :]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("train", "heldout"), default="train", help="named jobs of this split")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated job seeds (default 0,1,2)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    torch.set_num_threads(1)
    print(f"| job | {' | '.join(f'seed {s}' for s in seeds)} | mean |")
    print(f"| --- | {' | '.join('---:' for _ in seeds)} | ---: |")
    for name in names(args.split):
        row = [late_alignment(name, seed) for seed in seeds]
        print(f"| `{name}` | {' | '.join(f'{v:.3f}' for v in row)} | {np.mean(row):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
