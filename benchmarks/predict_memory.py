"""Peak memory and wall time of ``autoseg predict`` on one 512 x 512 x N CT (issue target: peak RSS <= 8 GB).

Writes a synthetic abdominal CT (``autoseg.datasets.synthetic.make_case``, 0.7 x 0.7 x 1.0 mm),
builds a fake trained model whose plan and untrained 1-fold U-Net are what the planner gives
a LiTS-like dataset (spacing 1.0 x 0.77 x 0.77 mm, patch 128^3, 6 stages, up to 320
features), then runs ``python -m autoseg predict`` in a subprocess and reports its wall time
and peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``).

    python benchmarks/predict_memory.py                  # N = 600, mirroring TTA, step 0.5, CPU
    python benchmarks/predict_memory.py --slices 600 --step 1 --no-tta   # same peak memory, 44x fewer forwards

Peak memory does not depend on ``--step`` or TTA (the passes of one window are made one after
another on patch-sized tensors); run time is proportional to windows x passes.

Measured (2-core CPU, torch 2.13): N = 600, ``--step 1 --no-tta`` (80 windows): peak RSS 4.42 GiB
(during the sliding window: input 0.5 + float32 accumulator 1.6 + one U-Net forward ~2 GiB;
the export afterwards peaks at ~3.8 GiB), wall 31.5 min, ~22 s per 128^3 forward. The default
``--step 0.5`` with TTA makes 441 windows x 8 passes: ~22 h on 2 cores, same peak memory
(checked at N = 128 with ``--tiny-network``: 1.35 GB without TTA at step 1, 1.36 GB with TTA at step 0.5).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoseg.datasets.layout import DatasetInfo, save_dataset_info  # noqa: E402
from autoseg.io.images import Geometry, write_image  # noqa: E402
from autoseg.io.json_io import save_json  # noqa: E402
from autoseg.networks.builder import build_network  # noqa: E402
from autoseg.planners.planner import plan_configuration  # noqa: E402
from autoseg.planners.plans import ChannelNormalization, Plans  # noqa: E402
from autoseg.model.checkpoint import save_checkpoint  # noqa: E402
from autoseg.model.training_config import TrainingConfig  # noqa: E402

DATASET = "Dataset900_MemBench"
LABELS = {"background": 0, "liver": 1, "tumor": 2}
SPACING_ZYX = (1.0, 0.7, 0.7)


def synthetic_ct(n_slices: int, seed: int = 0) -> tuple[np.ndarray, Geometry]:
    try:
        from autoseg.datasets.synthetic import make_case
        img, _, geom = make_case((n_slices, 512, 512), SPACING_ZYX, np.random.default_rng(seed), flip_direction=True,
                                 origin_xyz=(-180.0, -200.0, 40.0))
        return img, geom
    except ImportError:  # fallback: noise around soft tissue inside a cylinder
        rng = np.random.default_rng(seed)
        img = np.full((n_slices, 512, 512), -1000, np.int16)
        yy, xx = np.mgrid[-256:256, -256:256]
        body = yy ** 2 / 200 ** 2 + xx ** 2 / 240 ** 2 < 1
        for z in range(n_slices):
            img[z][body] = (rng.normal(50, 20, int(body.sum()))).astype(np.int16)
        return img, Geometry([n_slices, 512, 512], list(SPACING_ZYX))


def make_model(results: Path, tiny_network: bool) -> list[int]:
    norm = [ChannelNormalization("ct", mean=99.0, std=39.0, lower=-17.0, upper=201.0)]
    cfg = plan_configuration("3d_fullres", [1.0, 0.77, 0.77], [432, 512, 512], 432 * 512 * 512 * 100.0, 3, 8.0, norm,
                             "bench_3d_fullres", True)
    if tiny_network:
        cfg.topology.features_per_stage = [max(2, f // 8) for f in cfg.topology.features_per_stage]
    plans = Plans(dataset_name=DATASET, plans_name="bench", gpu_memory_gb=8.0, transpose_forward=[0, 1, 2],
                  transpose_backward=[0, 1, 2], original_median_spacing_mm=list(SPACING_ZYX),
                  original_median_shape_vox=[432, 512, 512], num_input_channels=1, labels=dict(LABELS),
                  configurations={"3d_fullres": cfg})
    cdir = results / DATASET / "3d_fullres"
    cdir.mkdir(parents=True)
    plans.save(cdir / "plans.json")
    save_dataset_info(DatasetInfo(name="MemBench", channel_names={"0": "CT"}, labels=dict(LABELS), numTraining=1), cdir)
    torch.manual_seed(0)
    net = build_network("unet", cfg.topology, 1, 3)
    save_checkpoint(cdir / "fold_0" / "checkpoint_final.pth", net.state_dict(), {"epoch": 0, "fold": "0", "network": "unet"})
    tc = TrainingConfig(dataset=DATASET, configuration="3d_fullres", fold="0", num_input_channels=1, num_classes=3)
    save_json(asdict(tc), cdir / "fold_0" / "training.json")
    return list(cfg.patch_size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=600, help="N: slices of the 512 x 512 x N CT (default 600)")
    ap.add_argument("--step", type=float, default=0.5)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiny-network", action="store_true", help="features / 8: same pipeline memory, much faster forwards")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more 'autoseg predict' options")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="autoseg_membench_") as tmp:
        root = Path(tmp)
        t0 = time.time()
        img, geom = synthetic_ct(a.slices)
        write_image(img, geom, root / "in" / "ct_0000.nii.gz")
        del img
        patch = make_model(root / "results", a.tiny_network)
        print(f"input 512 x 512 x {a.slices} written in {time.time() - t0:.0f} s; model patch {patch}", flush=True)
        cmd = [sys.executable, "-m", "autoseg", "predict", "-i", str(root / "in"), "-o", str(root / "out"), "-d", DATASET,
               "--device", a.device, "--step", str(a.step), "--export-threads", "1"] + (["--no-tta"] if a.no_tta else []) + a.extra
        env = dict(os.environ, AUTOSEG_RESULTS=str(root / "results"), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        t1 = time.time()
        rc = subprocess.run(cmd, env=env).returncode
        wall = time.time() - t1
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # Linux: KiB
    print(f"slices {a.slices}, step {a.step}, tta {not a.no_tta}, tiny network {a.tiny_network}, device {a.device}, "
          f"threads {torch.get_num_threads()}: exit {rc}, wall {wall:.0f} s, peak RSS {peak_gb:.2f} GB (target <= 8 GB)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
