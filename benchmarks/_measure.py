"""Run a command in a fresh process tree and measure wall time and peak memory of the whole tree.

Shared by the benchmarks so every tool is measured the same way. Linux only (reads ``/proc``).

How memory is measured (the same for every tool):

* The command starts in a new session (``setsid``); every process it creates, including pool
  workers, multiprocessing resource trackers and orphans re-parented to init, keeps that
  session id. Every ``interval_s`` (default 0.05 s) all processes of the session are found by
  scanning ``/proc/<pid>/stat`` and their memory is summed.
* ``peak_rss_mb``: the peak over samples of the **sum of RSS** over the tree. Pages shared
  between processes (a forked worker's copy-on-write pages, shared libraries) are counted once
  per process, so this over-counts fork-based pools; it is the headline figure because it is what
  ``top``/``ps`` users add up.
* ``peak_pss_mb``: the peak over samples of the **sum of PSS** (``/proc/<pid>/smaps_rollup``):
  shared pages are split between the processes that share them, so the sum is the tree's real
  footprint. Fairer between fork (autoseg) and spawn (nnU-Net) pools.
* ``max_single_rss_mb``: the kernel's exact high-water mark of the largest *single* process
  (``ru_maxrss`` from ``wait4`` on the command, which covers descendants it reaped). Not sampled,
  so never misses a spike, but ignores that workers run at the same time.

Edge case: a spike shorter than ``interval_s`` can be missed by the sampled sums; compare
``max_single_rss_mb`` to see how far off a single process was.

Example::

    m = measure(["sleep", "1"])
    print(m.wall_s, m.peak_rss_mb)
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Measurement:
    """Result of :func:`measure`; memory in MiB, time in seconds."""

    wall_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    max_single_rss_mb: float
    peak_processes: int
    samples: int
    returncode: int


def _session_pids(sid: int) -> list[int]:
    """Pids of every live process whose session id (field 6 of /proc/<pid>/stat) is ``sid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "(comm)": state, ppid, pgrp, session
        if int(fields[3]) == sid:
            out.append(int(name))
    return out


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_MB
    except (OSError, IndexError, ValueError):
        return 0.0


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def measure(cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | str | None = None,
            log_path: Path | str | None = None, interval_s: float = 0.05, timeout_s: float | None = None) -> Measurement:
    """Run ``cmd`` to completion and return its :class:`Measurement`.

    stdout and stderr go to ``log_path`` (or are discarded). A run longer than ``timeout_s`` is
    killed (whole session) and reported with returncode -9. A non-zero returncode is *returned*,
    not raised: the caller decides.
    """
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, cwd=cwd,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sid = proc.pid  # setsid makes the child a session leader: session id == its pid
        peak_rss = peak_pss = 0.0
        peak_n = samples = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                wall = time.perf_counter() - t0
                break
            pids = _session_pids(sid)
            peak_rss = max(peak_rss, sum(_rss_mb(p) for p in pids))
            peak_pss = max(peak_pss, sum(_pss_mb(p) for p in pids))
            peak_n = max(peak_n, len(pids))
            samples += 1
            if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                os.killpg(sid, 9)
            time.sleep(interval_s)
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code  # already reaped by wait4; keep Popen consistent
    finally:
        if log_path:
            log.close()
    return Measurement(wall_s=wall, peak_rss_mb=peak_rss, peak_pss_mb=peak_pss,
                       max_single_rss_mb=usage.ru_maxrss / 1024, peak_processes=peak_n,
                       samples=samples, returncode=code)


if __name__ == "__main__":  # quick self-check: python benchmarks/_measure.py <cmd...>
    import sys
    print(measure(sys.argv[1:] or ["python", "-c", "import numpy as np; a = np.ones(50_000_000); import time; time.sleep(0.5)"]))


def run_autoseg(args: Sequence[str], env: Mapping[str, str], log: Path) -> float:
    """``python -m autoseg ARGS`` from the repository root, output to ``log``; its wall time (s).
    A failing command ends the benchmark with the log's name (SystemExit)."""
    import sys
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.call([sys.executable, "-m", "autoseg", *args], env=dict(env), stdout=f, stderr=subprocess.STDOUT,
                             cwd=Path(__file__).resolve().parents[1])
    if rc != 0:
        raise SystemExit(f"autoseg {' '.join(args)} failed (exit {rc}); see {log}")
    return time.time() - t0


def add_comparison_args(parser, test_cases: int) -> None:
    """The arguments every synthetic-data comparison of two models shares (work folder, data, plan target)."""
    parser.add_argument("--work", required=True, type=Path, help="empty folder for data, models and logs")
    parser.add_argument("--size", default="medium", choices=["tiny", "small", "demo", "medium", "large"])
    parser.add_argument("--train-cases", type=int, default=12)
    parser.add_argument("--test-cases", type=int, default=test_cases)
    parser.add_argument("--target", default="cpu", choices=["cpu", "gpu"])
