"""Process pools started after a fork-unsafe engine (OpenVINO) ran in the process use forkserver."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoseg.evaluation.evaluate import map_cases
from autoseg.io import workers

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver on this platform")
def test_pools_leave_fork_once_a_fork_unsafe_engine_runs(monkeypatch):
    monkeypatch.setattr(workers, "_fork_unsafe", set())
    default = multiprocessing.get_start_method(allow_none=True)
    if default in (None, "fork"):
        assert workers.pool_context() is None  # nothing unsafe ran: the platform default
    workers.mark_fork_unsafe("an engine")
    ctx = workers.pool_context()
    if default in (None, "fork"):
        assert ctx is not None and ctx.get_start_method() == "forkserver"
    else:
        assert ctx is None  # the platform does not fork by default anyway
    assert workers.pool_context("spawn").get_start_method() == "spawn"  # an explicit request wins
    # evaluation's pool runs its jobs in forkserver workers (len: a picklable module-level function)
    assert map_cases(len, [(1, 2), (3,), (), (4, 5, 6)], num_workers=2, desc="test") == [2, 1, 0, 3]


def test_evaluation_pool_survives_openvino():
    """The failure this guards against: after OpenVINO ran, forked workers crashed (run in a child
    process, so this test process never loads OpenVINO)."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    script = textwrap.dedent("""
        import numpy as np, torch
        from autoseg.evaluation.evaluate import map_cases
        from autoseg.inference import runtimes
        from autoseg.io import workers
        net = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
        ov = runtimes.wrap_networks([net], "openvino", 1, [8, 8, 8])[0]
        out = ov(torch.randn(2, 1, 8, 8, 8))
        assert out.shape == (2, 3, 8, 8, 8)
        assert workers.pool_context().get_start_method() == "forkserver"
        assert map_cases(len, [(1, 2), (3,), ()], num_workers=2, desc="after openvino") == [2, 1, 0]
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
