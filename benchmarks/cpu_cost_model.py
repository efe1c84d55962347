"""Measure the CPU cost model's constant: seconds per GFLOP of a real training iteration.

Times training iterations of a few U-Net topologies (3D and 2D, several widths and patches)
with the trainer's own pieces: the network builder, nnU-Net's augmentation in a background
loader process (the trainer's default worker count), Dice+CE with deep supervision, SGD with
gradient clipping, autocast as ``--amp auto`` picks it. The batches come from a fixed random
volume with blob labels (no disk reads). Then it fits

    seconds/iteration = S_PER_GFLOP x GFLOP/iteration + S_PER_MVOX x Mvoxels/iteration + S_OVERHEAD

(GFLOP from :func:`autoseg.planners.cost_model.train_gflop`, Mvoxels = batch x patch voxels / 1e6)
by least squares (and, for comparison, the FLOPs-only line) and
prints each topology's measured and predicted s/iteration. Copy the constants into
``autoseg/planners/cost_model.py``. Takes ~3 min on 2 cores; run it nice'd, on an idle machine:

    nice -n 10 python3 benchmarks/cpu_cost_model.py            # all topologies
    nice -n 10 python3 benchmarks/cpu_cost_model.py --iters 2  # quicker, noisier

Shared machines: the fit uses CPU time (this process and its loader worker) divided by the cores,
not wall time, so other users' load does not inflate it; OpenMP threads are told to wait
passively (``OMP_WAIT_POLICY=PASSIVE``), else their spinning while descheduled counts as work.
On an idle machine wall and CPU/cores agree closely; both are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see "Shared machines" above
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoseg.networks.builder import build_network  # noqa: E402
from autoseg.networks.precision import amp_dtype, autocast  # noqa: E402
from autoseg.planners import cost_model  # noqa: E402
from autoseg.planners.topology import make_topology  # noqa: E402
from autoseg.trainers.augmentation import (build_train_transforms_from_settings, deep_supervision_scales,  # noqa: E402
                                           default_augmentation_settings)
from autoseg.trainers.loader import BackgroundLoader  # noqa: E402
from autoseg.trainers.losses import build_loss  # noqa: E402

NUM_CLASSES = 3
# (name, spacing mm, patch, base features, batch): spans the widths and patch sizes the CPU planner picks
TOPOLOGIES = [
    ("3d 16x64x64 f8", [2.0, 2.0, 2.0], [16, 64, 64], 8, 2),
    ("3d 32x64x64 f8", [2.0, 2.0, 2.0], [32, 64, 64], 8, 2),
    ("3d 24x96x96 f8", [4.0, 2.0, 2.0], [24, 96, 96], 8, 2),
    ("3d 16x64x64 f16", [2.0, 2.0, 2.0], [16, 64, 64], 16, 2),
    ("3d 32x32x32 f32", [2.0, 2.0, 2.0], [32, 32, 32], 32, 2),
    ("2d 192x192 f8 b4", [2.0, 2.0], [192, 192], 8, 4),
    ("2d 128x128 f16 b8", [2.0, 2.0], [128, 128], 16, 8),
    ("3d 32x96x96 f8", [4.4, 2.62, 2.62], [32, 96, 96], 8, 2),  # the demo's plan with the FLOPs-only model
]

class RandomBlobBatches:
    """A fixed random batch (data ~ N(0,1) plus bright blobs labelled 1 and 2) of the sampled size."""

    def __init__(self, sampled_size: list[int], batch_size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        shape = (batch_size, 1, *sampled_size)
        self.data = rng.standard_normal(shape, dtype=np.float32)
        grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in sampled_size], indexing="ij")
        r2 = sum(g * g for g in grids)
        self.target = np.zeros(shape, np.int8)
        self.target[:, 0][:, r2 < 0.4] = 1
        self.target[:, 0][:, r2 < 0.05] = 2
        self.data += self.target

    def next_batch(self) -> dict:
        return {"data": self.data.copy(), "target": self.target.copy(), "keys": ["x"] * len(self.data)}


def _factory(sampled_size, batch_size, seed=0):
    return RandomBlobBatches(sampled_size, batch_size, seed)


def _children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process' live children (the loader workers)."""
    tick, total, me = os.sysconf("SC_CLK_TCK"), 0.0, os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def time_topology(spacing, patch, base, batch, iters: int, warmup: int = 2) -> tuple[float, float, float, list[int]]:
    """(wall s/iteration, CPU s/iteration over all processes / cores, GFLOP/iteration, padded patch).

    Wall: the median over ``iters`` timed iterations. CPU: the CPU time of this process and its
    loader workers during the timed iterations, divided by the iterations and by the cores: what
    an iteration takes when it has the machine to itself (the machine may be shared).
    """
    import functools
    topo, patch, _ = make_topology(spacing, patch, base_features=base)
    net = build_network("unet", topo, 1, NUM_CLASSES, deep_supervision=True)
    n_heads = topo.n_stages - 1
    ds = deep_supervision_scales(topo.strides, n_heads)
    loss_fn = build_loss("dice_ce", NUM_CLASSES, False, None, n_heads)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, weight_decay=3e-5, nesterov=True)
    aug = default_augmentation_settings(patch)
    dtype = amp_dtype("cpu", "auto")
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))  # the trainer's default
    loader = BackgroundLoader(functools.partial(_factory, aug.initial_patch_size, batch),
                              build_train_transforms_from_settings(aug, ds), workers, seed=1)
    times, cpu0 = [], 0.0
    with loader:
        for i in range(warmup + iters):
            if i == warmup:
                cpu0 = time.process_time() + _children_cpu_s()
            t0 = time.perf_counter()
            b = next(loader)
            opt.zero_grad(set_to_none=True)
            with autocast("cpu", dtype):
                out = net(b["data"])
            loss = loss_fn([o.float() for o in out], b["target"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
            loss.item()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        cpu = (time.process_time() + _children_cpu_s() - cpu0) / iters / (os.cpu_count() or 1)
    return float(np.median(times)), cpu, batch * cost_model.train_gflop(topo, patch, 1, NUM_CLASSES), patch


def _fit(columns: list[np.ndarray], s: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of s = sum(coef x column)."""
    return np.linalg.lstsq(np.stack(columns, 1), s, rcond=None)[0]


def _report(label: str, names: list[str], g: np.ndarray, v: np.ndarray, s: np.ndarray, with_voxels: bool) -> None:
    """Fit s = a GFLOP (+ b Mvox) + c and print measured against predicted per topology."""
    columns, terms = [g, np.ones_like(g)], ["s/GFLOP x GFLOP/it", "s"]
    if with_voxels:
        columns.insert(1, v)
        terms.insert(1, "s/Mvox x Mvox/it")
    coef = _fit(columns, s)
    pred = np.stack(columns, 1) @ coef
    print(f"\n{label}: s/it = " + " + ".join(f"{c:.4f} {t}" for c, t in zip(coef, terms)))
    print(f"  {'topology':<20}{'GFLOP/it':>10}{'Mvox/it':>9}{'measured':>10}{'predicted':>11}{'error':>8}")
    for name, gi, vi, si, p in zip(names, g, v, s, pred):
        print(f"  {name:<20}{gi:>10.1f}{vi:>9.3f}{si:>10.2f}{p:>11.2f}{(p / si - 1) * 100:>7.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per topology (after 2 warm-up ones)")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"autocast {amp_dtype('cpu', 'auto')}, load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    t_start = time.time()
    for name, sp, patch, base, batch in TOPOLOGIES:
        wall, cpu, g, padded = time_topology(sp, patch, base, batch, a.iters)
        rows.append((name, g, batch * float(np.prod(padded)) / 1e6, wall, cpu))
        print(f"  {name:<20} patch {padded}, batch {batch}: {g:6.1f} GFLOP/it, wall {wall:6.2f} s/it, "
              f"CPU/cores {cpu:6.2f} s/it", flush=True)
    names = [r[0] for r in rows]
    g, v = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    for label, col in (("CPU time / cores (idle-machine estimate)", 4), ("wall time (as measured, shared machine)", 3)):
        s = np.array([r[col] for r in rows])
        _report(label + ", FLOPs only", names, g, v, s, False)
        _report(label, names, g, v, s, True)
    print(f"\n{time.time() - t_start:.0f} s in all; load average after: {os.getloadavg()[0]:.2f}")
    print(f"planner constants now: S_PER_GFLOP = {cost_model.S_PER_GFLOP}, S_PER_MVOX = {cost_model.S_PER_MVOX}, "
          f"S_OVERHEAD = {cost_model.S_OVERHEAD}")


if __name__ == "__main__":
    main()
