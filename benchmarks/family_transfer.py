"""How well do policies transfer to a model family they were not trained on, within the train split?

The held-out split measures transfer to new architectures, but it must not be
used to choose. This measures the same kind of transfer on the train split:
train with a family left out (``env.families: [mlp, resmlp]``), then run the
policy and uniform here on jobs drawn from the left-out family alone
(``--families cnn1d``). Every policy runs the same jobs and seeds, and each
gets an ``evaluate`` report (``results.csv``, readable by
``compare_runs.py``) under ``--out``:

    python benchmarks/family_transfer.py --families cnn1d --jobs 16 --seeds 2 \\
        --out runs/transfer-cnn1d runs/lofo-quick-s0 runs/lofo-e14-s0

It prints mean J and wins over uniform, overall and by the regime each job
was drawn for. BENCHMARKS.md section 5 (fifth round) has what it found.

``--as-model FAMILY`` keeps the drawn jobs' data, optimizer and budget and
trains a model of another family on them, e.g. ``--families mlp,resmlp
--as-model transformer``: a family no train job has, on the train split's
own data, so transfer to it is measured without running held-out jobs
(BENCHMARKS.md section 5, thirty-fifth round). Width, depth and batch size
are capped at the largest the family is drawn with.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

from allocator import AllocatorPolicy
from allocator.evaluation import evaluate, parse_names
from allocator.jobs import JobDistribution
from allocator.jobs.distribution import MODEL_SIZES

# apart from the envs' job pools (job_pool_seed 0) and the validation jobs (validation_seed 1)
JOB_SEED = 2024


def transfer_recipes(split: str, families: list[str], count: int, job_seed: int = JOB_SEED) -> dict:
    """``{name: JobRecipe}``: ``count`` distinct recipes of ``split`` drawn from ``families`` only."""
    return JobDistribution(split, families=families).distinct_recipes(count, job_seed)


def as_model(recipes: dict, family: str) -> dict:
    """``{name: JobRecipe}``: each recipe with a ``family`` model, named ``NAME-as-FAMILY``.

    The data, optimizer, learning rate, budget and regime stay; width, depth and
    batch size are capped at the largest that ``family`` is drawn with.
    """
    if family not in MODEL_SIZES:
        raise ValueError(f"--as-model must be one of {sorted(MODEL_SIZES)}, got {family!r}")
    widths, depths, batches = MODEL_SIZES[family]
    swapped = {}
    for name, recipe in recipes.items():
        new = dataclasses.replace(
            recipe,
            name=f"{name}-as-{family}",
            model=family,
            width=min(recipe.width, max(widths)),
            depth=min(recipe.depth, max(depths)),
            batch_size=min(recipe.batch_size, max(batches)),
        )
        swapped[new.name] = new
    return swapped


def job_builders(recipes: dict) -> dict:
    """``{name: build(seed)}`` for ``evaluate``: each recipe built on the CPU with the given seed."""
    return {
        name: (lambda seed, r=recipe: r.build(seed=seed, device="cpu")) for name, recipe in recipes.items()
    }


def objective_of(report, job: str, seed: int, controller: str) -> float:
    return report.run(job, seed, controller).result.objective


def wins(pairs, regime: str | None = None) -> str:
    """ "won/all" over ``(uniform J, policy J, regime)`` pairs, of one regime or all."""
    chosen = [pair for pair in pairs if regime is None or pair[2] == regime]
    return f"{sum(mine < theirs for theirs, mine, _ in chosen)}/{len(chosen)}"


def report_names(paths) -> dict[str, str]:
    """Each policy directory's folder under --out, distinct for distinct directories.

    A directory is named by its last component (its parent's for ``.../NAME/policy``), with
    as many components before it, joined by "-", as it takes to tell it from the others:
    ``runs/e27/seed-3`` and ``runs/e28/seed-3`` become ``e27-seed-3`` and ``e28-seed-3``.
    The trap this avoids: two runs both called ``seed-3`` would write the same report and
    the second would silently replace the first.
    """

    def parts(path) -> list[str]:
        components = [part for part in Path(path).parts if part not in ("/", ".", "")]
        if len(components) > 1 and components[-1] == "policy":
            components.pop()
        return components

    components = {path: parts(path) for path in paths}
    names = {}
    for path, mine in components.items():
        for length in range(1, len(mine) + 1):
            name = "-".join(mine[-length:])
            others = (theirs for other, theirs in components.items() if other != path)
            if all("-".join(theirs[-length:]) != name for theirs in others):
                break
        names[path] = name
    return names


def load_policies(parser: argparse.ArgumentParser, paths: list[str]) -> dict[str, AllocatorPolicy]:
    """Every policy, loaded before any run: a bad directory is a one-line error and stops nothing half done."""
    policies = {}
    for path in paths:
        try:
            policies[path] = AllocatorPolicy.load(path)
        except (ValueError, OSError) as error:
            parser.error(str(error))
    return policies


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", metavar="DIR", help="trained policy directories")
    parser.add_argument("--families", required=True, help="comma-separated model families, e.g. cnn1d")
    parser.add_argument("--split", default="train", choices=["train", "heldout"])
    parser.add_argument("--jobs", type=int, default=16, help="distinct jobs drawn from those families")
    parser.add_argument("--seeds", type=int, default=2, help="job seeds per job")
    parser.add_argument(
        "--as-model",
        metavar="FAMILY",
        help="train a model of this family on the drawn jobs' data instead, e.g. transformer",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="one evaluate report per policy goes under it"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        recipes = transfer_recipes(args.split, parse_names(args.families), args.jobs)
        if args.as_model:
            recipes = as_model(recipes, args.as_model)
    except ValueError as error:
        parser.error(str(error))
    jobs = job_builders(recipes)
    model = f" as {args.as_model} models" if args.as_model else ""
    print(f"{len(jobs)} jobs x {args.seeds} seeds of the {args.split} split, families {args.families}{model}")
    print("| policy | uniform mean J | policy mean J | wins | compute-bound wins | data-bound wins |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    policies = load_policies(parser, args.policies)
    folders = report_names(list(policies))
    for path, policy in policies.items():
        report = evaluate(
            policy,
            split=None,
            seeds=args.seeds,
            baselines=["uniform"],
            jobs=jobs,
            device="cpu",
            out_dir=args.out / folders[path],
            progress=False,
        )
        pairs = [
            (
                objective_of(report, job, seed, "uniform"),
                objective_of(report, job, seed, "policy"),
                recipes[job].regime,
            )
            for job in jobs
            for seed in range(args.seeds)
        ]
        print(
            f"| {path} | {statistics.fmean(p[0] for p in pairs):.4f} | {statistics.fmean(p[1] for p in pairs):.4f} "
            f"| {wins(pairs)} | {wins(pairs, 'compute-bound')} | {wins(pairs, 'data-bound')} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
