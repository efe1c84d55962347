"""What the GPU check's parts share (``benchmarks/gpu_check.py``): the LiTS-sized plan, the
setup, a result row, CUDA timing helpers, and autoseg's training step timed on synthetic batches
(used by the training check and by each DDP rank)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

LABELS = {"background": 0, "liver": 1, "tumor": 2}
DATASET = "Dataset901_GpuCheck"
CASE_SPACING_ZYX = (1.0, 0.7, 0.7)
TARGET_PREDICT_S = 20.0
NNUNET_SPEED_RATIO = 0.97  # autoseg it/s at least this fraction of nnU-Net's counts as met (timing noise)


@dataclass
class Row:
    check: str
    result: str
    goal: str = ""
    status: str = "ok"  # ok, MISS, FAIL, skip, info


@dataclass
class Setup:
    """What every check uses: the device, the plan and the sizes (tiny ones for --cpu-smoke)."""

    device: torch.device
    smoke: bool
    cfg: object  # ConfigurationPlan
    case_shape: tuple[int, int, int]  # the synthetic CT, z y x
    oom_shape: tuple[int, int, int]  # the OOM check's (already preprocessed) volume
    train_seconds: float
    warmup: int


def lits_plan(smoke: bool):
    """The 3d_fullres configuration the planner gives a LiTS-sized dataset (tiny for --cpu-smoke)."""
    from autoseg.planners.planner import plan_configuration
    from autoseg.planners.plans import ChannelNormalization

    norm = [ChannelNormalization("ct", mean=99.0, std=39.0, lower=-17.0, upper=201.0)]
    median = [16, 32, 32] if smoke else [432, 512, 512]
    cfg = plan_configuration("3d_fullres", [1.0, 0.77, 0.77], median, float(np.prod(median)) * 131, len(LABELS), 8.0,
                             norm, "gpu_check_3d_fullres", True)
    if smoke:
        cfg.topology.features_per_stage = [max(2, f // 8) for f in cfg.topology.features_per_stage]
        cfg.batch_size = 2
    return cfg


def make_setup(a: argparse.Namespace) -> Setup:
    smoke = a.cpu_smoke
    if smoke:
        torch.set_num_threads(1)  # tiny tensors: more threads only contend (and the smoke run's processes run side by side)
    return Setup(device=torch.device("cpu" if smoke else "cuda"), smoke=smoke, cfg=lits_plan(smoke),
                 case_shape=(16, 40, 40) if smoke else (300, 512, 512),
                 oom_shape=(24, 48, 48) if smoke else (600, 512, 512),
                 train_seconds=0.2 if smoke else a.train_seconds, warmup=1 if smoke else 10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else 0.0


def synthetic_batch(batch: int, patch, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random image and a target with a liver-like box and a tumour inside, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, *patch, generator=g)
    y = torch.zeros(batch, 1, *patch, dtype=torch.long)
    lo, hi = [p // 4 for p in patch], [3 * p // 4 for p in patch]
    y[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    y[:, :, patch[0] // 2 - 4:patch[0] // 2 + 4, patch[1] // 2 - 4:patch[1] // 2 + 4, patch[2] // 2 - 4:patch[2] // 2 + 4] = 2
    return x.to(device), y.to(device)


def train_iterations_per_s(net: torch.nn.Module, s: Setup, dev: torch.device, batch: int, seconds: float,
                           warmup: int) -> tuple[float, float, float]:
    """(it/s, peak GPU GB, last loss) of autoseg's training step (AMP, deep supervision, Dice+CE, SGD, clipping).

    Under a process group the batch-Dice counts are gathered over the ranks, as ``autoseg train`` does.
    """
    from autoseg.networks.precision import amp_dtype, autocast, enable_cudnn_benchmark, make_grad_scaler
    from autoseg.trainers.augmentation import deep_supervision_scales
    from autoseg.trainers.losses import build_loss, downsample_targets

    cfg = s.cfg
    enable_cudnn_benchmark(dev)
    dtype = amp_dtype(dev.type, "auto" if not s.smoke else "off")
    scaler = make_grad_scaler(dev.type, dtype)
    n_heads = cfg.topology.n_stages - 1
    loss_fn = build_loss("dice_ce", len(LABELS), cfg.batch_dice, None, n_heads)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    x, y = synthetic_batch(batch, cfg.patch_size, dev)
    targets = downsample_targets(y, deep_supervision_scales(cfg.topology.strides, n_heads))
    net.train()

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast(dev.type, dtype):
            out = net(x)
        loss = loss_fn([o.float() for o in out], targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            opt.step()
        return loss

    for _ in range(warmup):
        step()
    _sync(dev)
    _reset_peak(dev)
    n, t0 = 0, time.perf_counter()
    while True:
        loss = step()
        n += 1
        if n % 5 == 0 or s.smoke:
            _sync(dev)
            if time.perf_counter() - t0 >= seconds:
                break
    _sync(dev)
    return n / (time.perf_counter() - t0), _peak_gb(dev), float(loss.detach())
