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
from pathlib import Path

from agents.distill import DistillSettings

DEFAULTS = DistillSettings()
# DistillSettings field -> (type, help): one command-line option each
SETTINGS: list[tuple[str, type, str]] = [
    ("rounds", int, "DAgger rounds: the teacher acts in the first, the student in the rest"),
    ("episodes", int, "training jobs run per round (each 10 to 40 intervals)"),
    ("epochs", int, "passes over all labels gathered so far, after each round"),
    ("learning_rate", float, "Adam's learning rate"),
    ("batch_size", int, "minibatch of labels"),
    ("seed", int, "seeds the student's initial weights and the jobs drawn"),
    ("workers", int, "processes running the jobs (one torch thread each)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from allocator.evaluation import add_progress_bar_argument

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
    for name, kind, help_text in SETTINGS:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=getattr(DEFAULTS, name), help=help_text
        )
    add_progress_bar_argument(parser)


def run(args: argparse.Namespace) -> int:
    from agents.config import config_from_yaml
    from agents.distill import distill, summary_lines
    from agents.training import check_new_out_dir
    from allocator.evaluation import job_progress_bar

    settings = DistillSettings(**{name: getattr(args, name) for name, _, _ in SETTINGS}).validate()
    config = config_from_yaml(args.config) if args.config else None
    out_dir = Path(args.out)
    check_new_out_dir(out_dir, advice="choose another directory")
    bar = job_progress_bar(settings.rounds * settings.episodes, "distilling", args.progress_bar)

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
    print(f"wrote {directory} (one {student.kind} actor imitating {args.teacher})")
    return 0
