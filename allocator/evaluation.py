"""Evaluate a trained policy against the baselines: every controller on the same jobs and seeds.

For every job and seed, each controller (the policy, if given, and every
baseline) trains a fresh copy of the job built with the same seed, so all start
from the same initial weights. ``--out DIR`` receives ``results.csv`` (one row
per job, seed and controller with every number of its RunResult),
``results.md`` (per job and overall: J, final and best validation loss,
compute to target, wins) and ``curves.png`` (validation loss against compute,
one panel per job, seed 0).

**Compute to target** is the fraction of the budget a controller needs to first
reach uniform training's best validation loss on the same job and seed
(``never`` when it does not; ``inf`` in results.csv). Uniform training always
runs, because it sets that target.

From Python::

    from allocator.evaluation import evaluate

    report = evaluate("runs/policy", split="heldout", seeds=3, out_dir="runs/eval")
    report.mean_objective("policy"), report.win_rate("uniform")    # J, share of pairs won
    report.runs[0].result                                           # a RunResult

``policy`` may be ``None`` to compare the baselines only, and ``jobs`` may
name built-in jobs or map names to your own ``build(seed) -> TrainingJob``
functions (see :mod:`allocator.job_loading`).
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from allocator.baselines import BASELINES
from allocator.baselines import make as make_baseline
from allocator.job_loading import JobSource, load_job_source
from allocator.report import (
    format_fraction,
    format_number,
    format_percent,
    markdown_table,
    plot_curves,
)

#: The baselines ``evaluate`` runs by default (see :mod:`allocator.baselines`).
DEFAULT_BASELINES = ("uniform", "selective-backprop", "freezeout", "loss-sampling", "random", "early-stopping")
#: The label of the learned policy in every table, file and TensorBoard run.
POLICY = "policy"
REFERENCE = "uniform"

RESULT_FILES = ("results.csv", "results.md", "curves.png")

# results.csv: identification, then every number of RunResult.to_dict(), then the target;
# new columns go last, so a reader by position of an older file still finds its columns.
CSV_COLUMNS = (
    "job",
    "seed",
    "controller",
    "objective",
    "final_val_loss",
    "best_val_loss",
    "initial_val_loss",
    "final_val_accuracy",
    "best_val_accuracy",
    "compute_used",
    "budget",
    "compute_fraction",
    "eval_compute",
    "steps",
    "diverged",
    "stopped",
    "wall_time",
    "target_val_loss",
    "compute_to_target",
    "stops_vetoed",  # empty for a controller without a stop veto (allocator.stop_veto)
)


# ---------------------------------------------------------------------------- controllers


@dataclass(frozen=True)
class Contender:
    """One controller of a comparison: its label and how to get a fresh instance per run."""

    label: str
    make: Callable[[], object]


def parse_names(text: str | Sequence[str] | None) -> list[str]:
    """``"a, b,c"`` or ``["a", "b"]`` -> ``["a", "b", "c"]`` (order kept, duplicates and blanks dropped)."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return list(dict.fromkeys(item.strip() for item in items if item and item.strip()))


def contenders(policy, baselines: Iterable[str]) -> list[Contender]:
    """The policy (if any) then the baselines, with ``uniform`` always among them.

    Args:
        policy: ``None``, a policy directory, or a loaded ``AllocatorPolicy``.
        baselines: baseline names (:data:`allocator.baselines.BASELINES`).

    Raises:
        ValueError: an unknown baseline name or an unloadable policy.
    """
    names = parse_names(list(baselines))
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(map(repr, unknown))}; choose from {', '.join(BASELINES)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)  # it sets the target every other controller is measured against
    lineup = []
    if policy is not None:
        loaded = load_policy(policy)
        lineup.append(Contender(POLICY, lambda: loaded))
    lineup += [Contender(name, lambda name=name: make_baseline(name)) for name in names]
    return lineup


def add_policy_rule_arguments(parser: argparse.ArgumentParser) -> None:
    """``--token-dropping KEEP,UNTIL`` and ``--freeze-cnn-first-group`` of ``evaluate`` and ``apply``."""
    from allocator.token_dropping import TokenDropping

    def parse(text: str):
        try:
            return TokenDropping.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument(
        "--token-dropping",
        type=parse,
        default=None,
        metavar="KEEP,UNTIL",
        help="run the policy with token dropping: on jobs whose model has tokens (transformers) its "
        "steps see KEEP of each input's tokens until UNTIL of the budget, at their reduced cost "
        "(e.g. 0.5,0.5; BENCHMARKS.md section 5). Overrides the policy's own setting; the baselines "
        "run without it",
    )
    parser.add_argument(
        "--freeze-cnn-first-group",
        action="store_true",
        help="run the policy with the first layer group frozen on jobs whose model has a convolution: "
        "cheaper steps, more of them in the budget (BENCHMARKS.md section 5, twenty-eighth round). "
        "The policy's own setting applies without the flag; the baselines run without it",
    )


def policy_with_token_dropping(policy, dropping):
    """``policy`` (a directory or a loaded policy) with ``dropping`` set; as given when ``dropping`` is None."""
    if dropping is None:
        return policy
    if policy is None:
        raise ValueError("--token-dropping is a rule of a policy: give --policy too")
    return load_policy(policy).with_token_dropping(dropping)


def policy_with_rules(args: argparse.Namespace):
    """``args.policy`` with the rules of :func:`add_policy_rule_arguments` that the command line sets."""
    policy = policy_with_token_dropping(args.policy, args.token_dropping)
    if not args.freeze_cnn_first_group:
        return policy
    if policy is None:
        raise ValueError("--freeze-cnn-first-group is a rule of a policy: give --policy too")
    return load_policy(policy).with_cnn_first_group_frozen(True)


def load_policy(policy):
    """An ``AllocatorPolicy`` from a directory (``ValueError`` when it is not one), or as given."""
    from allocator.policy import AllocatorPolicy

    if isinstance(policy, AllocatorPolicy):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        return AllocatorPolicy.load(policy)
    raise ValueError(
        f"policy must be a policy directory or an AllocatorPolicy, got {type(policy).__name__}"
    )


def describe_policy(policy) -> list[str]:
    """What changes how a loaded policy acts beyond its network, in words: an ensemble's size and
    combine rule, and its spec's rules (token dropping, the first layer group frozen on CNNs, the
    layer lever on CNNs only, all-or-nothing layer gates) and its stop veto.
    Empty for a single policy without rules."""
    parts = []
    members = getattr(policy, "members", None)
    if members is not None:
        parts.append(f"an ensemble of {len(members)}, {policy.combine}")
    spec = getattr(policy, "spec", None)
    if getattr(spec, "token_dropping", None) is not None:
        parts.append(f"token dropping {spec.token_dropping}")
    if getattr(spec, "freeze_cnn_first_group", False):
        parts.append("first layer group frozen on CNNs")
    lever = getattr(spec, "layer_lever", "all")
    if lever == "convolutional":
        parts.append("layer gates act on CNNs only")
    elif lever == "cnn-first-group":
        parts.append("only the first layer gate acts, on CNNs only")
    if getattr(spec, "gate_mapping", "linear") == "binary":
        parts.append("layer gates freeze a group for the interval or train it at every step")
    if getattr(spec, "gate_decision", "interval") == "job":
        parts.append("layer gates decided once per job, on its first interval")
    if getattr(policy, "stop_veto", None) is not None:
        parts.append("stops vetoed where continuing pays")
    return parts


def policy_spec(lineup: Sequence[Contender]):
    """The policy's AllocationSpec when the lineup has a policy: every job of the comparison uses it."""
    for contender in lineup:
        if contender.label == POLICY:
            return contender.make().spec
    return None


def build_job(source: JobSource, seed: int, spec=None):
    """A fresh job from ``source`` with ``seed``, set to ``spec`` if given.

    With a policy in the comparison every controller runs the job with the
    policy's spec, so that all see the same interval length (and therefore
    the same resolution of their loss-versus-compute curve).
    """
    job = source.build(seed)
    if spec is not None:
        job.use_spec(spec)
    return job


class _ProgressController:
    """Wraps a controller to advance a progress bar by the share of the budget each interval spends."""

    def __init__(self, controller, label: str, bar) -> None:
        self.controller = controller
        self.name = label
        self.bar = bar
        self.job = None
        self.shown = 0.0

    def reset(self, job) -> None:
        self.job = job
        self.shown = 0.0
        reset = getattr(self.controller, "reset", None)
        if callable(reset):
            reset(job)

    def act(self, observation):
        self._show(self.job.compute_fraction)
        return self.controller.act(observation)

    # run_job records a stop veto's refusals (results.csv, TensorBoard): passed through, not hidden
    @property
    def stop_veto(self):
        return getattr(self.controller, "stop_veto", None)

    @property
    def stop_vetoed(self) -> bool:
        return bool(getattr(self.controller, "stop_vetoed", False))

    def finish(self) -> None:
        self._show(1.0)

    def _show(self, fraction: float) -> None:
        fraction = min(max(fraction, self.shown), 1.0)
        if self.bar is not None and fraction > self.shown:
            self.bar.update(fraction - self.shown)
        self.shown = fraction


def progress_bar(total: int, description: str, enabled: bool | None):
    """A tqdm bar on stderr counting runs (fractions within a run); ``None`` when disabled.

    ``enabled=None`` shows it only when stderr is a terminal.
    """
    if enabled is False:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=description,
        unit="run",
        file=sys.stderr,
        disable=None if enabled is None else False,
        bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} runs [{elapsed}<{remaining}]{postfix}",
    )


def job_progress_bar(total: int, description: str, show: bool):
    """A :func:`progress_bar` counting whole jobs ("3/64 jobs"); ``None`` when not shown.

    ``show`` is ``args.progress_bar`` of :func:`add_progress_bar_argument`: ``False``
    hides it, ``True`` shows it only when stderr is a terminal.
    """
    bar = progress_bar(total, description, None if show else False)
    if bar is not None:
        bar.unit = "job"
        bar.bar_format = "{l_bar}{bar}| {n}/{total} jobs [{elapsed}<{remaining}]{postfix}"
    return bar


def add_progress_bar_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-progress-bar`` (``args.progress_bar``) of the commands that run many jobs."""
    parser.add_argument(
        "--no-progress-bar",
        dest="progress_bar",
        action="store_false",
        help="do not show the progress bar (shown only when stderr is a terminal anyway)",
    )


def run_contender(job, contender: Contender, bar=None, tensorboard_dir=None):
    """Run ``job`` under a fresh instance of ``contender``; the RunResult carries the contender's label."""
    from allocator.runner import run_job

    controller = _ProgressController(contender.make(), contender.label, bar)
    if bar is not None:
        bar.set_postfix_str(f"{job.name} | {contender.label}", refresh=True)
    result = run_job(job, controller, tensorboard_dir=tensorboard_dir)
    controller.finish()
    result.controller_name = contender.label
    return result


# ---------------------------------------------------------------------------- the report


@dataclass
class EvaluatedRun:
    """One run of the evaluation: which job, seed and controller, its RunResult and compute to target."""

    job: str
    seed: int
    controller: str
    result: object  # RunResult
    target_val_loss: float  # uniform's best validation loss on this job and seed
    compute_to_target: float  # math.inf when never reached

    def row(self) -> dict:
        """The results.csv row: identification, every RunResult number, the target."""
        values = self.result.to_dict()
        values.update(
            job=self.job,
            seed=self.seed,
            controller=self.controller,
            eval_compute=self.result.eval_compute,
            target_val_loss=self.target_val_loss,
            compute_to_target=self.compute_to_target,
        )
        return {column: values[column] for column in CSV_COLUMNS}


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


@dataclass
class EvaluationReport:
    """Every run of an evaluation, with the summaries of results.md.

    Attributes:
        runs: one :class:`EvaluatedRun` per job, seed and controller.
        jobs, seeds, controllers: what was run, in order (``"policy"`` first when present).
        policy: the policy's path or name, or ``None``.
        split: the split the jobs came from (``None`` for an explicit job list).
        machine: what ran it (:func:`describe_machine`), or ``None``.
        policy_rules: :func:`describe_policy` of the policy (its rules; empty: none).
    """

    runs: list[EvaluatedRun]
    jobs: list[str]
    seeds: list[int]
    controllers: list[str]
    policy: str | None = None
    split: str | None = None
    machine: str | None = None
    policy_rules: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def select(
        self, job: str | None = None, controller: str | None = None, seed: int | None = None
    ) -> list[EvaluatedRun]:
        """The runs matching every given field."""
        return [
            run
            for run in self.runs
            if (job is None or run.job == job)
            and (controller is None or run.controller == controller)
            and (seed is None or run.seed == seed)
        ]

    def run(self, job: str, seed: int, controller: str) -> EvaluatedRun:
        (found,) = self.select(job, controller, seed)
        return found

    def mean_objective(self, controller: str, job: str | None = None) -> float:
        """Mean J of ``controller`` over seeds (of one job) or over every (job, seed) pair."""
        return _mean([run.result.objective for run in self.select(job, controller)])

    def median_compute_to_target(self, controller: str) -> float:
        """Median compute to target over every (job, seed) pair; ``inf`` when half or more never reach it."""
        return statistics.median(
            run.compute_to_target for run in self.select(controller=controller)
        )

    def wins(self, baseline: str, controller: str = POLICY) -> tuple[int, int]:
        """``(pairs where controller's J < baseline's J, pairs)`` over every (job, seed) pair."""
        won = pairs = 0
        for job in self.jobs:
            for seed in self.seeds:
                pairs += 1
                won += (
                    self.run(job, seed, controller).result.objective
                    < self.run(job, seed, baseline).result.objective
                )
        return won, pairs

    def win_rate(self, baseline: str, controller: str = POLICY) -> float:
        """Share of (job, seed) pairs where ``controller`` has a lower J than ``baseline``."""
        won, pairs = self.wins(baseline, controller)
        return won / pairs

    def job_summary(self, job: str, controller: str) -> dict:
        """Means over seeds of one job and controller (compute to target over the seeds that reached it)."""
        runs = self.select(job, controller)
        reached = [run.compute_to_target for run in runs if math.isfinite(run.compute_to_target)]
        accuracies = [run.result.final_val_accuracy for run in runs]
        return {
            "objective": _mean([run.result.objective for run in runs]),
            "final_val_loss": _mean([run.result.final_val_loss for run in runs]),
            "best_val_loss": _mean([run.result.best_val_loss for run in runs]),
            "final_val_accuracy": _mean(accuracies) if None not in accuracies else None,
            "compute_to_target": _mean(reached) if reached else math.inf,
            "reached": len(reached),
            "seeds": len(runs),
        }

    # ------------------------------------------------------------------ files

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write results.csv, results.md and curves.png to ``out_dir``; returns their paths."""
        directory = Path(out_dir)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {name: directory / name for name in RESULT_FILES}
        with open(paths["results.csv"], "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for run in self.runs:
                writer.writerow({k: "" if v is None else v for k, v in run.row().items()})
        paths["results.md"].write_text(self.to_markdown(), encoding="utf-8")
        seed = self.seeds[0]
        panels = {
            job: {c: self.run(job, seed, c).result.curve for c in self.controllers}
            for job in self.jobs
        }
        targets = {job: self.run(job, seed, REFERENCE).target_val_loss for job in self.jobs}
        plot_curves(
            panels,
            paths["curves.png"],
            targets,
            title=f"validation loss against compute (seed {seed})",
        )
        self.files = paths
        return paths

    def overall_table(self) -> str:
        """The overall Markdown table: mean J, median compute to target, policy's win rate."""
        has_policy = POLICY in self.controllers
        headers = ["controller", "mean J", "median compute to target"]
        if has_policy:
            headers.append("policy wins (J lower)")
        rows = []
        for controller in self.controllers:
            row = [
                controller,
                format_number(self.mean_objective(controller)),
                format_fraction(self.median_compute_to_target(controller)),
            ]
            if has_policy:
                if controller == POLICY:
                    row.append("-")
                else:
                    won, pairs = self.wins(controller)
                    row.append(f"{won}/{pairs} ({format_percent(won / pairs)})")
            rows.append(row)
        return markdown_table(headers, rows)

    def job_table(self, job: str) -> str:
        """One job's Markdown table, means over seeds."""
        summaries = {c: self.job_summary(job, c) for c in self.controllers}
        classification = all(s["final_val_accuracy"] is not None for s in summaries.values())
        headers = ["controller", "J", "final val loss", "best val loss"]
        if classification:
            headers.append("final val accuracy")
        headers.append("compute to target")
        rows = []
        for controller, s in summaries.items():
            row = [
                controller,
                format_number(s["objective"]),
                format_number(s["final_val_loss"]),
                format_number(s["best_val_loss"]),
            ]
            if classification:
                row.append(format_number(s["final_val_accuracy"], 3))
            row.append(_compute_to_target_cell(s))
            rows.append(row)
        return markdown_table(headers, rows)

    def to_markdown(self) -> str:
        """results.md: what was run, the overall table, one table per job."""
        seeds = ", ".join(str(s) for s in self.seeds)
        source = f" of split `{self.split}`" if self.split else ""
        lines = [
            "# Evaluation"
            + (f" of policy `{self.policy}`" if self.policy else " of the baselines"),
            "",
            f"Jobs{source}: "
            + ", ".join(f"`{j}`" for j in self.jobs)
            + f"; seeds {seeds}; controllers: "
            + ", ".join(f"`{c}`" for c in self.controllers)
            + ". Every controller trains a fresh copy of each job built with the same seed.",
            "",
            "- **J**: the C/R-scaled objective (lower is better).",
            (
                "- **compute to target**: fraction of the budget a controller needs to first reach "
                "uniform's best validation loss on the same job and seed; `never` if it does not. "
                "Per job it is the mean over the seeds that reached the target, with their count "
                "when some did not."
            ),
            (
                "- Per-job numbers are means over seeds; wins count (job, seed) pairs where the "
                "policy's J is lower."
            ),
        ]
        if self.policy_rules:
            lines.append(
                f"- **Policy**: {'; '.join(self.policy_rules)} (the baselines run without its rules)."
            )
        if self.machine:
            lines += [
                (
                    f"- **Machine**: {self.machine}. Runs are deterministic on one machine; other CPU "
                    "kernels or GPUs change the last bits of the arithmetic, which training grows "
                    "into small differences of J (BENCHMARKS.md, section 4)."
                ),
            ]
        lines += [
            "",
            "## Overall",
            "",
            self.overall_table(),
            "",
        ]
        for job in self.jobs:
            lines += [f"## {job}", "", self.job_table(job), ""]
        return "\n".join(lines)


def _compute_to_target_cell(summary: dict) -> str:
    if summary["reached"] == summary["seeds"]:
        return format_fraction(summary["compute_to_target"])
    if summary["reached"] == 0:
        return "never"
    return f"{format_fraction(summary['compute_to_target'])} ({summary['reached']}/{summary['seeds']} reached)"


# ---------------------------------------------------------------------------- evaluate


def resolve_jobs(jobs, split: str | None, device: str = "auto") -> list[JobSource]:
    """Job sources from ``jobs``: ``None`` (the split's named jobs), a count N (its first N),
    built-in names, ``FILE.py:FUNCTION`` strings, or a mapping ``{name: build(seed)}``."""
    from allocator.jobs import names

    if isinstance(jobs, Mapping):
        if not jobs:
            raise ValueError("jobs is empty")
        for name, build in jobs.items():
            if not callable(build):
                raise ValueError(f"jobs[{name!r}] must be a function build(seed) -> TrainingJob")
        return [JobSource(str(name), build) for name, build in jobs.items()]
    split_names = names(split) if split else names()
    if jobs is None:
        chosen = split_names
    elif _is_count(jobs):
        count = int(jobs)
        if count < 1:
            raise ValueError(f"--jobs must be at least 1, got {count}")
        chosen = split_names[:count]
    else:
        chosen = parse_names(jobs)
    if not chosen:
        raise ValueError(f"no jobs to evaluate (split {split!r} has none)")
    return [load_job_source(name, device=device) for name in chosen]


def _is_count(jobs) -> bool:
    return (isinstance(jobs, int) and not isinstance(jobs, bool)) or (
        isinstance(jobs, str) and jobs.strip().isdigit()
    )


def resolve_seeds(seeds) -> list[int]:
    """``3`` -> ``[0, 1, 2]``; ``"0,5"`` or ``[0, 5]`` -> ``[0, 5]``."""
    if isinstance(seeds, str):
        text = seeds.strip()
        seeds = int(text) if text.isdigit() else [_seed(s) for s in parse_names(text)]
    if isinstance(seeds, int):
        if seeds < 1:
            # "--seeds 0" is most often meant as "seed 0": say how to write that
            raise ValueError(
                f"--seeds must be at least 1, got {seeds} (a count; for seed 0 alone write --seeds 0,)"
            )
        return list(range(seeds))
    chosen = [_seed(s) for s in seeds]
    if not chosen:
        raise ValueError("no seeds given")
    return list(dict.fromkeys(chosen))


def describe_machine(device: str = "auto") -> str:
    """One line naming what decides the last digits of a result: torch, its CPU kernels, threads, GPU.

    PyTorch picks CPU kernels by instruction set (``AVX2``, ``AVX512``, ...), and
    their float results differ in the last bits; a few hundred optimizer steps
    grow those bits into visible differences of J. Two results.md files with
    different machine lines are not expected to agree to the last digit.
    """
    import torch

    parts = [f"torch {torch.__version__}"]
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if callable(capability):
        parts.append(f"CPU kernels {capability()}")
    parts.append(f"{torch.get_num_threads()} torch thread(s)")
    if device != "cpu" and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return ", ".join(parts)


def _seed(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"seeds must be integers, got {value!r}") from None


def evaluate(
    policy=None,
    split: str | None = "heldout",
    seeds=3,
    baselines: Iterable[str] = DEFAULT_BASELINES,
    out_dir: str | os.PathLike | None = None,
    jobs=None,
    device: str = "auto",
    progress: bool | None = None,
    workers: int = 1,
) -> EvaluationReport:
    """Run the policy and the baselines on the same jobs and seeds; optionally write the report files.

    Args:
        policy: a policy directory, a loaded ``AllocatorPolicy``, or ``None`` for the baselines only.
        split: ``"train"``, ``"heldout"`` or ``"all"``: where the named jobs come from.
        seeds: a count N (seeds ``0 .. N-1``) or a list of seeds.
        baselines: baseline names; ``uniform`` is added when missing (it sets the target).
        out_dir: where to write results.csv, results.md and curves.png (``None``: nothing written).
        jobs: ``None`` (all of the split's named jobs), a count N (the first N), a list of
            built-in names or ``FILE.py:FUNCTION`` strings, or ``{name: build(seed)}``.
        device: device of built-in jobs (``"auto"``: CUDA when available).
        progress: show a progress bar (``None``: only when stderr is a terminal).
        workers: run this many (job, seed) pairs at once, each in a process of its own with
            this process's torch thread count; the numbers are those of ``workers=1``.

    Returns:
        The :class:`EvaluationReport` with every RunResult.

    Traps of ``workers > 1``: the workers are spawned, so each imports torch and builds
    its jobs anew (``FILE.py`` sources are executed once per worker), and a ``jobs``
    mapping of functions cannot be sent to them (give built-in names or
    ``FILE.py:FUNCTION``). A policy goes to them as a policy directory written to a
    temporary folder, never pickled. The progress bar advances per (job, seed) pair.
    """
    sources = resolve_jobs(jobs, split, device)
    seed_list = resolve_seeds(seeds)
    lineup = contenders(policy, baselines)
    spec = policy_spec(lineup)
    duplicate = [s.name for s in sources if [t.name for t in sources].count(s.name) > 1]
    if duplicate:
        raise ValueError(f"job {duplicate[0]!r} is listed twice")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers (--workers) must be an integer >= 1, got {workers!r}")
    if workers > 1 and isinstance(jobs, Mapping):
        raise ValueError(
            "workers > 1 needs jobs by name (built-in or FILE.py:FUNCTION): functions in a mapping "
            "cannot be sent to worker processes"
        )

    pairs = [(source, seed) for source in sources for seed in seed_list]
    bar = progress_bar(len(pairs) * len(lineup), "evaluate", progress)
    try:
        if workers == 1 or len(pairs) == 1:
            results = [
                {c.label: run_contender(build_job(source, seed, spec), c, bar) for c in lineup}
                for source, seed in pairs
            ]
        else:
            results = _evaluate_in_processes(pairs, lineup, device, workers, bar)
    finally:
        if bar is not None:
            bar.close()
    runs: list[EvaluatedRun] = []
    for (source, seed), by_label in zip(pairs, results):
        target = by_label[REFERENCE].best_val_loss
        for label, result in by_label.items():
            runs.append(EvaluatedRun(source.name, seed, label, result, target, result.compute_to_reach(target)))
    report = EvaluationReport(
        runs=runs,
        jobs=[s.name for s in sources],
        seeds=seed_list,
        controllers=[c.label for c in lineup],
        policy=str(policy)
        if isinstance(policy, (str, os.PathLike))
        else getattr(policy, "name", None),
        split=split if jobs is None or _is_count(jobs) else None,
        machine=describe_machine(device),
        policy_rules=next((describe_policy(c.make()) for c in lineup if c.label == POLICY), []),
    )
    if out_dir is not None:
        report.write(out_dir)
    return report


def _evaluate_in_processes(pairs, lineup, device: str, workers: int, bar) -> list[dict]:
    """``{label: RunResult}`` per (source, seed) of ``pairs``, run by ``workers`` spawned processes."""
    import tempfile

    import torch

    from allocator.processes import run_in_processes

    threads = torch.get_num_threads()
    names = tuple(c.label for c in lineup if c.label != POLICY)
    with tempfile.TemporaryDirectory(prefix="compute-allocator-evaluate-") as scratch:
        policy_dir = None
        for contender in lineup:
            if contender.label == POLICY:  # the deployable format: the workers load it, nothing is pickled
                policy_dir = str(contender.make().save(Path(scratch) / "policy"))
        tasks = [(source.name, seed, policy_dir, names, device, threads) for source, seed in pairs]

        def advance(done: int) -> None:
            if bar is not None:
                bar.update(len(lineup))

        return run_in_processes(_evaluate_pair, tasks, workers, on_result=advance)


@functools.cache
def _worker_lineup(policy_dir: str | None, baselines: tuple[str, ...]) -> tuple[list[Contender], object]:
    lineup = contenders(policy_dir, baselines)
    return lineup, policy_spec(lineup)


@functools.cache
def _worker_source(name: str, device: str) -> JobSource:
    return load_job_source(name, device=device)


def _evaluate_pair(task: tuple) -> dict:
    """A worker's share of :func:`evaluate`: every contender on one (job, seed), in the lineup's order."""
    import torch

    name, seed, policy_dir, baselines, device, threads = task
    torch.set_num_threads(threads)
    lineup, spec = _worker_lineup(policy_dir, baselines)
    source = _worker_source(name, device)
    return {c.label: run_contender(build_job(source, seed, spec), c) for c in lineup}


# ---------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="DIR",
        help="the trained policy directory (policy.safetensors + policy.json); leave it out "
        "to compare the baselines only",
    )
    parser.add_argument(
        "--split",
        choices=("train", "heldout", "all"),
        default="heldout",
        help="which built-in jobs to run (`compute-allocator jobs --split ...` lists them)",
    )
    parser.add_argument(
        "--seeds",
        default="3",
        metavar="N|LIST",
        help="N runs seeds 0..N-1; a comma-separated list (3,7 or 5,) runs exactly those seeds",
    )
    parser.add_argument(
        "--jobs",
        metavar="N|NAMES",
        help="the first N jobs of the split, or comma-separated job names "
        "(built-in names or FILE.py:FUNCTION); default: every job of the split",
    )
    parser.add_argument(
        "--baselines",
        default=",".join(DEFAULT_BASELINES),
        metavar="LIST",
        help=f"comma-separated baselines, of {', '.join(BASELINES)}; "
        "uniform always runs (it sets the target loss)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="where to write results.csv, results.md and curves.png",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="device of the built-in jobs: auto (CUDA when available), cpu, cuda, ...",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N (job, seed) pairs at once, each in a process of its own with --threads threads: "
        "about N times faster on a machine with N free cores, and the same numbers as --workers 1",
    )
    add_policy_rule_arguments(parser)
    add_threads_argument(
        parser,
        default=1,
        why="The built-in jobs are small: more threads gain little alone, and when a training shares the "
        "machine they oversubscribe the cores and slow evaluation many times over (26x measured, "
        "BENCHMARKS.md)",
    )


def add_threads_argument(parser: argparse.ArgumentParser, default: int, why: str) -> None:
    """``--threads N`` of ``evaluate`` and ``apply``; :func:`use_threads` applies it."""
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        metavar="N",
        help=f"torch CPU threads; 0 leaves torch's choice (one per core). {why}",
    )


def use_threads(threads: int) -> None:
    """Set torch's CPU threads (0: leave torch's choice); ``ValueError`` for a negative count."""
    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    use_threads(args.threads)
    report = evaluate(
        policy=policy_with_rules(args),
        split=args.split,
        seeds=args.seeds,
        baselines=parse_names(args.baselines),
        out_dir=args.out,
        jobs=args.jobs,
        device=args.device,
        workers=args.workers,
    )
    print(report.overall_table())
    print(f"\nwrote {', '.join(str(p) for p in report.files.values())}")
    return 0
