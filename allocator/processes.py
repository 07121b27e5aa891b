"""Run real training jobs in worker processes, one torch thread each, results in order."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any


def _ignore_interrupts() -> None:
    # Ctrl-C is for the main process, which then terminates the pool (no traceback per worker)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_in_processes(
    function: Callable[[Any], Any],
    tasks: Sequence[Any],
    workers: int,
    on_result: Callable[[int], None] | None = None,
) -> list:
    """``[function(task) for task in tasks]``, in ``workers`` spawned processes (in this one for 1).

    ``function`` must be importable by name and set its own torch threads (a spawned
    process starts with torch's default); ``on_result(done)`` is called after each result.
    """
    results = []
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(function(task))
            if on_result is not None:
                on_result(len(results))
        return results
    # spawn, not fork: the parent has run torch's thread pool, which a forked child may inherit locked
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(tasks)), initializer=_ignore_interrupts) as pool:
        for result in pool.imap(function, tasks):
            results.append(result)
            if on_result is not None:
                on_result(len(results))
    return results
