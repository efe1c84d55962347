"""torch.distributed glue for ``torchrun ... -m autoseg train ...`` on one or several machines.

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything degrades to a single process.

* **Backend** follows ``--device``: NCCL for ``cuda``, gloo for ``cpu`` (and anything else);
  ``AUTOSEG_DIST_BACKEND=gloo|nccl`` overrides it. (Choosing from ``torch.cuda.is_available()``
  would give NCCL to ``--device cpu`` on a GPU machine, which fails on CPU tensors.)
* **Ranks**: ``RANK`` is global (0 .. world - 1 over all nodes) and decides who writes files and
  validates (rank 0 only) and the data seeds; ``LOCAL_RANK`` (0 .. GPUs per node - 1) only picks
  the GPU, ``cuda:<LOCAL_RANK>``, set before the process group starts so NCCL never guesses.
* **Batch**: the global batch is split over the ranks as nnU-Net does (:func:`rank_batch`), with
  the foreground oversampling assigned per rank so the global batch has the planned share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from autoseg.errors import AutosegError
from autoseg.trainers.sampling import n_forced_per_batch

BACKEND_ENV = "AUTOSEG_DIST_BACKEND"


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def backend_for(device: str | torch.device) -> str:
    """``nccl`` for a CUDA device, ``gloo`` otherwise; ``AUTOSEG_DIST_BACKEND`` overrides."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced:
        if forced not in ("gloo", "nccl"):
            raise AutosegError(f"{BACKEND_ENV}={forced}: choose gloo or nccl")
        return forced
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def context(device: str | torch.device | None = None) -> DistContext:
    """This process's ranks; initialises the process group on first use under torchrun.

    ``device`` (the ``--device`` choice) is needed for that first call: it picks the backend and,
    for CUDA, the GPU ``cuda:<LOCAL_RANK>`` (made current before the process group starts).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device is None:
            raise RuntimeError("distributed.context(device) must be given the device on its first call under torchrun")
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend_for(device))
    return DistContext(dist.get_rank(), local_rank, dist.get_world_size())


def rank_batch(global_batch: int, oversample: float, rank: int, world: int) -> tuple[int, float]:
    """This rank's batch size and foreground-oversampling fraction for a ``global_batch`` split over ``world`` ranks.

    Ranks get ``global_batch // world`` samples, the first ``global_batch % world`` ranks one more
    (nnU-Net's split). The global batch's forced-foreground samples are its last
    :func:`~autoseg.trainers.sampling.n_forced_per_batch` ones, as in one process; each rank gets
    the fraction that forces exactly its share of them. Example: batch 2, 0.33, 2 ranks ->
    rank 0 ``(1, 0.0)``, rank 1 ``(1, 1.0)``: one random and one foreground patch, as on one GPU.
    """
    if world <= 1:
        return global_batch, oversample
    if global_batch < world:
        raise AutosegError(f"batch size {global_batch} is smaller than the {world} processes; give --batch-size {world} "
                           f"(or a multiple of it) or start fewer processes")
    sizes = [global_batch // world + (1 if r < global_batch % world else 0) for r in range(world)]
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    first_forced = global_batch - n_forced_per_batch(global_batch, oversample)
    forced_here = max(0, hi - max(lo, first_forced))
    return sizes[rank], forced_here / sizes[rank]


def wrap(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if is_distributed():
        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)
    return network


class _AllGatherGrad(torch.autograd.Function):
    """all_gather with a gradient (nnU-Net's ``AllGatherGrad``): (world, *shape) from every rank's (*shape).

    Backward all-reduces (sums) the incoming gradient and returns this rank's slice. Every rank
    computes the same loss from the gathered tensor, so the sum is ``world`` times the gradient;
    DistributedDataParallel's averaging over ranks then gives exactly the one-process gradient.
    Uses only all_gather and all_reduce, so it works with gloo and NCCL on every supported torch.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor)
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(world, *shape): ``tensor`` of every rank, differentiable (see :class:`_AllGatherGrad`); (1, *shape) alone."""
    if not is_distributed():
        return tensor.unsqueeze(0)
    return _AllGatherGrad.apply(tensor)


def all_reduce_sum(arr: np.ndarray, device: torch.device) -> np.ndarray:
    if not is_distributed():
        return arr
    t = torch.as_tensor(arr, dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.cpu().numpy()


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not is_distributed():
        return value
    return float(all_reduce_sum(np.array([value]), device)[0] / dist.get_world_size())


def same_on_all_ranks(value: int, device: torch.device) -> bool:
    """True when every rank passes the same integer (e.g. the epoch it resumes from)."""
    if not is_distributed():
        return True
    t = torch.tensor([value, -value], dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # [max, -min]
    return bool(t[0].item() == -t[1].item())


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
