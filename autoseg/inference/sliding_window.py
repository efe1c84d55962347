"""Sliding-window prediction with Gaussian blending, mirroring TTA and fold ensembling.

Arrays are (C, Z, Y, X) in the plan's *transposed* order (what the network sees). A 2D
configuration is predicted slice by slice along the first axis: its windows are
``[1, *patch_2d]`` and the network gets (B, C, Y, X) patches.

Method (nnU-Net v2's, restated):

* Windows: per axis, ``n = ceil((size - patch) / (step * patch)) + 1`` starts spread evenly
  from 0 to ``size - patch`` (the last one flush with the end). An image smaller than the
  patch is zero-padded (symmetrically) to the patch and cropped back afterwards.
* Blending: every window's prediction is weighted by a Gaussian importance map
  (sigma = patch / 8 per axis, maximum 1, zeros clipped to the smallest positive value). The
  map is a product of 1D Gaussians and the windows form a grid, so the per-voxel weight sum is
  the product of 1D sums: each window is added already divided by it, and no full-size
  weight map is ever allocated.
* Mirroring TTA: all 2^d flip combinations of the patch's spatial axes; each prediction is
  flipped back before averaging.
* Ensembling over networks (folds): ``mean`` averages *logits* over flips and networks
  (nnU-Net; softmax at the end); ``weighted`` averages per-network *softmax probabilities*
  with the given weights (normalised to sum 1), the seed reports' weighted ensemble.
* Accumulator: preallocated on the device; float32, or float16 when a float32 accumulator
  would exceed :data:`HALF_ACCUMULATOR_ABOVE_BYTES` (2 GiB). If the GPU runs out of memory
  the whole case is redone with the accumulator in CPU memory (the network stays on the GPU).
  The retry starts only after the failed attempt's exception, and with it every tensor its
  frames held (accumulator, window batch, logits), is gone and the CUDA cache is emptied;
  retrying inside the ``except`` block would keep them all alive through the traceback.
* On CUDA, cuDNN's autotuner is switched on (every window has the same shape).

The edge case that bites: a window's Gaussian has tiny but nonzero weights at its border;
clipping zeros keeps the weight sum positive everywhere, so no voxel is divided by 0.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from autoseg.errors import AutosegError
from autoseg.networks.precision import amp_dtype, autocast, enable_cudnn_benchmark

log = logging.getLogger(__name__)

HALF_ACCUMULATOR_ABOVE_BYTES = 2 * 1024**3
MIN_WINDOWS_FOR_BAR = 16  # a case with more windows shows a progress bar over them (big CT on a CPU: minutes to hours)
SIGMA_SCALE = 1.0 / 8
FORWARD_BATCH = 2  # patches per forward pass when mirroring (see mirrored_passes)
MAX_FORWARD_VOXELS = 1 << 21  # ... as long as they hold at most this many voxels together (memory cap)
CPU_WINDOW_BATCH = 2  # 3D windows per batch on a CPU (a batch of one takes PyTorch's slow convolution path)

Window = tuple[slice, slice, slice]


def gaussian_1d(n: int, sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """Float64 Gaussian of length ``n``: centre (n - 1) / 2, sigma = n * sigma_scale, maximum 1.

    The centre is symmetric (nnU-Net puts it at ``n // 2``), so a flipped window has the same
    weights. Zeros (none occur for sigma = n/8, the border value is exp(-8)) are clipped
    to the smallest positive value.
    """
    if n <= 1:
        return np.ones(max(n, 1))
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    g = np.exp(-0.5 * (x / (n * sigma_scale)) ** 2)
    g /= g.max()
    if (g <= 0).any():
        g[g <= 0] = g[g > 0].min()
    return g


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """The full importance map: outer product of :func:`gaussian_1d` per axis (maximum 1)."""
    out = np.ones([1] * len(patch_size))
    for a, n in enumerate(patch_size):
        shape = [1] * len(patch_size)
        shape[a] = int(n)
        out = out * gaussian_1d(int(n), sigma_scale).reshape(shape)
    return out


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """Start indices along one axis: first 0, last ``size - patch``, spacing <= ``step * patch``.

    ``size <= patch`` gives ``[0]`` (the caller pads). Duplicates (patch 1) are removed.
    Example: ``window_starts(10, 4, 0.5) == [0, 2, 4, 6]``.
    """
    if size <= patch:
        return [0]
    if not 0 < step <= 1:
        raise AutosegError(f"--step {step}: must be in (0, 1] (fraction of the patch size)")
    n = int(math.ceil((size - patch) / (patch * step))) + 1
    actual = (size - patch) / (n - 1)
    return sorted({int(round(actual * i)) for i in range(n)})


def window_grid(shape: Sequence[int], patch: Sequence[int], step: float) -> tuple[list[list[int]], list[Window]]:
    """Per-axis starts and every window (as slices), for a 3D ``shape`` at least ``patch``."""
    starts = [window_starts(int(s), int(p), step) for s, p in zip(shape, patch)]
    windows = [tuple(slice(s, s + int(p)) for s, p in zip(combo, patch))
               for combo in itertools.product(*starts)]
    return starts, windows  # type: ignore[return-value]


def mirror_combinations(dim: int, axes: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """All subsets of the ``dim`` spatial axes (0-based; only ``axes`` when given), identity first:
    2^dim (2^len(axes)) entries."""
    pool = range(dim) if axes is None else sorted(int(a) for a in axes)
    return [c for r in range(len(pool) + 1) for c in itertools.combinations(pool, r)]


def out_of_memory_error() -> type[Exception]:
    """``torch.OutOfMemoryError`` (torch 2.5+), else ``torch.cuda.OutOfMemoryError`` (the same class where both exist)."""
    err = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return err if err is not None else RuntimeError  # type: ignore[return-value]


def accumulator_devices(device: torch.device) -> list[torch.device]:
    """Where the accumulator is tried, in order: on the device, then (after running out of memory) in CPU memory."""
    return [device] if device.type == "cpu" else [device, torch.device("cpu")]


def new_accumulator(num_classes: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Zeroed (K, *shape) accumulator in :func:`accumulator_dtype` on ``device``."""
    return torch.zeros([num_classes] + list(shape), dtype=accumulator_dtype(num_classes, shape), device=device)


def accumulator_dtype(num_classes: int, shape: Sequence[int]) -> torch.dtype:
    """float32, or float16 when a float32 (K, *shape) accumulator would exceed 2 GiB."""
    nbytes = 4 * num_classes * int(np.prod(shape, dtype=np.int64))
    return torch.float16 if nbytes > HALF_ACCUMULATOR_ABOVE_BYTES else torch.float32


class PassHook(Protocol):
    """Receives every TTA/fold pass of each window batch (see :mod:`autoseg.inference.uncertainty`).

    Call order per case: ``begin`` once, then per window batch ``start_batch``, ``add_pass``
    once per (network, flip) in a fixed order, ``end_batch``; ``begin`` again if the case is
    redone on the CPU after a GPU out-of-memory.
    """

    def begin(self, shape: Sequence[int], valid: Window, n_passes: int, device: torch.device, dtype: torch.dtype) -> None: ...

    def start_batch(self) -> None: ...

    def add_pass(self, probs: torch.Tensor) -> None:
        """``probs``: (B, K, *window) softmax of one pass, flipped back, float32."""

    def end_batch(self, windows: Sequence[Window], weights: torch.Tensor) -> None:
        """``weights``: (B, *window), each window's blend weights (summing to 1 per voxel over windows)."""


@dataclass
class SlidingWindowSettings:
    """How to predict one volume. ``patch_size`` has 2 (2D) or 3 entries, transposed order."""

    patch_size: Sequence[int]
    step: float = 0.5
    mirror: bool = True
    mirror_axes: Sequence[int] | None = None  # the axes mirroring TTA flips (the plan's); None: all
    ensemble: str = "mean"
    weights: Sequence[float] | None = None
    batch_size: int = 1
    device: str = "cpu"
    amp: str | bool = "auto"
    sigmoid: bool = False  # region-based models: one sigmoid per output instead of a softmax over them

    @property
    def window(self) -> list[int]:
        """The window in the 3D volume: ``[1, *patch]`` for 2D configurations."""
        p = [int(v) for v in self.patch_size]
        return [1] + p if len(p) == 2 else p


class _BlendWeights:
    """Per-window blend weights ``g / sum_of_g``, computed from 1D factors (see module doc)."""

    def __init__(self, shape: Sequence[int], window: Sequence[int], starts: list[list[int]], device: torch.device):
        self.factors = []
        for size, p, axis_starts in zip(shape, window, starts):
            g = gaussian_1d(int(p))
            total = np.zeros(int(size))
            for s in axis_starts:
                total[s:s + int(p)] += g
            self.factors.append((torch.tensor(g, dtype=torch.float64), torch.tensor(total, dtype=torch.float64)))
        self.device = device

    def __call__(self, win: Window) -> torch.Tensor:
        out = None
        for a, (g, total) in enumerate(self.factors):
            f = (g / total[win[a]]).float().to(self.device)
            shape = [1, 1, 1]
            shape[a] = f.shape[0]
            out = f.reshape(shape) if out is None else out * f.reshape(shape)
        assert out is not None
        return out


def _batches(items: Sequence[Window], n: int) -> Iterator[Sequence[Window]]:
    for i in range(0, len(items), max(1, n)):
        yield items[i:i + max(1, n)]


def _autocast(device: torch.device, amp: str | bool):
    return autocast(device.type, amp_dtype(device.type, amp))


def normalized_weights(weights: Sequence[float] | None, n: int, what: str = "input") -> list[float]:
    """``weights`` scaled to sum 1 (None or empty: equal weights). Example: ``[3, 1] -> [0.75, 0.25]``."""
    if weights is None or len(weights) == 0:
        return [1.0 / n] * n
    w = [float(v) for v in weights]
    if len(w) != n:
        raise AutosegError(f"--weights: {len(w)} value(s) for {n} {what}(s); give one weight per {what}")
    if any(v < 0 for v in w) or sum(w) <= 0:
        raise AutosegError(f"--weights {w}: weights must be >= 0 with a positive sum")
    return [v / sum(w) for v in w]


def _ensemble_weights(settings: SlidingWindowSettings, n_networks: int) -> list[float]:
    if settings.ensemble == "mean":
        return [1.0 / n_networks] * n_networks
    if settings.ensemble != "weighted":
        raise AutosegError(f"--ensemble {settings.ensemble}: choose mean or weighted")
    if not settings.weights:
        raise AutosegError("--ensemble weighted: give --weights, one per fold (e.g. --weights 0.3 0.2 0.2 0.2 0.1)")
    return normalized_weights(settings.weights, n_networks, "fold model")


def _forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.float()


def mirrored_passes(net: nn.Module, x: torch.Tensor, flips: Sequence[tuple[int, ...]], device: torch.device,
                    amp: str | bool) -> Iterator[torch.Tensor]:
    """``net``'s logits for each flip of window batch ``x``, flipped back, in ``flips`` order.

    Flips go through the network in pairs (``FORWARD_BATCH``, when two fit ``MAX_FORWARD_VOXELS``):
    on a CPU, PyTorch runs a batch of one through a thin 3D network with its slow im2col convolution
    (``slow_conv3d``) instead of oneDNN, about 5x slower per window (demo plan: 0.68 s for one
    28x80x80 window alone, 0.12 s each in a batch of two, 0.18 s each in a batch of eight;
    benchmarks/cpu_window_batch.py, docs/benchmarks.md).
    """
    n = max(1, min(FORWARD_BATCH, MAX_FORWARD_VOXELS // max(1, x[0, 0].numel())) // x.shape[0])
    for i in range(0, len(flips), n):
        group = flips[i:i + n]
        inputs = [torch.flip(x, [2 + a for a in axes]) if axes else x for axes in group]
        with _autocast(device, amp):
            out = _forward(net, inputs[0] if len(inputs) == 1 else torch.cat(inputs))
        for axes, o in zip(group, out.split(x.shape[0])):
            yield torch.flip(o, [2 + a for a in axes]) if axes else o


def _run(networks: Sequence[nn.Module], data: torch.Tensor, num_classes: int, s: SlidingWindowSettings,
         results_device: torch.device, hook: PassHook | None, valid: Window) -> torch.Tensor:
    """Blend all windows of padded ``data`` (C, *shape) into a (K, *shape) accumulator on ``results_device``."""
    device = torch.device(s.device)
    window, shape = s.window, list(data.shape[1:])
    two_d = len(s.patch_size) == 2
    starts, windows = window_grid(shape, window, s.step)
    blend = _BlendWeights(shape, window, starts, results_device)
    flips = mirror_combinations(len(s.patch_size), s.mirror_axes) if s.mirror else [()]
    net_w = _ensemble_weights(s, len(networks))
    acc = new_accumulator(num_classes, shape, results_device)
    if hook is not None:
        hook.begin(shape, valid, len(networks) * len(flips), results_device, acc.dtype)
    bar = tqdm(total=len(windows), desc="sliding window", unit="window", leave=False, disable=len(windows) < MIN_WINDOWS_FOR_BAR)
    with torch.inference_mode(), bar:
        for batch in _batches(windows, s.batch_size):
            x = torch.stack([data[(slice(None),) + w] for w in batch]).to(device, non_blocking=True)
            if two_d:
                x = x[:, :, 0]
            if hook is not None:
                hook.start_batch()
            total = None
            for net, wn in zip(networks, net_w):
                net_sum = None
                for out in mirrored_passes(net, x, flips, device, s.amp):
                    probs = _activate(out, 1, s.sigmoid) if (s.ensemble == "weighted" or hook is not None) else None
                    if hook is not None:
                        assert probs is not None
                        hook.add_pass((probs[:, :, None] if two_d else probs).to(results_device))
                    contrib = probs if s.ensemble == "weighted" else out
                    net_sum = contrib if net_sum is None else net_sum + contrib
                assert net_sum is not None
                net_sum = net_sum * (wn / len(flips))
                total = net_sum if total is None else total + net_sum
            assert total is not None
            if two_d:
                total = total[:, :, None]
            total = total.to(results_device)
            weights = torch.stack([blend(w) for w in batch])
            for b, w in enumerate(batch):
                acc[(slice(None),) + w] += (total[b] * weights[b]).to(acc.dtype)
            if hook is not None:
                hook.end_batch(batch, weights)
            bar.update(len(batch))
        if s.ensemble == "mean":
            softmax_(acc, sigmoid=s.sigmoid)
    return acc


def _activate(x: torch.Tensor, dim: int, sigmoid: bool) -> torch.Tensor:
    return torch.sigmoid(x) if sigmoid else torch.softmax(x, dim)


def softmax_(acc: torch.Tensor, slab_voxels: int = 1 << 24, sigmoid: bool = False) -> torch.Tensor:
    """Softmax over axis 0 of (K, Z, ...) in place (or a sigmoid per entry with ``sigmoid``), a
    Z-slab at a time (no full-size temporaries)."""
    per_z = max(1, int(np.prod(acc.shape[2:], dtype=np.int64)))
    step = max(1, slab_voxels // per_z)
    for z0 in range(0, acc.shape[1], step):
        sl = acc[:, z0:z0 + step]
        sl.copy_(_activate(sl.float(), 0, sigmoid).to(acc.dtype))
    return acc


def predict_sliding_window(networks: Sequence[nn.Module], data: np.ndarray | torch.Tensor, num_classes: int,
                           settings: SlidingWindowSettings, hook: PassHook | None = None) -> torch.Tensor:
    """Class probabilities (K, Z, Y, X) on the CPU for a preprocessed (C, Z, Y, X) volume.

    ``networks`` are used in eval mode with deep supervision off (their previous settings
    are restored afterwards). The result is float32, or float16 for very large outputs
    (see :func:`accumulator_dtype`); voxels sum to 1 over classes (with ``settings.sigmoid``: each
    output is a region's own probability).
    """
    if not networks:
        raise AutosegError("no trained network to predict with; train a fold first (autoseg train)")
    data_t = torch.as_tensor(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data, dtype=torch.float32)
    if data_t.ndim != 4:
        raise ValueError(f"expected (C, Z, Y, X) data, got shape {tuple(data_t.shape)}")
    window, shape = settings.window, list(data_t.shape[1:])
    pad = [max(0, p - s) for p, s in zip(window, shape)]
    valid: Window = tuple(slice(d // 2, d // 2 + s) for d, s in zip(pad, shape))  # type: ignore[assignment]
    if any(pad):
        torch_pad = [v for d in reversed(pad) for v in (d // 2, d - d // 2)]
        data_t = torch.nn.functional.pad(data_t, torch_pad)
    device = torch.device(settings.device)
    saved = [(net.training, getattr(net, "deep_supervision", None)) for net in networks]
    for net in networks:
        net.eval()
        if hasattr(net, "deep_supervision"):
            net.deep_supervision = False
    enable_cudnn_benchmark(device)
    oom = out_of_memory_error()
    targets = accumulator_devices(device)
    acc = None
    try:
        for i, results_device in enumerate(targets):
            if i:
                log.warning("GPU out of memory for the prediction accumulator; redoing this case with it in CPU memory")
                gc.collect()  # in case a reference cycle still holds the failed attempt's tensors
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            try:
                acc = _run(networks, data_t, num_classes, settings, results_device, hook, valid)
                break
            except oom:
                pass  # leave the except block first: the exception's frames hold the failed attempt's tensors
        if acc is None:
            if len(targets) == 1:
                raise AutosegError("out of memory while predicting on the CPU; free memory or predict a smaller image")
            raise AutosegError("GPU out of memory even for one patch; use --device cpu or a smaller model")
    finally:
        for net, (training, ds) in zip(networks, saved):
            net.train(training)
            if ds is not None:
                net.deep_supervision = ds
    acc = acc[(slice(None),) + valid]
    if any(pad):
        acc = acc.contiguous()
    return acc.cpu()
