"""Worker processes that die with their parent.

A ``ProcessPoolExecutor`` worker blocks on its task queue; when its parent is killed
(``kill -9``), nothing tells it, so it finishes the queued cases, keeps writing, then waits
forever. :func:`die_with_parent` (the pool's ``initializer``) asks Linux to SIGKILL the worker
when its parent ends (``prctl(PR_SET_PDEATHSIG)``); :func:`parent_gone` is the portable
fallback a worker checks between cases.

Usage::

    ProcessPoolExecutor(n, initializer=die_with_parent)
    ...
    def job(args):
        if parent_gone():
            os._exit(1)

Fork safety: a process that has started an engine whose worker threads do not survive
``fork()`` (OpenVINO's thread pool; :func:`mark_fork_unsafe`) starts its later pools with
"forkserver" instead of Linux's default "fork" (:func:`pool_context`): a forked child would
inherit the engine's state without its threads and may crash. Pool functions are module-level,
so they pickle for either start method.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from multiprocessing.context import BaseContext

PR_SET_PDEATHSIG = 1
_parent_pid: int | None = None
_fork_unsafe: set[str] = set()  # engines started in this process that do not survive fork()


def mark_fork_unsafe(engine: str) -> None:
    """Record that ``engine`` runs in this process: pools started from now on avoid fork (see module doc)."""
    _fork_unsafe.add(engine)


def pool_context(requested: str | None = None) -> BaseContext | None:
    """The start method for a new process pool: ``requested`` when given; else "forkserver" once a
    fork-unsafe engine runs here (on platforms that fork by default), else None (the default)."""
    if requested:
        return multiprocessing.get_context(requested)
    if _fork_unsafe and multiprocessing.get_start_method(allow_none=True) in (None, "fork") \
            and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return None


def die_with_parent() -> None:
    """Pool initializer: SIGKILL this process when its parent ends (Linux), and remember the parent.

    Edge case: the parent may already be gone when this runs; then the process exits at once.
    """
    global _parent_pid
    _parent_pid = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: parent_gone() between cases still stops the worker
    if parent_gone():
        os._exit(1)


def parent_gone() -> bool:
    """True in a worker started with :func:`die_with_parent` whose parent has ended (it was re-parented)."""
    return _parent_pid is not None and os.getppid() != _parent_pid
