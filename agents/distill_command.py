"""Distil a trained policy, usually an ensemble, into one actor that acts as it does.

``compute-allocator distill --teacher DIR --out DIR`` runs real training jobs
of the teacher's own job distribution (the one its members were trained
on), labels every interval with the teacher's action, and fits one actor of
the members' architecture to those labels, in DAgger rounds: the teacher acts
in the first round, the student in the later ones, so the states the student
drifts into get labels too. The result is an ordinary policy directory
(safetensors + JSON): ``evaluate --policy DIR`` and ``apply --policy DIR``
take it as they take a trained one.

Each episode is a real training run: with the defaults (6 rounds of 96 jobs)
distilling the 4-seed ``quick`` ensemble took 6 to 7 minutes on two cores
(BENCHMARKS.md section 5, ninth round).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.distill import DistillSettings

DEFAULTS = DistillSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        required=True,
        metavar="DIR",
        help="the policy directory to imitate: an ensemble (compute-allocator ensemble, train --seeds) "
        "or a single trained policy",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the student's policy directory to write (new or empty)"
    )
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="a training configuration (as train --config takes) whose env section gives the jobs to "
        "distil on; by default the teacher's own, recorded in its policy.json",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULTS.rounds,
        help="DAgger rounds: the teacher acts in the first, the student in the rest",
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=DEFAULTS.episodes,
        help="training jobs run per round (each 10 to 40 intervals)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=DEFAULTS.epochs,
        help="passes over all labels gathered so far, after each round",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=DEFAULTS.learning_rate, help="Adam's learning rate"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="minibatch of labels")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="seeds the student's initial weights and the jobs drawn",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULTS.workers,
        help="processes running the jobs (one torch thread each)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    from agents.config import config_from_yaml
    from agents.distill import distill, summary_lines
    from agents.training import check_new_out_dir
    from allocator.evaluation import progress_bar

    settings = DistillSettings(
        rounds=args.rounds,
        episodes=args.episodes,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        workers=args.workers,
    ).validate()
    config = config_from_yaml(args.config) if args.config else None
    out_dir = Path(args.out)
    check_new_out_dir(out_dir, advice="choose another directory")
    bar = progress_bar(settings.rounds * settings.episodes, "distilling", args.progress)
    if bar is not None:
        bar.unit = "job"
        bar.bar_format = "{l_bar}{bar}| {n}/{total} jobs [{elapsed}<{remaining}]{postfix}"

    def on_progress(description: str, done: int, total: int) -> None:
        if bar is not None:
            bar.set_postfix_str(description, refresh=False)
            bar.update(1)

    try:
        student, reports = distill(args.teacher, settings, config=config, on_progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    directory = student.save(out_dir)
    for line in summary_lines(reports):
        print(line)
    print(f"wrote {directory} (one {student.kind} actor imitating {args.teacher})", file=sys.stdout)
    return 0
