"""GPU check: autoseg's CUDA paths on one machine in under 8 minutes, as one table.

    python benchmarks/gpu_check.py [--budget-s 450] [--json gpu_check.json]

Without a CUDA GPU it prints one line saying so and exits 0. On a CUDA machine it checks:

1. **Training speed**: AMP iterations/s (bf16 on compute capability 8.0+, else float16 with a
   GradScaler, as ``autoseg train`` chooses) of the 3d_fullres U-Net that the planner gives a
   LiTS-sized dataset (spacing 1.0 x 0.77 x 0.77 mm, median 432 x 512 x 512, 131 cases, 3 labels:
   patch 128^3, batch 2, 6 stages 32..320), with deep supervision, Dice + CE (batch Dice) and
   SGD, on GPU-resident synthetic batches (the data loader is not part of it). When
   ``dynamic_network_architectures`` (nnU-Net v2's network package) is importable, nnU-Net v2's
   PlainConvUNet for the same plan runs through the same loop as the reference (goal: autoseg
   >= nnU-Net v2).
2. **Prediction** of a synthetic 512 x 512 x 300 CT (0.7 x 0.7 x 1.0 mm) with 1 fold and mirroring
   (8 passes), step 0.5: the sliding window alone on the resampled volume (time, forwards/s,
   peak GPU memory), then ``predict_cases`` from the NIfTI file to the written mask (time, peak
   GPU memory) and the ``autoseg predict`` command in a fresh process (wall time). Goal: < 20 s.
3. **Out-of-memory fallback**: in a child process, a 600 x 512 x 512 volume (a 1.9 GB float32
   accumulator) is predicted once freely, then again under
   ``torch.cuda.set_per_process_memory_fraction`` set to one forward pass plus half the
   accumulator: the run must fall back to a CPU accumulator (warning logged) and give the same
   probabilities.
4. **DDP**: with 2+ GPUs, 2 processes (NCCL, via ``autoseg.trainers.distributed.context``) train
   the same network with 1 patch each (global batch 2, batch Dice gathered over ranks): it/s,
   and the weights must be identical on both ranks afterwards.

Each check reports a row (``ok``, ``MISS`` for a speed goal not met, ``FAIL`` for an error or a wrong
result, ``skip``); the exit status is 1 when a row is ``FAIL``. Checks that would start after
``--budget-s`` seconds are skipped. ``--cpu-smoke`` runs the same code on the CPU with a tiny plan
(the test suite uses it; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_common import (CASE_SPACING_ZYX, DATASET, LABELS, NNUNET_SPEED_RATIO, REPO, TARGET_PREDICT_S, Row,  # noqa: E402
                         Setup, _peak_gb, _reset_peak, _sync, make_setup, train_iterations_per_s)
from _gpu_memory_ddp import check_ddp, check_oom_fallback, oom_child  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


# -- 0. the machine ------------------------------------------------------------------------------

def check_environment(s: Setup, a: argparse.Namespace) -> list[Row]:
    from autoseg.networks.precision import amp_dtype

    dtype = amp_dtype(s.device.type, "auto")
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler", None: "float32"}[dtype]
    topo = s.cfg.topology
    plan = (f"patch {s.cfg.patch_size}, batch {s.cfg.batch_size}, {topo.n_stages} stages "
            f"{topo.features_per_stage[0]}..{topo.features_per_stage[-1]}, batch Dice {s.cfg.batch_dice}")
    if s.device.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        gpu = (f"{p.name}, cc {p.major}.{p.minor}, {p.total_memory / 1024**3:.0f} GiB, {torch.cuda.device_count()} GPU(s); "
               f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        gpu = f"CPU smoke run; torch {torch.__version__}"
    return [Row("machine", gpu, status="info"), Row("AMP chosen", amp, status="info"), Row("LiTS-sized plan", plan, status="info")]


# -- 1. training speed ---------------------------------------------------------------------------

def _nnunet_network(topo, in_ch: int, num_classes: int):
    """nnU-Net v2's PlainConvUNet for the same topology, or None when its package is not installed."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError:
        return None
    return PlainConvUNet(in_ch, topo.n_stages, topo.features_per_stage, torch.nn.Conv3d, topo.kernel_sizes, topo.strides,
                         topo.n_conv_per_stage_encoder, num_classes, topo.n_conv_per_stage_decoder, conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def check_training(s: Setup, a: argparse.Namespace) -> list[Row]:
    from autoseg.networks.builder import build_network

    cfg = s.cfg
    torch.manual_seed(0)
    ours = build_network("unet", cfg.topology, 1, len(LABELS), deep_supervision=True).to(s.device)
    it_s, peak, loss = train_iterations_per_s(ours, s, s.device, cfg.batch_size, s.train_seconds, s.warmup)
    del ours
    row = Row("train it/s (autoseg U-Net)", f"{it_s:.2f} it/s ({250 / it_s:.0f} s per 250-iteration epoch), "
              f"peak {peak:.1f} GB, loss {loss:.3f}", ">= nnU-Net v2 (not installed here: pip install dynamic-network-architectures)")
    rows = [row]
    try:
        ref_net = None if s.smoke else _nnunet_network(cfg.topology, 1, len(LABELS))
        if ref_net is None:
            return rows
        ref_it_s, ref_peak, _ = train_iterations_per_s(ref_net.to(s.device), s, s.device, cfg.batch_size, s.train_seconds,
                                                       s.warmup)
    except Exception as e:  # a reference that does not build or run must not hide autoseg's figure
        rows.append(Row("train it/s (nnU-Net v2 PlainConvUNet)", f"{type(e).__name__}: {str(e)[:200]}", status="skip"))
        return rows
    row.goal = f">= nnU-Net v2: {ref_it_s:.2f} it/s (ratio {it_s / ref_it_s:.2f})"
    row.status = "ok" if it_s >= NNUNET_SPEED_RATIO * ref_it_s else "MISS"
    rows.append(Row("train it/s (nnU-Net v2 PlainConvUNet)", f"{ref_it_s:.2f} it/s, peak {ref_peak:.1f} GB", status="info"))
    return rows


# -- 2. prediction -------------------------------------------------------------------------------

def write_fake_model(results: Path, cfg) -> None:
    """A 1-fold 'trained' model folder for ``cfg`` (untrained weights: speed does not depend on them)."""
    from autoseg.datasets.layout import DatasetInfo, save_dataset_info
    from autoseg.io.json_io import save_json
    from autoseg.networks.builder import build_network
    from autoseg.planners.plans import Plans
    from autoseg.model.checkpoint import save_checkpoint
    from autoseg.model.training_config import TrainingConfig

    folder = results / DATASET / "3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    Plans(dataset_name=DATASET, plans_name="gpu_check", gpu_memory_gb=8.0, transpose_forward=[0, 1, 2],
          transpose_backward=[0, 1, 2], original_median_spacing_mm=list(cfg.spacing_mm), original_median_shape_vox=list(cfg.median_shape_vox),
          num_input_channels=1, labels=dict(LABELS), configurations={"3d_fullres": cfg}).save(folder / "plans.json")
    save_dataset_info(DatasetInfo(name="GpuCheck", channel_names={"0": "CT"}, labels=dict(LABELS), numTraining=1), folder)
    torch.manual_seed(0)
    weights = build_network("unet", cfg.topology, 1, len(LABELS)).state_dict()
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pth", weights, {"epoch": 0, "fold": "0", "network": "unet"})
    training = TrainingConfig(dataset=DATASET, configuration="3d_fullres", fold="0", num_input_channels=1,
                              num_classes=len(LABELS))
    save_json(asdict(training), folder / "fold_0" / "training.json")


def _resampled_shape(shape, spacing, target) -> list[int]:
    return [int(round(n * sp / t)) for n, sp, t in zip(shape, spacing, target)]


def _sliding_window_row(s: Setup, amp: str) -> Row:
    """(a) the sliding window alone on the resampled volume: windows per second and peak memory."""
    from autoseg.inference.sliding_window import SlidingWindowSettings, predict_sliding_window, window_grid
    from autoseg.networks.builder import build_network

    cfg, dev = s.cfg, s.device
    torch.manual_seed(0)
    net = build_network("unet", cfg.topology, 1, len(LABELS), deep_supervision=False).to(dev).eval()
    shape = _resampled_shape(s.case_shape, CASE_SPACING_ZYX, cfg.spacing_mm)
    settings = SlidingWindowSettings(patch_size=cfg.patch_size, step=0.5, mirror=True, device=str(dev), amp=amp)
    predict_sliding_window([net], torch.zeros(1, *cfg.patch_size), len(LABELS), settings)  # warm-up: cuDNN autotuning
    data = torch.randn(1, *shape)
    _sync(dev)
    _reset_peak(dev)
    t0 = time.perf_counter()
    probs = predict_sliding_window([net], data, len(LABELS), settings)
    _sync(dev)
    t_sw = time.perf_counter() - t0
    n_windows = len(window_grid(shape, cfg.patch_size, 0.5)[1])
    ok = bool(torch.isfinite(probs).all()) and probs.shape[1:] == tuple(shape)
    return Row("predict: sliding window only",
               f"{shape} -> {n_windows} windows x 8 passes in {t_sw:.1f} s ({n_windows * 8 / t_sw:.0f} forwards/s), "
               f"peak {_peak_gb(dev):.2f} GB", "", "ok" if ok else "FAIL")


def check_prediction(s: Setup, a: argparse.Namespace) -> list[Row]:
    from autoseg.datasets.synthetic import make_case
    from autoseg.inference.inputs import InputCase
    from autoseg.model.trained import TrainedModel
    from autoseg.inference.predictor import PredictOptions, predict_cases
    from autoseg.io.images import write_image

    cfg, dev = s.cfg, s.device
    amp = "off" if s.smoke else "auto"
    rows = [_sliding_window_row(s, amp)]
    # (b) the case from its file to the written mask, in this process; (c) the command in a fresh process
    with tempfile.TemporaryDirectory(prefix="autoseg_gpu_check_") as tmp:
        root = Path(tmp)
        img, _, geom = make_case(s.case_shape, CASE_SPACING_ZYX, np.random.default_rng(0), flip_direction=True,
                                 origin_xyz=(-180.0, -200.0, 40.0))
        write_image(img, geom, root / "in" / "ct_0000.nii")
        del img
        write_fake_model(root / "results", cfg)
        model = TrainedModel(root / "results" / DATASET, "3d_fullres", folds=["0"])
        options = PredictOptions(device=str(dev), amp=amp, postprocess=False, overwrite=True, num_export_workers=2)
        case = InputCase("ct", [root / "in" / "ct_0000.nii"], "ct.nii.gz")
        _reset_peak(dev)
        t0 = time.perf_counter()
        summary = predict_cases(model, [case], root / "out", options)
        _sync(dev)
        t_case = time.perf_counter() - t0
        ok = summary.predicted == ["ct"] and any((root / "out").glob("ct.nii*"))
        status = "FAIL" if not ok else ("ok" if t_case < TARGET_PREDICT_S or s.smoke else "MISS")
        rows.append(Row("predict: 512x512x300 CT, 1 fold + mirroring",
                        f"{t_case:.1f} s file to mask (model load included), peak {_peak_gb(dev):.2f} GB", f"< {TARGET_PREDICT_S:.0f} s",
                        status))
        env = dict(os.environ, AUTOSEG_RESULTS=str(root / "results"), PYTHONPATH=str(REPO))
        if s.smoke:
            env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "autoseg", "predict", "-i", str(root / "in"), "-o", str(root / "out_cli"), "-d", DATASET,
               "-c", "3d_fullres", "-f", "0", "--device", dev.type, "--amp", amp, "--export-threads", "2", "--no-postprocessing"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(60.0, a.budget_s))
        t_cli = time.perf_counter() - t0
        ok = r.returncode == 0 and any((root / "out_cli").glob("ct.nii*"))
        status = "FAIL" if not ok else ("ok" if t_cli < TARGET_PREDICT_S or s.smoke else "MISS")
        rows.append(Row("predict: 'autoseg predict' command", f"{t_cli:.1f} s wall (fresh process: imports, CUDA, model load)"
                        + ("" if ok else f"; exit {r.returncode}: {r.stderr.strip()[-300:]}"), f"< {TARGET_PREDICT_S:.0f} s", status))
    return rows


# -- the table -----------------------------------------------------------------------------------

CHECKS = (("machine", check_environment), ("training", check_training), ("prediction", check_prediction),
          ("OOM fallback", check_oom_fallback), ("DDP", check_ddp))


def print_table(rows: list[Row]) -> None:
    w_check = max(len(r.check) for r in rows)
    w_status = max(len(r.status) for r in rows)
    print()
    print(f"{'check':<{w_check}}  {'status':<{w_status}}  result [goal]")
    print("-" * (w_check + w_status + 60))
    for r in rows:
        print(f"{r.check:<{w_check}}  {r.status:<{w_status}}  {r.result}" + (f"  [{r.goal}]" if r.goal else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=450.0, help="start no check after this many seconds (default 450)")
    ap.add_argument("--train-seconds", type=float, default=30.0, help="timed training per network (default 30)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--cpu-smoke", action="store_true", help="run every check on the CPU with a tiny plan (tests only)")
    ap.add_argument("--oom-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.oom_child:
        return oom_child(a)
    if not a.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing to check on this machine")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    s = make_setup(a)
    start, rows = time.monotonic(), []
    for name, check in CHECKS:
        if time.monotonic() - start > a.budget_s:
            rows.append(Row(name, f"not run: the {a.budget_s:.0f} s budget is spent", status="skip"))
            continue
        t0 = time.monotonic()
        print(f"gpu_check: {name} ...", flush=True)
        try:
            rows += check(s, a)
        except Exception as e:  # one failing check must not hide the others
            traceback.print_exc()
            rows.append(Row(name, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", status="FAIL"))
        print(f"gpu_check: {name} done in {time.monotonic() - t0:.0f} s", flush=True)
    rows.append(Row("total", f"{time.monotonic() - start:.0f} s", "< 480 s", "ok" if time.monotonic() - start < 480 else "MISS"))
    print_table(rows)
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
