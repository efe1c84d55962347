"""``autoseg plan_and_preprocess``: integrity check, fingerprint, plans, preprocessing."""

from __future__ import annotations

import argparse

from autoseg.datasets.commands import add_dataset_argument
from autoseg.preprocessing.plan_and_preprocess import plan_and_preprocess


def configure_plan_and_preprocess(p: argparse.ArgumentParser) -> None:
    add_dataset_argument(p)
    p.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres", "3d_lowres", "3d_roi_fullres"],
                   help="configurations to preprocess (default: 2d 3d_fullres 3d_lowres 3d_roi_fullres; "
                        "3d_lowres and 3d_roi_fullres only where they are planned)")
    p.add_argument("--gpu-memory", type=float, default=8.0, help="GPU memory budget in GB that sizes patch and batch (default 8)")
    p.add_argument("--target", choices=["gpu", "cpu"], default="gpu",
                   help="gpu: nnU-Net's plans sized to --gpu-memory (default); cpu: sized to ~1 s per training iteration on 2 cores")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--verify", action="store_true", help="only check the dataset's integrity; write nothing")
    p.add_argument("--clean", action="store_true", help="redo cases already preprocessed")
    p.add_argument("--normalization", default=None,
                   help="override the intensity normalisation: ct, zscore or window:LO,HI (e.g. window:-200,200)")


def run_plan_and_preprocess(a: argparse.Namespace) -> int:
    plan_and_preprocess(a.dataset, a.configurations, a.gpu_memory, a.num_processes, a.verify, a.clean, a.normalization,
                        target=a.target)
    return 0
