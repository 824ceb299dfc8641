"""The process pool behind `--jobs N`: workers that never outlive the compile.

- Workers are spawned, not forked (forking a process that runs ONNX Runtime's
  thread pool can deadlock).
- Workers ignore SIGINT: Ctrl-C reaches the whole process group, and only the
  parent should react (it cancels what is queued and waits for running chunks).
- Workers watch their parent and exit when it is gone, so a SIGKILLed compile
  leaves no orphans behind.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager

__all__ = ["process_pool"]

PARENT_POLL_SECONDS = 0.5


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # the parent died without shutting the pool down: nobody is waiting for results


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="qcompile-parent-watch").start()


@contextmanager
def process_pool(jobs: int) -> Iterator[Executor | None]:
    """None for one job (calibrate in-process); else a pool of `jobs` spawned workers."""
    if jobs == 1:
        yield None
        return
    pool = ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(os.getpid(),)
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
