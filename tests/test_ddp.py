"""Data-parallel training: 2 CPU processes with gloo end with identical weights."""

import os
import subprocess
import sys

import torch

from autoseg.cli import main

from conftest import write_blob_dataset


def test_ddp_two_cpu_processes_identical_weights(autoseg_env, tmp_path):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=4)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "-np", "1"]) == 0
    out = tmp_path / "ddp"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, AUTOSEG_DIST_BACKEND="gloo", OMP_NUM_THREADS="1", PYTHONPATH=path)
    worker = os.path.join(os.path.dirname(__file__), "ddp_train_worker.py")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                        worker, str(autoseg_env["pre"] / "Dataset003_Liver"), str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = torch.load(out / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(out / "rank1_weights.pt", weights_only=True)
    initial = torch.load(out / "checkpoint_final.pth", weights_only=True)["network"]
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert all(torch.equal(w0[k], initial[k]) for k in w0)  # rank 0 wrote what it trained
