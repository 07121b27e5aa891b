"""How often does a policy select (keep fraction < 1), and what alignment does it see when it acts?

For each policy: over every interval of the 16 train-split 1-D CNN jobs of
``train_check.py`` and of the named train jobs (job seed 0), the mean keep
fraction it chose, the share of intervals in which it selected, and the mean
``selection_alignment`` in the observation it acted on (BENCHMARKS.md
section 5, thirteenth round). It chooses nothing:

    python benchmarks/selection_readout.py runs/e21/seed-0 benchmarks/heldout-quick-ensemble/policy
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from allocator import AllocatorPolicy
from allocator.jobs import make_job, names
from allocator.stats import ObservationLayout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_transfer import job_builders, transfer_recipes  # noqa: E402


def readout(policy: AllocatorPolicy, jobs: dict) -> tuple[int, float, float, float]:
    """(intervals, mean keep fraction, share of intervals selecting, mean alignment seen)."""
    keeps, alignments = [], []
    for build in jobs.values():
        job = build(0)
        policy.reset(job)
        layout = ObservationLayout(job.spec)
        observation = job.observation()
        while not job.done:
            allocation = policy.act(observation)
            if allocation.steps == 0:
                break
            keeps.append(allocation.keep_fraction)
            alignments.append(layout.global_features(observation)[layout.global_index("selection_alignment")])
            observation = job.advance(allocation).observation
    keeps = np.asarray(keeps)
    return len(keeps), float(keeps.mean()), float(np.mean(keeps < 1)), float(np.mean(alignments))


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths or paths[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if paths else 2
    torch.set_num_threads(1)
    sets = {
        "cnn1d": job_builders(transfer_recipes("train", ["cnn1d"], 16)),
        "named": {n: (lambda seed, n=n: make_job(n, seed=seed, device="cpu")) for n in names("train")},
    }
    for path in paths:
        try:
            policy = AllocatorPolicy.load(path)
        except (ValueError, OSError) as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            return 2
        for label, jobs in sets.items():
            n, keep, selecting, alignment = readout(policy, jobs)
            print(
                f"{path} {label}: intervals {n}, mean keep {keep:.3f}, "
                f"share selecting {selecting:.2f}, mean alignment seen {alignment:.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
