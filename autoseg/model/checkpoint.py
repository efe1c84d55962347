"""Checkpoints that ``torch.load(..., weights_only=True)`` can read.

A checkpoint is a dict of tensors and plain JSON-compatible values only::

    {"network": state_dict, "optimizer": state_dict | None, "grad_scaler": state_dict | None,
     "meta": {"epoch": int, "configuration": str, "network": "unet", "fold": ..., ...},
     "history": {"train_loss": [...], ...}}

Nothing pickled that can execute code. Files are written to a temp name and renamed, so a
crash or ``kill -9`` mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from autoseg.errors import AutosegError
from autoseg.io.json_io import atomic_path

LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"


def checkpoint_name(kind: str) -> str:
    """``final`` / ``best`` / ``latest`` -> the file name in a fold folder."""
    return f"checkpoint_{kind}.pth"


def save_checkpoint(path: Path | str, network_state: dict, meta: dict, optimizer_state: dict | None = None,
                    grad_scaler_state: dict | None = None, history: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"network": network_state, "optimizer": optimizer_state, "grad_scaler": grad_scaler_state,
                               "meta": meta, "history": history or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Load with ``weights_only=True``; one clear line for a missing, corrupt, pickled or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: checkpoint not found; train this fold first (autoseg train)")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise AutosegError(f"{path}: this file contains pickled Python objects, which autoseg will not execute; "
                           f"use a checkpoint written by autoseg train") from None
    except Exception as e:  # truncated, corrupt or not a torch file at all
        raise AutosegError(f"{path}: not a readable checkpoint ({type(e).__name__}); delete it and retrain") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("network"), dict) or not isinstance(ck.get("meta", {}), dict):
        raise AutosegError(f"{path}: not an autoseg checkpoint (a {type(ck).__name__} without network weights); "
                           f"use a checkpoint written by autoseg train")
    return ck


def strip_module_prefix(state: dict) -> dict:
    """Remove DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes from keys."""
    out = {}
    for k, v in state.items():
        for pre in ("module.", "_orig_mod."):
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out
