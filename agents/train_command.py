"""Train an allocator policy with PPO over a distribution of real training jobs.

The configuration is a preset (``--preset``, default ``quick``), then your
``--config FILE`` (YAML of the same shape: ``env``, ``ppo``, ``training``
sections, any subset of keys), then the flags below. The policy directory
``--out`` receives the exported policy (``policy.safetensors``,
``policy.json``), ``config.yaml``, ``command.txt``, the SB3 checkpoint for
``--resume`` and TensorBoard logs in ``tb/``::

    compute-allocator train --preset quick --out runs/quick --n-envs 2
    tensorboard --logdir runs/quick/tb
    compute-allocator train --out runs/quick --resume --timesteps 60000

``--resume`` continues the run in ``--out`` from its last checkpoint, with its
saved ``config.yaml`` (``--timesteps``, ``--seed`` and ``--n-envs`` may change).

``--seeds 0,1,2,3`` trains the configuration once per seed, one after the
other, into ``--out``/seed-N/ (each a complete policy directory), then writes
the ensemble of those policies (``compute-allocator ensemble``: the mean of
their actions) as the policy of ``--out`` itself. It costs one training per
seed. A configuration's ``training.seeds`` does the same without the flag:
the ``default`` preset is the ``quick`` recipe over seeds 0 to 3
(BENCHMARKS.md section 5, twenty-sixth round); ``--seed N`` trains the
single run N of it instead. An interrupted seed resumes on its own (``--out
DIR/seed-N --resume``); ``compute-allocator ensemble`` then combines them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

# Keep this module's imports light: `compute-allocator --help` imports it.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="configuration preset from agents/presets: quick (10 to 15 minutes on 2 cores; "
        "the published quick policy's recipe), default (quick over seeds 0 to 3, ensembled, with "
        "token dropping on transformers: four trainings, about 45 minutes), default-v1 (the default "
        "until the twenty-sixth round of BENCHMARKS.md section 5: one 100k-timestep run), quick-v1 "
        "(quick before it gained five env choices; reruns BENCHMARKS.md section 5), "
        "tiny (seconds; for tests) [default: quick]",
    )
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="YAML configuration overriding the preset (sections env, ppo, training)",
    )
    parser.add_argument(
        "--out", required=True, default=argparse.SUPPRESS, metavar="DIR", help="the policy directory to write"
    )
    parser.add_argument(
        "--timesteps",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="total env steps over all envs [default: the preset's training.timesteps]",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="random seed [default: training.seed]",
    )
    parser.add_argument(
        "--seeds",
        default=argparse.SUPPRESS,
        metavar="LIST",
        help="train once per seed (comma-separated, e.g. 0,1,2,3) into DIR/seed-N and write their "
        "ensemble (the mean of their actions) as DIR's policy; one training per seed [default: "
        "the configuration's training.seeds; none (one run) except in the default preset]",
    )
    parser.add_argument(
        "--n-envs",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="parallel envs, one process each when > 1 [default: training.n_envs]",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with its saved config.yaml",
    )
    parser.add_argument(
        "--no-progress-bar",
        dest="progress_bar",
        action="store_false",
        default=argparse.SUPPRESS,
        help="do not show the progress bar (e.g. when writing to a log file)",
    )


# Flags the user did not give. Their argparse default is SUPPRESS so that --help
# shows no "(default: None)"; run() fills them in.
_NOT_GIVEN = {
    "preset": None,
    "config": None,
    "timesteps": None,
    "seed": None,
    "seeds": None,
    "n_envs": None,
    "progress_bar": True,
}


def _fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    for name, value in _NOT_GIVEN.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


def _check_flags(args: argparse.Namespace) -> None:
    if args.timesteps is not None and args.timesteps < 1:
        raise ValueError(f"--timesteps must be a positive number of env steps, got {args.timesteps}")
    if args.n_envs is not None and args.n_envs < 1:
        raise ValueError(f"--n-envs must be >= 1, got {args.n_envs}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.seeds is not None:
        args.seeds = _parse_seeds(args.seeds)
        if args.seed is not None or args.resume:
            raise ValueError(
                "--seeds trains a fresh run per seed: it cannot be combined with --seed or --resume "
                "(resume one seed with --out DIR/seed-N --resume)"
            )
    if args.resume and (args.preset is not None or args.config is not None):
        raise ValueError(
            "--resume continues with the run's saved config.yaml; --preset and --config "
            "cannot be combined with it (--timesteps, --seed and --n-envs can)"
        )


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, rebuilt from the parsed flags (for command.txt)."""
    words = ["compute-allocator", "train"]
    for flag, value in (
        ("--preset", args.preset),
        ("--config", args.config),
        ("--out", args.out),
        ("--timesteps", args.timesteps),
        ("--seed", args.seed),
        ("--seeds", ",".join(map(str, args.seeds)) if args.seeds else None),
        ("--n-envs", args.n_envs),
    ):
        if value is not None:
            words += [flag, str(value)]
    if args.resume:
        words.append("--resume")
    return shlex.join(words)


def _parse_seeds(text: str) -> list[int]:
    from agents.config import are_ensemble_seeds

    try:
        seeds = [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated seeds such as 0,1,2, got {text!r}") from None
    if not are_ensemble_seeds(seeds):
        raise ValueError(f"--seeds needs at least 2 different seeds >= 0, got {text!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    _check_flags(_fill_defaults(args))
    if args.seeds is None and args.seed is None and not args.resume:
        from agents.config import resolve_config

        # a preset or --config may ask for an ensemble (training.seeds: the default preset does)
        args.seeds = resolve_config(args.preset, args.config).training.seeds or None
    if args.seeds is not None:
        return _run_seeds(args)
    return _run_one(args)


def _run_seeds(args: argparse.Namespace) -> int:
    from agents.training import check_new_out_dir
    from allocator.ensemble import PolicyEnsemble

    out_dir = Path(args.out)
    check_new_out_dir(out_dir, advice="--seeds writes a new directory: choose another")
    runs = [out_dir / f"seed-{seed}" for seed in args.seeds]
    for index, (seed, run_dir) in enumerate(zip(args.seeds, runs)):
        print(f"seed {seed} ({index + 1} of {len(runs)}) -> {run_dir}")
        one = argparse.Namespace(**{**vars(args), "seeds": None, "seed": seed, "out": str(run_dir)})
        try:
            _run_one(one)
        except KeyboardInterrupt:
            done = " ".join(str(path) for path in runs[:index]) or "(none yet)"
            print(
                f"seeds finished: {done}. Finish {run_dir} as said above and train the remaining seeds "
                f"with --seed N --out {out_dir}/seed-N, then: compute-allocator ensemble --out {out_dir} "
                f"{out_dir}/seed-*",
                file=sys.stderr,
            )
            raise
    ensemble = PolicyEnsemble.from_directories(runs)
    ensemble.save(out_dir)
    print(f"ensemble of {len(runs)} seeds ({', '.join(map(str, args.seeds))}) written to {out_dir}")
    return 0


def _run_one(args: argparse.Namespace) -> int:
    from agents.config import DEFAULT_PRESET, resolve_config
    from agents.training import resume_config, train

    out_dir = Path(args.out)
    # one run: its config.yaml must not ask for an ensemble (training.seeds), whatever the preset said
    overrides = {"timesteps": args.timesteps, "seed": args.seed, "n_envs": args.n_envs, "seeds": []}
    if args.resume:
        config = resume_config(out_dir, overrides)
        preset = None
    else:
        config = resolve_config(args.preset, args.config, {"training": overrides})
        preset = args.preset or DEFAULT_PRESET
    summary = train(
        config,
        out_dir,
        resume=args.resume,
        command=command_line(args),
        progress_bar=args.progress_bar,
        preset=preset,
    )
    print(
        f"trained {summary.timesteps_this_run} timesteps ({summary.timesteps} in total, "
        f"{summary.episodes} episodes) in {summary.wall_time:.0f} s "
        f"({summary.timesteps_per_second:.1f} timesteps/s)"
    )
    if summary.evaluations:
        step, scalars = summary.evaluations[-1]
        which = "" if summary.selected is None else " of the last policy"  # not necessarily the one kept
        print(
            f"held-out evaluation{which} at {step} timesteps: J policy {scalars['eval/J_policy']:.4f} "
            f"vs uniform {scalars['eval/J_uniform']:.4f} (wins {int(scalars['eval/wins'])} of "
            f"{config.training.eval_jobs}), early stopping {scalars['eval/J_early_stopping']:.4f} "
            f"(wins {int(scalars['eval/wins_over_early_stopping'])})"
        )
    if summary.selected is not None:
        print(
            f"kept the policy of {summary.selected['timesteps']} timesteps, the best on the validation jobs "
            f"(mean J - J uniform {summary.selected['J_difference']:+.4f})"
        )
    print(f"policy written to {out_dir}  (tensorboard --logdir {out_dir / 'tb'})")
    return 0
