"""Which torch device to run on: one rule for training and prediction."""

from __future__ import annotations

import torch

from autoseg.errors import AutosegError

DEVICES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str | None) -> str:
    """``None`` -> the best available (cuda, mps, cpu); an unavailable choice is an error.

    Example: ``resolve_device("cuda")`` on a machine without a visible GPU raises
    ``AutosegError("--device cuda: not available on this machine; use --device cpu")``.
    """
    cuda, mps = torch.cuda.is_available(), _mps_available()
    if name is None:
        return "cuda" if cuda else ("mps" if mps else "cpu")
    if name not in DEVICES:
        raise AutosegError(f"--device {name}: choose cpu, cuda or mps")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise AutosegError(f"--device {name}: not available on this machine; use --device cpu")
    return name
