"""The worker processes of a preparation: one function run over many tasks."""
from __future__ import annotations

import multiprocessing
from typing import Callable, Iterator, Sequence, TypeVar

import cv2

Task = TypeVar("Task")
Result = TypeVar("Result")


def init_worker() -> None:
    """Pool initializer: one OpenCV thread per worker process (the processes give the parallelism)."""
    cv2.setNumThreads(1)


def run_tasks(function: Callable[[Task], Result], tasks: Sequence[Task], workers: int) -> Iterator[Result]:
    """`function` of each task, in task order, with `workers` processes (0 or 1: in this one).

    `function` must be importable by name: the processes are spawned, not forked, so that they
    start without the parent's threads and OpenCV state. Tasks go out in chunks of up to 16, small
    enough that the results arrive steadily.
    """
    if workers <= 1 or len(tasks) < 2:
        yield from map(function, tasks)
        return
    chunk = max(1, min(16, len(tasks) // (4 * workers)))
    with multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker) as pool:
        yield from pool.imap(function, tasks, chunksize=chunk)
