"""Would training on smaller inputs (fewer tokens, lower resolution) reach uniform's loss on less compute?

The held-out compute-bound jobs of issue 6 are all convolutional networks and
transformers (BENCHMARKS.md section 5), and no allocation of the action space
reaches uniform training's best validation loss within 0.7 of the budget on
them, even chosen pair by pair in hindsight between selection and standard
training (twenty-second round). The train split's own classification
transformer shows the same. A lever made for these families cuts the cost of
a step on the input: a transformer trains on a random subset of its tokens
(token dropping, as FLIP, Li et al. 2023, does with image patches), a
convolutional network on inputs average-pooled to half their length or side
(progressive resizing, as fast.ai and FFCV train ResNets). Both nets evaluate
on the whole input, unchanged. Before building such an axis into the job,
the action space and the policy, this probe measures whether it can deliver,
with hand-set schedules: the lever on from the start until ``until`` of the
budget, standard training after it (the full input at the end, as FLIP's
unmasked tuning and progressive resizing's last epochs).

Everything else is the job's uniform training, as in
``stochastic_depth_probe.py``: ``run_job`` and the job's own interval loop
(sampling, loss memory, the learning rate decaying linearly with the compute
spent, the budget check, a validation reading every ``--max-steps`` steps);
only the cost of a step and the input its forward pass sees change. A step's
FLOPs are counted with ``FlopCounterMode`` for the reduced and the full
input, so a cheaper step buys more steps within the same budget.

Jobs (train split only; nothing is run on held-out): the two probe
transformers of ``stochastic_depth_probe.py``, the named ``mnist1d-cnn1d``
(3 seeds each) and ``--cnn-jobs`` jobs of the train split's 1-D CNN family
(2 seeds each). Only pairs whose uniform run measures compute-bound count:

    python benchmarks/input_size_probe.py --out runs/input-size-probe.csv
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from allocator.allocation import AllocationSpec
from allocator.compute import count_flops
from allocator.jobs.distribution import measured_regime, names, recipe
from allocator.policy import AllocatorPolicy
from allocator.report import format_fraction
from allocator.runner import RunResult, run_job
from allocator.token_dropping import TokenDropper

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
from allocation_oracle import TARGET_SHARE, add_run_arguments, each_pair, within  # noqa: E402
from family_transfer import job_builders, report_names, transfer_recipes  # noqa: E402
from stochastic_depth_probe import PROBE_JOBS  # noqa: E402

_TOKEN_STREAM = 5_000_011  # the token subsets' own random stream, apart from the job's


@dataclass(frozen=True)
class Variant:
    """Train on ``keep`` of the input (tokens, or 0.5: half the length or side) until ``until`` of the budget.

    ``charged_in_full``: a reduced step is charged as a standard one, so the run takes uniform's
    steps and the lever acts on what the steps learn, not on how many there are (the mechanism check).
    """

    keep: float
    until: float = 1.0
    charged_in_full: bool = False

    @property
    def label(self) -> str:
        return f"input {self.keep:g} until {self.until:g}" + (
            ", charged in full" if self.charged_in_full else ""
        )


TOKEN_VARIANTS = [Variant(keep, until) for keep in (0.5, 0.75) for until in (1.0, 0.8, 0.5)]
# the variant the twenty-third round chose on the train split, which policies are run with
POLICY_VARIANT = Variant(0.5, 0.5)
# the twenty-fifth round's search around it, on the train transformers only
TOKEN_GRID = [Variant(keep, until) for keep in (0.25, 0.375, 0.5) for until in (0.4, 0.5, 0.6, 0.7)]
MECHANISM_VARIANTS = [Variant(0.5, until, charged_in_full=True) for until in (1.0, 0.5)]
# pooling by 2 is the one resolution a 1-D CNN's strided convolutions take without changing the net
RESOLUTION_VARIANTS = [Variant(0.5, until) for until in (1.0, 0.8, 0.5)]


class InputReduction:
    """Hooks on a model that make its training forward pass see a smaller input while ``active``.

    A transformer (a model with a token-emitting module, :mod:`allocator.token_dropping`) keeps a
    random ``keep`` share of its token positions, the same for the whole batch, drawn anew for
    each step by :meth:`draw` (the product's :class:`~allocator.token_dropping.TokenDropper`); it
    mean-pools the tokens it kept. A convolutional network sees its input average-pooled by 2
    along each spatial axis. Inactive, the hooks change nothing, so validation sees the whole input.
    """

    def __init__(self, model: nn.Module, keep: float, seed: int) -> None:
        self._active = False
        self.keep = keep
        self._droppers = [TokenDropper(model, keep, torch.Generator().manual_seed(seed + _TOKEN_STREAM))]
        if self._droppers[0].applies:
            self.kind = "tokens"
        elif keep == 0.5:
            self.kind = "resolution"
            model.register_forward_pre_hook(self._pool_input)
        else:
            raise ValueError(f"a model without tokens can only halve its input (keep 0.5), got keep {keep:g}")

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, active: bool) -> None:
        self._active = active
        for dropper in self._droppers:
            dropper.active = active

    def attach(self, replica: nn.Module) -> None:
        """Hook a replica of the model (for counting FLOPs) to this reduction's state."""
        if self.kind == "tokens":
            self._droppers.append(TokenDropper(replica, self.keep))  # the first tokens: a count needs no more
        else:
            replica.register_forward_pre_hook(self._pool_input)

    def draw(self) -> None:
        self._droppers[0].draw()

    def _pool_input(self, module, inputs):
        if not self._active:
            return None
        (x,) = inputs
        if x.ndim == 4:
            return (F.avg_pool2d(x, 2),)
        return (F.avg_pool1d(x.unsqueeze(1) if x.ndim == 2 else x, 2).reshape(*x.shape[:-1], -1),)


def run(
    build, seed: int, variant: Variant | None, max_steps: int = 20, controller="uniform"
) -> tuple[RunResult, float]:
    """Run one job under ``controller`` with ``variant``'s input (``None``: the whole input).

    ``controller`` is ``"uniform"`` (the job's standard training, in intervals of ``max_steps``)
    or an :class:`~allocator.AllocatorPolicy` (its own spec and rules). A reduced step costs
    what the job charges for the same step on the whole input times the reduced share of a
    standard step's count; for a step that selects samples or freezes layers that share is an
    approximation (attention's cost is quadratic in the tokens, the rest linear).

    Returns the run's result and its mean step FLOPs relative to a standard step.
    """
    job = build(seed)
    job.use_spec(
        controller.spec if isinstance(controller, AllocatorPolicy) else AllocationSpec(max_steps=max_steps)
    )
    if variant is None:
        return run_job(job, controller), 1.0
    job._ensure_started()  # noqa: SLF001 - the probe patches the job's step and step cost
    replica = copy.deepcopy(job.model)  # counts FLOPs without touching the trained model's gradients
    reduction = InputReduction(job.model, variant.keep, seed)
    reduction.attach(replica)
    x0 = job._train_x[: job.batch_size]  # noqa: SLF001
    y0 = job._train_y[: job.batch_size]  # noqa: SLF001
    counted = {}
    for active in (False, True):
        reduction.active = active
        counted[active] = count_flops(lambda: job._loss_fn(replica(x0), y0).mean().backward())  # noqa: SLF001
        replica.zero_grad(set_to_none=True)
    reduction.active = False
    # in the job's own unit (its cost model counts on a meta replica, which can differ from this
    # count by a few per cent): the reduced share of what the job charges for the same step
    share = 1.0 if variant.charged_in_full else counted[True] / counted[False]
    job_step_flops = job._costs.step_flops  # noqa: SLF001
    pending: list[bool] = []

    # advance() asks for a step's cost, checks the budget, then takes the step:
    # whether the step is reduced is decided with its cost and applied by the step that follows
    def step_flops(batch_size: int, kept: int, trained: tuple[bool, ...], reduced: bool = False) -> int:
        active = job.compute_fraction < variant.until
        pending[:] = [active]
        cost = job_step_flops(batch_size, kept, trained)
        return round(cost * share) if active else cost

    original_step = job._step  # noqa: SLF001

    def step(kept: int, trained: tuple[bool, ...], reduced: bool = False) -> None:
        reduction.active = pending.pop()
        if reduction.active:
            reduction.draw()
        try:
            original_step(kept, trained)
        finally:
            reduction.active = False  # validation and statistics see the whole input

    job._costs.step_flops = step_flops  # noqa: SLF001
    job._step = step  # noqa: SLF001
    # the job charges each step what step_flops returned, so compute_used is the steps' FLOPs
    result = run_job(job, controller)
    return result, result.compute_used / max(result.steps, 1) / job.uniform_step_flops


UNIFORM_RUN = ("uniform", "uniform", None)  # (label, controller, variant): every pair's first run


def job_set(
    seeds: int,
    cnn_jobs: int,
    mechanism: bool = False,
    policies=(),
    grid: bool = False,
    policy_variant: Variant = POLICY_VARIANT,
) -> list[tuple]:
    """``[(job name, seed, build(seed), runs), ...]`` with ``runs`` a list of ``(label, controller,
    variant)``: the train-split pairs the probe runs. On the transformers alone: ``mechanism``
    runs :data:`MECHANISM_VARIANTS`, ``grid`` :data:`TOKEN_GRID`, and ``policies`` each policy with
    and without ``policy_variant``."""
    transformers = job_builders({name: r for name, r in PROBE_JOBS.items() if r.model == "transformer"})
    if mechanism or policies or grid:
        runs = [UNIFORM_RUN]
        runs += [(v.label, "uniform", v) for v in (MECHANISM_VARIANTS if mechanism else [])]
        runs += [(v.label, "uniform", v) for v in (TOKEN_GRID if grid else [])]
        runs += [run for label, policy in policies for run in policy_runs(label, policy, policy_variant)]
        return [(name, seed, build, runs) for name, build in transformers.items() for seed in range(seeds)]
    cnns = {"mnist1d-cnn1d": recipe("mnist1d-cnn1d")}
    token_runs = [UNIFORM_RUN, *((v.label, "uniform", v) for v in TOKEN_VARIANTS)]
    resolution_runs = [UNIFORM_RUN, *((v.label, "uniform", v) for v in RESOLUTION_VARIANTS)]
    pairs = [(name, seed, build, token_runs) for name, build in transformers.items() for seed in range(seeds)]
    pairs += [
        (name, seed, build, resolution_runs)
        for name, build in job_builders(cnns).items()
        for seed in range(seeds)
    ]
    if cnn_jobs:
        # the family's draws can include the named job itself, already in the set with its own seeds
        drawn = transfer_recipes("train", ["cnn1d"], cnn_jobs + 1)
        family = job_builders(dict([(name, r) for name, r in drawn.items() if name not in cnns][:cnn_jobs]))
        pairs += [(name, seed, build, resolution_runs) for name, build in family.items() for seed in (0, 1)]
    return pairs


def policy_runs(label: str, policy, variant: Variant | None, name: Variant | None = None) -> list[tuple]:
    """A policy alone and with ``variant`` (``None``: where the variant does not apply, the policy
    alone, the row still named after ``name``, the variant of the other jobs)."""
    return [(label, policy, None), (f"{label} + {(name or variant).label}", policy, variant)]


_PAIRS: list = []  # forked workers inherit them (job builders cannot be pickled)
_MAX_STEPS = [20]


def run_pair(index: int) -> list[dict]:
    """Every run of ``_PAIRS[index]``, uniform first; one row each, the target being uniform's best."""
    name, seed, build, runs = _PAIRS[index]
    done = {("uniform", None): run(build, seed, None, _MAX_STEPS[0])}
    uniform = done["uniform", None][0]
    rows = []
    for label, controller, variant in runs:
        key = (controller if isinstance(controller, str) else id(controller), variant)
        if key not in done:  # a variant that does not apply to this job is the controller's own run
            done[key] = run(build, seed, variant, _MAX_STEPS[0], controller)
        result, step_cost = done[key]
        rows.append(
            {
                "job": name,
                "seed": seed,
                "regime": measured_regime(uniform.curve),
                # the jobs that are not named (probe transformers, 1-D CNN family jobs) count by measurement
                "job_regime": recipe(name).regime if name in names() else measured_regime(uniform.curve),
                "variant": label,
                "step_cost": step_cost,
                "steps": result.steps,
                "target": uniform.best_val_loss,
                "compute_to_target": result.compute_to_reach(uniform.best_val_loss),
                "compute_fraction": result.compute_fraction,
                "final_val_loss": result.final_val_loss,
                "objective": result.objective,
                "uniform_objective": uniform.objective,
            }
        )
    return rows


def measure(pairs, workers: int, max_steps: int = 20, show=print) -> list[dict]:
    _PAIRS[:] = pairs
    _MAX_STEPS[0] = max_steps
    rows: list[dict] = []
    for done, pair_rows in enumerate(each_pair(run_pair, len(pairs), workers), start=1):
        rows += pair_rows
        best = min(pair_rows[1:] or pair_rows, key=lambda r: r["compute_to_target"])
        show(
            f"[{done}/{len(pairs)}] {best['job']} seed {best['seed']} ({best['regime']}): "
            f"fastest {best['variant']} at {format_fraction(best['compute_to_target'])}"
        )
    return rows


def family_of(job: str) -> str:
    return "transformer" if "transformer" in job else "cnn1d"


def summary_table(rows: list[dict]) -> str:
    """Per model family and variant, over the compute-bound pairs: within the target share, the
    median compute to target, the step cost, mean J against uniform's, wins over uniform."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["regime"] == "compute-bound":
            groups.setdefault((family_of(r["job"]), r["variant"]), []).append(r)
    lines = [
        f"| family | variant | compute-bound pairs | reached within {TARGET_SHARE:g} | reached at all | "
        "median compute to target | step FLOPs / standard | mean J (uniform's) | lower J than uniform |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (family, variant), runs in groups.items():
        reached = [r["compute_to_target"] for r in runs]
        lines.append(
            f"| {family} | {variant} | {len(runs)} | {sum(c <= TARGET_SHARE for c in reached)} | "
            f"{sum(math.isfinite(c) for c in reached)} | {format_fraction(statistics.median(reached))} | "
            f"{statistics.mean(r['step_cost'] for r in runs):.3f} | "
            f"{statistics.mean(r['objective'] for r in runs):.4f} ({statistics.mean(r['uniform_objective'] for r in runs):.4f}) | "
            f"{sum(r['objective'] < r['uniform_objective'] - 1e-9 for r in runs)} |"
        )
    return "\n".join(lines)


FAMILIES = {"transformer": ("transformer",), "cnn": ("cnn1d", "cnn2d")}


def variant_by_label(label: str) -> Variant:
    for variant in TOKEN_VARIANTS + RESOLUTION_VARIANTS + MECHANISM_VARIANTS + TOKEN_GRID:
        if variant.label == label:
            return variant
    labels = ", ".join(dict.fromkeys(v.label for v in TOKEN_VARIANTS + RESOLUTION_VARIANTS + TOKEN_GRID))
    raise ValueError(f"no variant is called {label!r}; the variants are {labels}")


def heldout_job_set(seeds: int, variant: Variant, family: str, policies=()) -> list[tuple]:
    """Every held-out named job with uniform and ``variant`` on the jobs of ``family`` (standard training
    alone on the rest) or, with ``policies``, each policy alone and with ``variant`` on ``family``'s jobs."""
    recipes = {name: recipe(name) for name in names("heldout")}
    pairs = []
    for name, build in job_builders(recipes).items():
        applies = variant if recipes[name].model in FAMILIES[family] else None
        if policies:
            runs = [
                UNIFORM_RUN,
                *(run for label, policy in policies for run in policy_runs(label, policy, applies, variant)),
            ]
        else:
            runs = [UNIFORM_RUN, (RULE_LABEL, "uniform", applies)]
        pairs += [(name, seed, build, runs) for seed in range(seeds)]
    return pairs


RULE_LABEL = "the variant where it applies, standard training elsewhere"


def heldout_table(rows: list[dict]) -> str:
    """Each run label over every pair, by the jobs' own regimes: the issue's median compute to
    target and J against uniform."""
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["variant"], []).append(r)
    lines = [
        f"| rule | pairs | within {TARGET_SHARE:g} | within {TARGET_SHARE:g}: compute-bound | "
        f"within {TARGET_SHARE:g}: data-bound | median compute to target | mean J | lower J than uniform |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in by_label.items():
        lines.append(
            f"| {name} | {len(runs)} | {sum(r['compute_to_target'] <= TARGET_SHARE for r in runs)} | "
            f"{within(runs, 'compute-bound')} | {within(runs, 'data-bound')} | "
            f"{format_fraction(statistics.median(r['compute_to_target'] for r in runs))} | "
            f"{statistics.mean(r['objective'] for r in runs):.4f} | "
            f"{sum(r['objective'] < r['uniform_objective'] - 1e-9 for r in runs)} |"
        )
    return "\n".join(lines)


def against_table(rows: list[dict], results_csv: str | Path) -> str:
    """Pairs each run label wins on J against each controller of an ``evaluate`` results.csv of the
    same jobs and seeds (its ``policy`` rows left out). Its uniform must be this probe's uniform:
    a pair whose uniform J differs raises ``ValueError`` (another spec, machine or version)."""
    with open(results_csv, newline="", encoding="utf-8") as handle:
        reference = {
            (r["job"], int(r["seed"]), r["controller"]): float(r["objective"]) for r in csv.DictReader(handle)
        }
    controllers = sorted({c for _, _, c in reference if c != "policy"})
    for r in rows:
        theirs = reference.get((r["job"], r["seed"], "uniform"))
        if theirs is None or abs(theirs - r["uniform_objective"]) > 1e-9:
            raise ValueError(
                f"{results_csv}: uniform's J on {r['job']} seed {r['seed']} is {theirs}, here {r['uniform_objective']}"
            )
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["variant"], []).append(r)
    lines = ["| rule | " + " | ".join(f"wins against {c}" for c in controllers) + " |"]
    lines.append("| --- |" + " ---: |" * len(controllers))
    for name, runs in by_label.items():
        cells = []
        for c in controllers:
            won = sum(r["objective"] < reference[(r["job"], r["seed"], c)] - 1e-9 for r in runs)
            cells.append(f"{won}/{len(runs)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(
        parser,
        "seeds of each probe transformer and of mnist1d-cnn1d",
        "steps per interval, where the validation loss is read",
    )
    parser.add_argument(
        "--cnn-jobs",
        type=int,
        default=4,
        help="jobs of the train split's 1-D CNN family, two seeds each (default: %(default)s)",
    )
    parser.add_argument(
        "--heldout",
        metavar="LABEL",
        default=None,
        help="instead of the train split, run this one variant (chosen on the train split) on the held-out "
        "jobs of --family and standard training on the others: the once-only held-out check",
    )
    parser.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default="transformer",
        help="with --heldout, the model family the variant applies to (default: %(default)s)",
    )
    parser.add_argument(
        "--policy",
        metavar="DIR",
        action="append",
        default=None,
        help="run this trained policy (repeatable) alone and with a token variant on the transformers: "
        "of the train split with --variant, or of the held-out split with --heldout's variant",
    )
    parser.add_argument(
        "--against",
        metavar="RESULTS_CSV",
        default=None,
        help="with --heldout, also count the pairs each run wins on J against each controller of this "
        "evaluate results.csv (same jobs, seeds and spec)",
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="run the twenty-fifth round's token variants (keep 0.25 to 0.5, until 0.4 to 0.7) on the train transformers",
    )
    parser.add_argument(
        "--variant",
        metavar="LABEL",
        default=POLICY_VARIANT.label,
        help="with --policy on the train split, the token variant the policies run with (default: %(default)s)",
    )
    parser.add_argument(
        "--mechanism",
        action="store_true",
        help="run the token variants charged as standard steps on the train transformers: does the lever "
        "pay through more, cheaper steps or through what each step sees?",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.workers < 1 or args.max_steps < 1 or args.cnn_jobs < 0:
        parser.error("--seeds, --workers and --max-steps must be at least 1, --cnn-jobs at least 0")
    if args.out and not Path(args.out).parent.is_dir():
        parser.error(f"--out: the folder {Path(args.out).parent} does not exist")
    if args.against and not (args.heldout and Path(args.against).is_file()):
        parser.error("--against needs --heldout and an existing results.csv")
    try:
        variant = variant_by_label(args.heldout) if args.heldout else None
        policy_variant = variant_by_label(args.variant)
        labels = report_names(args.policy or [])  # runs/r26/ensemble, runs/r27/ensemble: r26-ensemble, ...
        policies = [(labels[d], AllocatorPolicy.load(d)) for d in args.policy or []]
    except (ValueError, OSError) as error:
        parser.error(str(error))
    torch.set_num_threads(1)  # before anything runs: forked workers must not inherit a thread pool
    pairs = (
        heldout_job_set(args.seeds, variant, args.family, policies)
        if variant
        else job_set(args.seeds, args.cnn_jobs, args.mechanism, policies, args.grid, policy_variant)
    )
    print(f"{len(pairs)} pairs")
    rows = measure(pairs, args.workers, args.max_steps)
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nwrote {args.out}")
    print()
    print(heldout_table(rows) if variant else summary_table(rows))
    if args.against:
        print()
        try:
            print(against_table(rows, args.against))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
