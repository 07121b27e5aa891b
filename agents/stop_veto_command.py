"""Fit a veto on a policy's stops from hindsight, and write the policy with it.

``compute-allocator stop-veto --policy DIR --out DIR`` runs standard training
on ``--jobs`` jobs drawn from the train split (half the compute-bound ones
slow learners: ``many_epoch_share`` 0.5), or from ``--config``'s job
distribution, labels every interval "continuing pays" when a later stop
gives a lower J, fits a logistic regression on the observation's global
features, and writes the policy with the veto in its policy.json as a new
policy directory. ``apply`` and ``evaluate`` run it like any other: when the
policy asks to stop and the veto says continuing pays, the job runs on
(:mod:`agents.stop_veto_fit`, :mod:`allocator.stop_veto`).

With the defaults (64 jobs, 2 workers) the fit takes under a minute on two
cores. Measured (BENCHMARKS.md section 5, forty-first and forty-second
rounds): fitted on the default distribution, the veto runs the published
learned freeze's slow learners on and improves 6 of 21 held-out pairs, none
worse; fitted on that policy's own training distribution (three quarters
CNNs) it vetoed the stops of the train split's data-bound jobs too (named
mean J 0.8309 against 0.7917); on ``default`` it cost J on the train split.
Check a vetoed policy on jobs it was not fitted on before using it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: the jobs the published veto was fitted on (``JobDistribution`` options): the train split's
#: mix with half the compute-bound jobs slow learners; a policy's own training mix can be
#: narrower (the learned freeze's is three quarters CNNs) and its veto worse elsewhere
DEFAULT_DISTRIBUTION = {"split": "train", "many_epoch_share": 0.5}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from allocator.evaluation import add_progress_bar_argument

    parser.add_argument("--policy", required=True, metavar="DIR", help="the policy whose stops to veto")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the vetoed policy's directory to write (new or empty)"
    )
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="a training configuration (as train --config takes) whose env section gives the jobs to fit "
        "on; by default the train split with half the compute-bound jobs slow learners (many_epoch_share 0.5)",
    )
    parser.add_argument("--jobs", type=int, default=64, help="distinct jobs drawn and run under standard training")
    parser.add_argument("--job-seed", type=int, default=0, help="seeds the draw of the jobs")
    parser.add_argument("--workers", type=int, default=2, help="processes running the jobs (one torch thread each)")
    parser.add_argument(
        "--only-its-stops",
        action="store_true",
        help="fit only on the intervals after which the policy asks to stop, where a veto acts",
    )
    add_progress_bar_argument(parser)


def run(args: argparse.Namespace) -> int:
    from agents.config import config_from_yaml
    from agents.stop_veto_fit import fit_stop_veto
    from agents.training import check_new_out_dir
    from allocator.evaluation import job_progress_bar
    from allocator.jobs import JobDistribution
    from allocator.policy import AllocatorPolicy

    for option in ("jobs", "workers"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option} must be >= 1, got {getattr(args, option)}")
    out_dir = Path(args.out)
    check_new_out_dir(out_dir, advice="choose another directory")  # before the fit, not after it
    policy = AllocatorPolicy.load(args.policy)
    if args.config:
        env = config_from_yaml(args.config).env
        options = {"split": env.split, **env.distribution_options()}
    else:
        options = dict(DEFAULT_DISTRIBUTION)
    distribution = JobDistribution(**options)
    recipes = distribution.distinct_recipes(args.jobs, args.job_seed)
    bar = job_progress_bar(len(recipes), "fitting the stop veto", args.progress_bar)
    try:
        veto = fit_stop_veto(
            args.policy,
            recipes,
            workers=args.workers,
            only_its_stops=args.only_its_stops,
            on_job=(lambda done: bar.update(1)) if bar is not None else None,
            notes={"job_seed": args.job_seed, "distribution": options},
        )
    finally:
        if bar is not None:
            bar.close()
    policy.with_stop_veto(veto).save(out_dir)
    print(summary_line(veto))
    print(f"wrote {out_dir} ({args.policy} with its stops vetoed where continuing pays)")
    return 0


def summary_line(veto) -> str:
    """What the fit saw and the regression's largest weights, in one line."""
    notes = veto.extra
    largest = sorted(zip(veto.features, veto.weights), key=lambda pair: -abs(pair[1]))[:6]
    return (
        f"{len(notes['jobs'])} jobs, {notes['intervals']} intervals, continuing pays on {notes['continue_pays']}; "
        f"training accuracy {notes['training_accuracy']:.3f}; largest weights "
        + ", ".join(f"{name} {weight:+.2f}" for name, weight in largest)
    )
