"""Would skipping residual blocks (stochastic depth) reach uniform's loss on less compute?

The compute-to-target goal of issue 6 needs a controller that reaches uniform
training's best validation loss within 70 % of the budget on compute-bound
jobs, where uniform's best is its final loss. Stopping cannot do that, and no
lever the policy has does it by that margin (BENCHMARKS.md section 5, "Where
this leaves the targets"). Skipping residual blocks in the forward pass is the
designed extension of the layer axis (DESIGN.md section 3). Before building it
into the job, the action space and the policy, this probe measures whether the
lever can deliver at all, with the best-known hand-set schedule: Huang et al.
(2016), each block l of L skipped at a step with probability ``p * l / L``,
a kept block's residual branch scaled by ``1 / (1 - p_l)`` (timm's DropPath
convention, so the full network is used unchanged at evaluation).

Everything else is the job's uniform training: the same model, data, seed,
minibatch order, optimizer, and the learning rate decaying linearly with the
compute spent, to zero at the same budget R. A step's FLOPs are counted with
``FlopCounterMode`` for each pattern of skipped blocks (cached), as the job
counts its configurations. Reported per job and seed: the final and best validation loss, and the
compute fraction at which each schedule first reaches uniform's best (the
measure of ``compute to target``), read once per interval as `evaluate` does.

Jobs: train-split compute-bound jobs with residual blocks (the held-out jobs
are not used to choose anything):

    python benchmarks/stochastic_depth_probe.py --seeds 0,1,2 --rates 0,0.2,0.5
"""

from __future__ import annotations

import argparse
import copy
import math
import sys

import numpy as np
import torch
from torch import nn

from allocator.compute import count_flops
from allocator.jobs.distribution import JobRecipe, recipe
from allocator.runner import RunResult, run_job

# fmt: off
PROBE_JOBS = {
    "synth-imbalanced-resmlp": recipe("synth-imbalanced-resmlp"),
    # a transformer on train-split data (no held-out dataset): the held-out transformers' family
    "probe-clusters-transformer": JobRecipe(
        "probe-clusters-transformer", "synthetic-classification", {"n_train": 4000, "seed": 3},
        "transformer", 32, 2, "adamw", 2e-3, 64, 250, "compute-bound", "train", weight_decay=0.01,
    ),
    # the same transformer on the regression task: is a gain the family's or the task's?
    "probe-regression-transformer": JobRecipe(
        "probe-regression-transformer", "synthetic-regression", {"n_train": 4000, "noise": 0.1, "seed": 0},
        "transformer", 32, 2, "adamw", 2e-3, 64, 250, "compute-bound", "train", weight_decay=0.01,
    ),
    # stochastic depth was made for deep residual networks: four blocks
    "probe-regression-deep-resmlp": JobRecipe(
        "probe-regression-deep-resmlp", "synthetic-regression", {"n_train": 4000, "noise": 0.1, "seed": 0},
        "resmlp", 128, 4, "adam", 1e-3, 64, 200, "compute-bound", "train",
    ),
}
# fmt: on


class _Skippable(nn.Module):
    """Wraps a residual block: ``x`` when skipped, else ``x + (block(x) - x) / survival``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.skipped = False
        self.survival = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skipped:
            return x
        out = self.block(x)
        if self.survival == 1.0 or not self.training:
            return out
        return x + (out - x) / self.survival


def _wrap(model: nn.Module) -> list[_Skippable]:
    wrapped = [_Skippable(block) for block in model.blocks]
    model.blocks = nn.ModuleList(wrapped)
    return wrapped


def run(job_recipe: JobRecipe, seed: int, rate: float) -> tuple[RunResult, float]:
    """Run one job under uniform allocation with stochastic depth ``rate`` (0: the job's uniform run).

    ``run_job`` and the job's own interval loop run (sampling, loss memory,
    learning-rate schedule, budget check, one validation reading per
    interval); only the cost of a step and the blocks its forward pass runs
    change. So the rate-0 run is the job's uniform run, step for step.

    Returns the run's result and its mean step FLOPs relative to a uniform step.
    """
    job = job_recipe.build(seed=seed, device="cpu")
    job._ensure_started()  # noqa: SLF001 - the probe patches the job's step and step cost
    blocks = _wrap(job.model)  # the parameters stay the same objects: the optimizer still holds them
    depth = len(blocks)
    rates = np.asarray([rate * (index + 1) / depth for index in range(depth)])
    for block, p in zip(blocks, rates):
        block.survival = 1.0 - float(p)
    replica = copy.deepcopy(job.model)
    replica_blocks = list(replica.blocks)
    x0 = job._train_x[: job.batch_size]  # noqa: SLF001
    y0 = job._train_y[: job.batch_size]  # noqa: SLF001
    costs: dict[tuple[bool, ...], int] = {}

    def cost_of(mask: tuple[bool, ...]) -> int:
        if mask not in costs:
            for block, skipped in zip(replica_blocks, mask):
                block.skipped = skipped
            costs[mask] = count_flops(lambda: job._loss_fn(replica(x0), y0).mean().backward())  # noqa: SLF001
            replica.zero_grad(set_to_none=True)
        return costs[mask]

    uniform_cost = cost_of((False,) * depth)
    rng = np.random.default_rng(seed + 7)
    pending: list[tuple[bool, ...]] = []

    # advance() asks for a step's cost, checks the budget, then takes the step:
    # the mask is drawn with the cost and applied by the step that follows
    def step_flops(batch_size: int, kept: int, trained: tuple[bool, ...], reduced: bool = False) -> int:
        mask = tuple(bool(u) for u in rng.random(depth) < rates)
        pending[:] = [mask]
        return cost_of(mask)

    original_step = job._step  # noqa: SLF001

    def step(kept: int, trained: tuple[bool, ...], reduced: bool = False) -> None:
        mask = pending.pop()
        for block, skipped in zip(blocks, mask):
            block.skipped = skipped
        original_step(kept, trained)
        for block in blocks:
            block.skipped = False  # validation and statistics see the whole network

    job._costs.step_flops = step_flops  # noqa: SLF001
    job._step = step  # noqa: SLF001
    # the job charges each step what step_flops returned, so compute_used is the steps' FLOPs
    result = run_job(job, "uniform")
    return result, result.compute_used / max(result.steps, 1) / uniform_cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="job seeds, comma-separated (default 0,1,2)")
    parser.add_argument(
        "--rates", default="0,0.2,0.5", help="stochastic depth rates p_L; 0 is uniform and must come first"
    )
    parser.add_argument("--jobs", default=",".join(PROBE_JOBS), help="probe jobs, comma-separated")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        rates = [float(r) for r in args.rates.split(",")]
        jobs = [PROBE_JOBS[name] for name in args.jobs.split(",")]
    except (ValueError, KeyError) as error:
        print(f"error: bad --seeds, --rates or --jobs: {error}", file=sys.stderr)
        return 2
    if rates[0] != 0.0 or not all(0.0 <= r < 1.0 for r in rates):
        print("error: --rates must start with 0 (uniform) and lie in [0, 1)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    print(
        "| job | seed | p_L | step FLOPs / uniform | steps | final val | best val | best at | reaches uniform's best at |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for job_recipe in jobs:
        for seed in seeds:
            target = None
            for rate in rates:
                result, step_cost = run(job_recipe, seed, rate)
                best_at = min(result.curve, key=lambda point: point[1])[0]
                if target is None:
                    target = result.best_val_loss
                reached = result.compute_to_reach(target)
                print(
                    f"| {job_recipe.name} | {seed} | {rate:g} | {step_cost:.3f} | {result.steps} | "
                    f"{result.final_val_loss:.4f} | {result.best_val_loss:.4f} | {best_at:.2f} | "
                    f"{'never' if math.isinf(reached) else f'{reached:.2f}'} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
