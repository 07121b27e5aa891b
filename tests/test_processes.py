"""Jobs run in worker processes come back in the order they were given, each counted as it ends."""

import time

from allocator.processes import run_in_processes


def square(x: int) -> int:  # importable by name: spawned workers look it up
    time.sleep(0.1 * x)  # the first task ends last
    return x * x


def test_results_come_in_the_order_of_the_tasks_and_each_is_counted():
    for workers in (1, 2):
        done: list[int] = []
        assert run_in_processes(square, [3, 1, 2], workers, done.append) == [9, 1, 4]
        assert done == [1, 2, 3]
    assert run_in_processes(square, [], 2) == []
