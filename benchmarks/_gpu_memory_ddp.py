"""The GPU check's out-of-memory fallback (in a child process, so the memory cap stays there) and
its two-process DDP check; run by ``benchmarks/gpu_check.py``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _gpu_common import LABELS, REPO, Row, Setup, _peak_gb, _reset_peak, _sync, make_setup, train_iterations_per_s

GPU_CHECK = Path(__file__).resolve().with_name("gpu_check.py")


# -- 3. out-of-memory fallback (child process: the memory cap stays there) ----------------------

class _OomOnce(torch.nn.Module):
    """--cpu-smoke only: raises the out-of-memory error once (a CPU cannot be capped)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.fired = inner, False

    def forward(self, x):
        if not self.fired:
            self.fired = True
            from autoseg.inference.sliding_window import out_of_memory_error
            raise out_of_memory_error()("CUDA out of memory (simulated by --cpu-smoke)")
        return self.inner(x)


def oom_child(a: argparse.Namespace) -> int:
    """Predict freely, then under a memory cap; print one JSON line with what happened."""
    import autoseg.inference.sliding_window as sw
    from autoseg.inference.sliding_window import SlidingWindowSettings, predict_sliding_window
    from autoseg.networks.builder import build_network
    from autoseg.networks.precision import amp_dtype, autocast, enable_cudnn_benchmark

    s = make_setup(a)
    cfg, dev = s.cfg, s.device
    torch.manual_seed(0)
    net = build_network("unet", cfg.topology, 1, len(LABELS), deep_supervision=False).to(dev).eval()
    settings = SlidingWindowSettings(patch_size=cfg.patch_size, step=1.0, mirror=False, device=str(dev),
                                     amp="off" if s.smoke else "auto")
    data = torch.randn(1, *s.oom_shape)
    acc_bytes = 4 * len(LABELS) * int(np.prod(s.oom_shape))
    enable_cudnn_benchmark(dev)
    ref = predict_sliding_window([net], data, len(LABELS), settings)  # free run; cuDNN has tuned its algorithms after it
    with torch.inference_mode(), autocast(dev.type, amp_dtype(dev.type, settings.amp)):  # one forward's peak, weights included
        x = torch.zeros(1, 1, *cfg.patch_size, device=dev)
        _sync(dev)
        _reset_peak(dev)
        net(x)
        _sync(dev)
    fwd_peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    del x
    messages: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logging.getLogger(sw.__name__).addHandler(Grab())
    cap_gb = float("nan")
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        cap = int(1.15 * fwd_peak) + acc_bytes // 2  # the accumulator plus a forward cannot fit, a forward alone can
        cap_gb = cap / 1024**3
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), dev)
        torch.cuda.reset_peak_memory_stats(dev)
        nets = [net]
    else:
        sw.accumulator_devices = lambda d: [d, torch.device("cpu")]
        nets = [_OomOnce(net)]
    t0 = time.perf_counter()
    out = predict_sliding_window(nets, data, len(LABELS), settings)
    seconds = time.perf_counter() - t0
    result = {
        "fell_back": any("CPU memory" in m for m in messages),
        "max_abs_diff": float((out.float() - ref.float()).abs().max()),
        "argmax_agreement": float((out.argmax(0) == ref.argmax(0)).float().mean()),
        "seconds": seconds,
        "cap_gb": cap_gb,
        "forward_peak_gb": fwd_peak / 1024**3,
        "accumulator_gb": acc_bytes / 1024**3,
        "peak_under_cap_gb": _peak_gb(dev),
    }
    print("OOM_CHILD " + json.dumps(result))
    return 0


def check_oom_fallback(s: Setup, a: argparse.Namespace) -> list[Row]:
    cmd = [sys.executable, str(GPU_CHECK), "--oom-child"] + (["--cpu-smoke"] if s.smoke else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, a.budget_s), env=dict(os.environ, PYTHONPATH=str(REPO)))
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("OOM_CHILD ")), None)
    if r.returncode != 0 or line is None:
        return [Row("OOM fallback (memory cap)", f"child exit {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}", status="FAIL")]
    res = json.loads(line.split(" ", 1)[1])
    same = res["max_abs_diff"] < 1e-2 and res["argmax_agreement"] > 0.999
    ok = res["fell_back"] and same
    text = (f"{list(s.oom_shape)} under a {res['cap_gb']:.2f} GB cap (1.15 x forward {res['forward_peak_gb']:.2f} GB + half the "
            f"{res['accumulator_gb']:.2f} GB accumulator): fell back {res['fell_back']}, {res['seconds']:.1f} s, "
            f"peak {res['peak_under_cap_gb']:.2f} GB, max |dp| {res['max_abs_diff']:.1e}, argmax agree {res['argmax_agreement']:.4f}")
    return [Row("OOM fallback (memory cap)", text, "falls back, same result", "ok" if ok else "FAIL")]


# -- 4. DDP, 2 processes -------------------------------------------------------------------------

def _ddp_worker(rank: int, world: int, port: int, a: argparse.Namespace, out_file: str) -> None:
    import torch.distributed as dist

    from autoseg.networks.builder import build_network
    from autoseg.trainers import distributed as dist_utils

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    s = make_setup(a)
    ctx = dist_utils.context(s.device.type)
    dev = torch.device("cuda", ctx.local_rank) if s.device.type == "cuda" else s.device
    try:
        torch.manual_seed(ctx.rank)  # different initial weights: DDP must broadcast rank 0's
        net = build_network("unet", s.cfg.topology, 1, len(LABELS), deep_supervision=True).to(dev)
        model = dist_utils.wrap(net, dev)
        batch, _ = dist_utils.rank_batch(s.cfg.batch_size, 0.33, ctx.rank, ctx.world_size)
        it_s, peak, loss = train_iterations_per_s(model, s, dev, batch, s.train_seconds, s.warmup)
        flat = torch.cat([p.detach().float().reshape(-1) for p in net.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        if ctx.is_main:
            Path(out_file).write_text(json.dumps({"it_s": it_s, "peak_gb": peak, "identical": same, "batch_per_rank": batch,
                                                  "backend": dist.get_backend(), "loss": loss}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_ddp(s: Setup, a: argparse.Namespace) -> list[Row]:
    import torch.multiprocessing as mp

    if not s.smoke and torch.cuda.device_count() < 2:
        return [Row("DDP 2 processes", f"skipped: {torch.cuda.device_count()} GPU visible", status="skip")]
    with tempfile.TemporaryDirectory(prefix="autoseg_gpu_check_ddp_") as tmp:
        out = Path(tmp) / "rank0.json"
        mp.spawn(_ddp_worker, args=(2, _free_port(), a, str(out)), nprocs=2, join=True)
        res = json.loads(out.read_text())
    text = (f"{res['backend']}, {res['batch_per_rank']} patch per rank: {res['it_s']:.2f} it/s, peak {res['peak_gb']:.1f} GB "
            f"per GPU, weights identical on both ranks: {res['identical']}")
    return [Row("DDP 2 processes", text, "identical weights", "ok" if res["identical"] else "FAIL")]
