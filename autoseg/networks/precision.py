"""Mixed precision: which autocast dtype a device gets (``--amp auto|on|off`` of train and predict).

* CUDA: ``auto``/``on`` use bfloat16 where the GPU runs it natively (compute capability 8.0+:
  Ampere, Hopper, ...; ROCm), else float16 with a gradient scaler in training; ``off`` is float32.
  This is nnU-Net's AMP. Pre-Ampere GPUs (V100, T4) get float16 on purpose: newer torch's
  ``torch.cuda.is_bf16_supported()`` also answers True where bfloat16 is only *emulated*, which
  would give them slow bfloat16 and leave the float16 + GradScaler path unused.
* CPU: ``auto`` uses bfloat16 only when the processor has native bfloat16 instructions
  (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``: recent Xeon/EPYC). There oneDNN runs
  3D convolutions about twice as fast as in float32 (benchmarks/train_vs_nnunet.py). Without
  them bfloat16 is emulated and slower, so ``auto`` stays float32; ``on`` forces bfloat16.
* MPS: float32 always.

Convolutions run in the low precision; logits are cast back to float32 before softmax and the
loss, and weights and optimizer state stay float32 (torch.autocast semantics).

Version notes (the torch floor in ``pyproject.toml`` is 2.1): :func:`make_grad_scaler` uses
``torch.amp.GradScaler`` (torch 2.3+) or ``torch.cuda.amp.GradScaler`` before it, and the
bf16 test reads the compute capability rather than ``is_bf16_supported(including_emulation=...)``
(an argument newer torch versions added). :func:`enable_cudnn_benchmark` turns on cuDNN's autotuner for CUDA (nnU-Net does
too): every training patch and sliding window has the same shape, so the tuned kernels are reused.

Example::

    dtype = amp_dtype("cpu", "auto")          # torch.bfloat16 on an avx512_bf16 CPU, else None
    with autocast("cpu", dtype):
        logits = net(x)
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

AMP_MODES = ("auto", "on", "off")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when ``/proc/cpuinfo`` lists avx512_bf16 or amx_bf16 (False where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def cuda_has_native_bf16(device: int | str | torch.device | None = None) -> bool:
    """True on ROCm and on CUDA GPUs of compute capability 8.0+ (bf16 tensor cores), False otherwise.

    Deliberately not ``torch.cuda.is_bf16_supported()``: newer torch versions also count GPUs that
    merely emulate bfloat16 (pre-Ampere), where float16 + GradScaler is much faster.
    """
    if torch.version.hip:
        return bool(torch.cuda.is_bf16_supported())
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def amp_dtype(device_type: str, mode: str | bool) -> torch.dtype | None:
    """Autocast dtype for ``device_type`` under ``mode`` (auto/on/off; True/False mean on/off); None: float32."""
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in AMP_MODES:
        raise ValueError(f"amp mode {mode!r}: choose one of {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if device_type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16() else torch.float16
    if device_type == "cpu":
        return torch.bfloat16 if mode == "on" or cpu_has_native_bf16() else None
    return None


def autocast(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def make_grad_scaler(device_type: str, dtype: torch.dtype | None):
    """A GradScaler for float16 autocast on CUDA, None otherwise (bfloat16 and float32 need none).

    ``torch.amp.GradScaler("cuda")`` where it exists (torch 2.3+), else ``torch.cuda.amp.GradScaler()``.
    """
    if device_type != "cuda" or dtype != torch.float16:
        return None
    scaler_cls = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if scaler_cls is not None:
        return scaler_cls("cuda")
    return torch.cuda.amp.GradScaler()


def enable_cudnn_benchmark(device: str | torch.device) -> None:
    """Let cuDNN pick the fastest convolution algorithms on CUDA (fixed patch shapes); no-op elsewhere."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
