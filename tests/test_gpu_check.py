"""benchmarks/gpu_check.py: one line and exit 0 without CUDA; every check's code runs (on the CPU, tiny plan)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env.pop("AUTOSEG_DIST_BACKEND", None)
    return env


def test_without_cuda_one_line_and_exit_0():
    r = subprocess.run([sys.executable, str(SCRIPT)], env=_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.strip().splitlines()) == 1 and "no CUDA GPU" in r.stdout


def test_cpu_smoke_runs_every_check(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--json", str(out)], env=_env(CUDA_VISIBLE_DEVICES=""),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    rows = json.loads(out.read_text())
    by_check = {row["check"]: row for row in rows}
    for check in ("train it/s (autoseg U-Net)", "predict: sliding window only", "predict: 512x512x300 CT, 1 fold + mirroring",
                  "predict: 'autoseg predict' command", "OOM fallback (memory cap)", "DDP 2 processes"):
        assert by_check[check]["status"] == "ok", by_check[check]
    assert "fell back True" in by_check["OOM fallback (memory cap)"]["result"]
    assert "identical on both ranks: True" in by_check["DDP 2 processes"]["result"]
    assert "status" in r.stdout and "DDP 2 processes" in r.stdout  # the table
