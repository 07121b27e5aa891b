"""The stop veto of BENCHMARKS.md's forty-first and forty-second rounds, fitted as they fitted it.

BENCHMARKS.md section 5, forty-first and forty-second rounds. On uniform's
own curves of the train check's jobs, the published policies ask to stop
where a later stop would give a lower J far more often on the slow
learners than a logistic regression reading the same global features
does. This script fits that regression as a veto on a trained policy's
stops with ``compute-allocator stop-veto``'s fit (:mod:`agents.stop_veto_fit`)
on the jobs the rounds used, and writes the policy with the veto in its
policy.json, as a new policy directory that ``compute-allocator apply`` and
``evaluate``, ``train_check.py`` and ``cnn_freeze_probe.py`` run like any
other (``benchmarks/heldout-learned-freeze-vetoed/policy`` was written so):

    python benchmarks/stop_veto.py fit --policy P --jobs 64 --out runs/r42/P-vetoed

``fit`` runs uniform, with the policy's spec (its interval length), on
``--jobs`` distinct jobs drawn from the train split's distribution
(``many_epoch_share`` 0.5, as the recipes train; job seed 4141), none of
them a job of ``train_check.py`` or ``cnn_freeze_probe.py``, where the
command draws from job seed 0 and keeps every job it draws. Every interval but the first
and the last is labelled "continuing pays" when some later stop on the same
curve, the full run included, gives a lower J (at ``Objective()``'s
defaults), weighted by the J at stake, and a standardised logistic
regression on the observation's global features is fitted to the labels;
its threshold is its own (probability 1/2). With ``--only-its-stops`` it is
fitted only on the intervals after which the policy asks to stop, where a
veto acts. A veto the policy already carries is replaced.

Trap: the labels come from uniform's curves; under a policy the curve is
its own (selection, a frozen stem), read through the same features.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_check import job_sets  # noqa: E402

from agents.stop_veto_command import DEFAULT_DISTRIBUTION, summary_line  # noqa: E402
from agents.stop_veto_fit import fit_stop_veto  # noqa: E402
from allocator import AllocatorPolicy  # noqa: E402
from allocator.jobs import JobDistribution, names  # noqa: E402
from allocator.policy import CONFIG_FILE, WEIGHTS_FILE  # noqa: E402

VETO_JOB_SEED = 4141  # apart from the check's and the probe's draws


def veto_recipes(jobs: int) -> dict:
    """The rounds' jobs: ``jobs`` distinct draws of the command's default distribution (the train
    split, ``many_epoch_share`` 0.5) from job seed 4141, none of them a named train job or a job of
    the train check or the CNN probe."""
    checked = set(names("train"))
    for _, builders in job_sets(slow_learner_jobs=16).values():
        checked |= set(builders)
    distribution = JobDistribution(**DEFAULT_DISTRIBUTION)
    return distribution.distinct_recipes(jobs, VETO_JOB_SEED, keep=lambda recipe: recipe.name not in checked)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fitting = sub.add_parser("fit", help="fit the veto on uniform's curves of drawn train-split jobs")
    fitting.add_argument("--policy", required=True, help="the policy to veto: its spec sets the intervals")
    fitting.add_argument(
        "--only-its-stops", action="store_true", help="fit only on the intervals where the policy asks to stop"
    )
    fitting.add_argument("--jobs", type=int, default=64, help="distinct drawn jobs (default: 64)")
    fitting.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    fitting.add_argument(
        "--out", type=Path, required=True, help="a new policy directory: the policy with its veto in policy.json"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.workers < 1:
        parser.error("--jobs and --workers must be >= 1")
    if (args.out / CONFIG_FILE).exists() or (args.out / WEIGHTS_FILE).exists():
        parser.error(f"{str(args.out)!r} already holds a policy; choose a new --out")  # before the fit, not after
    try:
        policy = AllocatorPolicy.load(args.policy)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    try:
        veto = fit_stop_veto(
            args.policy, veto_recipes(args.jobs), args.workers, args.only_its_stops, notes={"job_seed": VETO_JOB_SEED}
        )
    except ValueError as error:  # e.g. --only-its-stops with a policy that never stops on these jobs
        parser.error(str(error))
    policy.with_stop_veto(veto).save(args.out)
    print(summary_line(veto) + f"; the vetoed policy written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
