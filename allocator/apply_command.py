"""Apply a trained allocator policy to a training job -- built-in or your own -- and compare it with baselines.

``compute-allocator apply --policy DIR --job JOB`` trains the job under the
policy and under each ``--compare`` controller (default: ``uniform``), each on
a fresh job built with the same seed, and prints a summary table: J, final and
best validation loss, validation accuracy (classification), compute used, and
the compute each controller needed to reach uniform training's best
validation loss, with the policy's saving against each controller.

JOB is a built-in job name (``compute-allocator jobs`` lists them) or
``FILE.py:FUNCTION``, a function in your own file that returns an
``allocator.TrainingJob`` of your model and data (it gets ``seed=`` when it
accepts it; see ``examples/my_cnn_job.py``). Loading the file runs your code,
as-is.

Without ``--policy`` only the ``--compare`` controllers run (baselines against
uniform). With ``--policy`` every controller runs the job with the policy's
allocation spec (the policy's K, G and interval length), so their curves are
measured alike.

From Python, the same in three lines::

    from allocator import AllocatorPolicy, TrainingJob, run_job

    job = TrainingJob(model, train=(x, y), val=(x_val, y_val), budget_steps=500)
    policy = AllocatorPolicy.load("runs/policy")
    result = run_job(job, policy, tensorboard_dir="runs/tb/policy")   # a RunResult; job.model is trained

``--save-model FILE`` writes the weights trained under the policy (without
``--policy``: under the first ``--compare`` controller) as safetensors; load
them with ``safetensors.torch.load_model(model, FILE)``.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from allocator.baselines import BASELINES
from allocator.evaluation import (
    POLICY,
    REFERENCE,
    add_policy_rule_arguments,
    add_threads_argument,
    build_job,
    contenders,
    describe_policy,
    load_policy,
    parse_names,
    policy_spec,
    policy_with_rules,
    progress_bar,
    run_contender,
    use_threads,
)
from allocator.job_loading import load_job_source
from allocator.report import (
    format_flops,
    format_number,
    format_percent,
    saving,
    text_table,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="DIR",
        help="the trained policy directory (policy.safetensors + policy.json); leave it out "
        "to compare the --compare controllers only",
    )
    parser.add_argument(
        "--job",
        required=True,
        metavar="JOB",
        help="a built-in job name, or FILE.py:FUNCTION returning an allocator.TrainingJob "
        "(your own model and data; the file is executed as-is)",
    )
    parser.add_argument(
        "--compare",
        default=REFERENCE,
        metavar="LIST",
        help=f"comma-separated baselines to compare with ({', '.join(BASELINES)}); "
        "uniform always runs, it sets the target loss",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every run (initial weights, minibatch order)"
    )
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="log every run to DIR/<controller> (allocation, compute, losses, loss against "
        "compute), so the runs overlay in TensorBoard; use a new DIR for each comparison",
    )
    parser.add_argument(
        "--save-model",
        metavar="FILE",
        help="write the model trained under the policy (or the first --compare controller) "
        "as a safetensors file",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="device of a built-in job: auto (CUDA when available), cpu, cuda, ...",
    )
    add_policy_rule_arguments(parser)
    add_threads_argument(
        parser,
        default=0,
        why="The count changes the last bits of a CPU job's sums, which training grows: 1 gives "
        "the numbers `evaluate` (1 thread by default) gives for the same job and seed, to the last digit",
    )


def run(args: argparse.Namespace) -> int:
    use_threads(args.threads)
    source = load_job_source(args.job, device=args.device)
    compare = parse_names(args.compare)
    policy = policy_with_rules(args)  # refuses a rule flag without --policy
    policy = load_policy(policy) if policy is not None else None
    lineup = contenders(policy, compare)
    if args.policy is None and compare:
        # the model to save (and the controller to describe) is the first one asked for
        lineup.sort(key=lambda c: c.label != compare[0])
    spec = policy_spec(lineup)
    save_path = _check_save_path(args.save_model)
    subject = lineup[0].label

    results = {}
    saved_job = None
    bar = progress_bar(len(lineup), "apply", None)
    try:
        for contender in lineup:
            job = build_job(source, args.seed, spec)
            tensorboard = Path(args.tensorboard) / contender.label if args.tensorboard else None
            results[contender.label] = run_contender(job, contender, bar, tensorboard)
            if contender.label == subject:
                saved_job = job
    finally:
        if bar is not None:
            bar.close()

    reference = results[REFERENCE]
    first = next(iter(results.values()))
    where = f" under policy {args.policy}" if args.policy else ""
    rules = describe_policy(policy) if policy is not None else []  # the flags' rules or the policy's own
    if rules:
        where += f" ({'; '.join(rules)})"
    print(
        f"job {first.job_name} ({source.name}), seed {args.seed}, budget {format_flops(first.budget)}"
        f"{where}"
    )
    print()
    print(summary_table(results))
    print()
    print(savings_text(results))
    if args.tensorboard:
        print(
            f"\nTensorBoard runs: {', '.join(str(Path(args.tensorboard) / label) for label in results)}"
        )
        print(f"  tensorboard --logdir {args.tensorboard}")
    if save_path is not None:
        save_model(
            saved_job.model,
            save_path,
            {"job": reference.job_name, "controller": subject, "seed": str(args.seed)},
        )
        print(f"\nsaved the model trained under {subject} to {save_path}")
    return 0


def summary_table(results: dict) -> str:
    """The terminal table: one row per controller, with the compute it needed to reach uniform's best."""
    target = results[REFERENCE].best_val_loss
    classification = all(r.final_val_accuracy is not None for r in results.values())
    headers = ["controller", "J", "final val loss", "best val loss"]
    if classification:
        headers.append("val accuracy")
    headers += ["compute used", "to uniform's best", "ended"]
    rows = []
    for label, result in results.items():
        row = [
            label,
            format_number(result.objective),
            format_number(result.final_val_loss),
            format_number(result.best_val_loss),
        ]
        if classification:
            row.append(format_number(result.final_val_accuracy, 3))
        row += [
            format_percent(result.compute_fraction),
            format_percent(result.compute_to_reach(target)),
            "diverged" if result.diverged else "stopped" if result.stopped else "budget spent",
        ]
        rows.append(row)
    return text_table(headers, rows)


def savings_text(results: dict) -> str:
    """The compute each controller needed to reach uniform's best loss, as savings.

    With a policy: the policy against uniform, then against every other
    controller. Without: every baseline against uniform.
    """
    target = results[REFERENCE].best_val_loss
    needed = {label: result.compute_to_reach(target) for label, result in results.items()}
    lines = [f"uniform's best validation loss: {format_number(target)}"]
    subjects = [POLICY] if POLICY in results else [label for label in results if label != REFERENCE]
    for label in subjects:
        own = needed[label]
        if math.isinf(own):
            lines.append(f"{label}: never reached uniform's best validation loss")
            continue
        lines.append(
            f"{label}: compute to reach uniform's best: {format_percent(own)} of budget "
            f"({_saving_phrase(own, needed[REFERENCE], REFERENCE)})"
        )
        if label == POLICY:
            for other in results:
                if other not in (POLICY, REFERENCE):
                    lines.append(
                        f"  against {other} ({format_percent(needed[other])}): {_saving_phrase(own, needed[other])}"
                    )
    return "\n".join(lines)


def _saving_phrase(own: float, other_needed: float, other: str | None = None) -> str:
    """``38 % saved against uniform`` (or ``... more than ...``, ``... never reached it``)."""
    value = saving(own, other_needed)
    if math.isinf(other_needed):
        return f"{other or 'it'} never reached it"
    suffix = "" if other is None else f" than {other}" if value < 0 else f" against {other}"
    return f"{format_percent(abs(value))} {'saved' if value >= 0 else 'more'}{suffix}"


def _check_save_path(path: str | None) -> Path | None:
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        raise ValueError(
            f"--save-model {path!r} is a directory; give a file name such as model.safetensors"
        )
    return target


def save_model(model, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights (its state_dict, on the CPU, contiguous) to a safetensors file.

    Tied weights are stored once (``safetensors.torch.save_model``); load them
    back with ``safetensors.torch.load_model(model, path)``.
    """
    import torch
    from safetensors.torch import save_model as save_safetensors

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the directory of {path}: {error}") from error
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to("cpu")
    try:
        save_safetensors(model, str(path), metadata=metadata, force_contiguous=True)
    except OSError as error:
        raise ValueError(f"cannot write the model to {path}: {error}") from error
    finally:
        model.to(device)
    return path
