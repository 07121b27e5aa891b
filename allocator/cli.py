"""The ``compute-allocator`` command: train, apply, evaluate, ensemble, distill, stop-veto, jobs, bench.

This is the composition root. Each subcommand lives in its own module that
defines ``add_arguments(parser)`` and ``run(args) -> int``; the module is
imported only when its subcommand is used, so ``compute-allocator jobs`` never
loads stable-baselines3. Bad input ends with one line on stderr and exit code 2;
set ``COMPUTE_ALLOCATOR_DEBUG=1`` to see the traceback instead. Ctrl-C and SIGTERM
(``kill PID``, a job scheduler's stop) end a command the same way: its cleanup
runs (training stops its subprocess envs and says how to resume) and one line
says so, exit code 130 and 143.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

# name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "agents.train_command",
        "train an allocator policy with PPO over a distribution of training jobs",
    ),
    "apply": (
        "allocator.apply_command",
        "apply a trained policy to a training job (built-in or your own) and compare",
    ),
    "evaluate": (
        "allocator.evaluation",
        "run a policy and the baselines on the same jobs and seeds; write a report",
    ),
    "ensemble": (
        "allocator.ensemble_command",
        "combine trained policies (e.g. several seeds) into one that acts with their mean action",
    ),
    "distill": (
        "agents.distill_command",
        "train one actor to act as a policy (e.g. an ensemble) does, on its own training jobs",
    ),
    "stop-veto": (
        "agents.stop_veto_command",
        "fit a veto on a policy's stops from hindsight and write the policy with it",
    ),
    "jobs": ("allocator.jobs.command", "list the built-in training jobs, one a line"),
    "bench": ("allocator.bench", "measure the allocator's overhead against a plain PyTorch loop"),
}


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class Stopped(KeyboardInterrupt):
    """SIGTERM in the main process, raised where it arrives.

    A KeyboardInterrupt, so every cleanup written for Ctrl-C runs for it too
    (training: the envs stopped, TensorBoard flushed, the checkpoint to resume
    from named, a new one saved first when the run was collecting a rollout).
    Without it SIGTERM kills the main process at once, no cleanup runs, and its
    subprocess envs, their pipes cut, print tracebacks as they die.
    """


def _stop_on_sigterm():
    """Make SIGTERM raise :class:`Stopped`; returns the handler it replaced.

    A second SIGTERM kills at once (the default), for a cleanup that hangs. A
    process forked from this one with the handler inherited dies as the default
    would: only the main process cleans up.
    """
    main_pid = os.getpid()

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if os.getpid() != main_pid:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Stopped

    return signal.signal(signal.SIGTERM, handler)


class _Unavailable:
    """Stands in for a command whose module cannot be imported."""

    def __init__(self, name: str, error: ImportError) -> None:
        self.__doc__ = f"unavailable: {error}"
        self._message = f"the {name} command cannot be loaded ({error}); reinstall compute-allocator"

    def add_arguments(self, parser) -> None:
        pass

    def run(self, args) -> int:
        raise CommandError(self._message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once, and only when it tells the user something.

    argparse's formatter appends "(default: X)" to every option, which prints
    "(default: None)" for required options, "(default: False)" or, for a
    ``--no-...`` flag, "(default: True)" on flags, and a second default where
    the help already says "[default: ...]".
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        is_flag = action.nargs == 0  # store_true, store_false, store_const: the value is the flag's presence
        if action.required or is_flag or action.default is None or "[default:" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compute-allocator",
        description=(
            "Learn where a training job's compute should go. Train a PPO allocator "
            "policy over real training jobs, apply it to your own model and data, and "
            "inspect everything in TensorBoard."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:  # a broken install: every other command still works
            module = _Unavailable(name, error)
        command_parser = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip().split("\n\n")[0],
            formatter_class=_HelpFormatter,
        )
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # signal handlers can be set from the main thread only (main() called from another: no handler)
    previous = _stop_on_sigterm() if threading.current_thread() is threading.main_thread() else None
    try:
        return int(args._module.run(args) or 0)
    except Stopped:
        print(f"compute-allocator {args.command}: stopped (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"compute-allocator {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError, NotADirectoryError, FileExistsError) as error:
        if os.environ.get("COMPUTE_ALLOCATOR_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"compute-allocator {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
