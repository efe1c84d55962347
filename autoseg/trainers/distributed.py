"""torch.distributed glue for ``torchrun --nproc_per_node N -m autoseg train ...``.

Without torchrun's environment everything degrades to a single process. Rank 0 writes
checkpoints and logs; every rank samples with its own seed (``seed + 1000 * rank``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """Initialise the process group once if launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("AUTOSEG_DIST_BACKEND", "") != "gloo" else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def wrap(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if dist.is_initialized() and dist.get_world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)
    return network


def all_reduce_sum(arr: np.ndarray, device: torch.device) -> np.ndarray:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return arr
    t = torch.as_tensor(arr, dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.cpu().numpy()


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    return float(all_reduce_sum(np.array([value]), device)[0] / dist.get_world_size())


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
