"""Mixed precision: which autocast dtype a device gets (``--amp auto|on|off`` of train and predict).

* CUDA: ``auto``/``on`` use bfloat16 where the GPU supports it, else float16 (with a gradient
  scaler in training); ``off`` is float32. This is nnU-Net's AMP.
* CPU: ``auto`` uses bfloat16 only when the processor has native bfloat16 instructions
  (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``: recent Xeon/EPYC). There oneDNN runs
  3D convolutions about twice as fast as in float32 (benchmarks/train_vs_nnunet.py). Without
  them bfloat16 is emulated and slower, so ``auto`` stays float32; ``on`` forces bfloat16.
* MPS: float32 always.

Convolutions run in the low precision; logits are cast back to float32 before softmax and the
loss, and weights and optimizer state stay float32 (torch.autocast semantics).

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


def amp_dtype(device_type: str, mode: str | bool) -> torch.dtype | None:
    """Autocast dtype for ``device_type`` under ``mode`` (auto/on/off; True/False mean on/off); None: float32."""
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in AMP_MODES:
        raise ValueError(f"amp mode {mode!r}: choose one of {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device_type == "cpu":
        return torch.bfloat16 if mode == "on" or cpu_has_native_bf16() else None
    return None


def autocast(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
