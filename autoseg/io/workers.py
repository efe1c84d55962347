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
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
_parent_pid: int | None = None


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
