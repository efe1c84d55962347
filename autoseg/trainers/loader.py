"""Background batch loading: sampling + augmentation in worker processes, batches in the main one.

Built on ``torch.utils.data.DataLoader`` over an infinite :class:`BatchStream` (automatic batching
off): its workers hand tensors over through shared memory (no pickling copy of the arrays),
re-raise a worker's exception in the main process with the worker's traceback, notice workers
that die (OOM kill) and join them on shutdown. ``num_workers=0`` runs the same stream in-process.

Seeds: worker ``w`` of rank ``r`` uses ``seed + 1000 * r + w`` for its sampler *and* for numpy's
global generator (batchgenerators' transforms draw from ``np.random``). So ``num_workers=0`` and
``num_workers=1`` give the same batches, in the same order.

Usage::

    factory = functools.partial(PatchSampler, folder, case_ids, patch_size, batch_size,
                                initial_patch_size=settings.initial_patch_size)
    with BackgroundLoader(factory, build_train_transforms_from_settings(settings), num_workers=2,
                          seed=12345) as loader:
        for step, batch in zip(range(250), loader):
            ...

Edge case that bites: ``sampler_factory`` is called as ``sampler_factory(seed=...)`` *inside the
worker*; with the "spawn"/"forkserver" start methods it and ``transform`` must be picklable
(module-level classes/functions, ``functools.partial``; no lambdas or closures).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import random
import sys
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from autoseg.errors import AutosegError
from autoseg.io.workers import pool_context


class BatchSource(Protocol):
    def next_batch(self) -> dict: ...


def worker_seed(seed: int, rank: int, worker: int) -> int:
    """Seed of one worker: distinct per (rank, worker) for up to 1000 workers per rank."""
    return int(seed) + 1000 * int(rank) + int(worker)


def seed_globals(seed: int) -> None:
    """Seed numpy's and Python's global generators and torch's (augmentation libraries use them)."""
    np.random.seed(seed % 2**32)
    random.seed(seed)
    torch.manual_seed(seed)


class BatchStream(IterableDataset):
    """Infinite stream ``transform(**sampler.next_batch())`` for one worker (or the main process)."""

    def __init__(self, sampler_factory: Callable[..., BatchSource], transform: Callable[..., dict] | None,
                 seed: int, rank: int = 0) -> None:
        super().__init__()
        self.sampler_factory = sampler_factory
        self.transform = transform
        self.seed = seed
        self.rank = rank

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None:
            atexit.register(_exit_without_finalizers)
        s = worker_seed(self.seed, self.rank, 0 if info is None else info.id)
        seed_globals(s)
        sampler = self.sampler_factory(seed=s)
        while True:
            batch = sampler.next_batch()
            if self.transform is not None:
                if info is None:  # in-process: small torch ops run far faster on one thread
                    with _single_thread():
                        batch = self.transform(**batch)
                else:  # DataLoader workers already run torch single-threaded
                    batch = self.transform(**batch)
            yield batch


def _exit_without_finalizers() -> None:
    """End a spawned/forkserver worker the way fork workers always end: ``os._exit``.

    Such workers otherwise exit through interpreter finalisation, where a C++ static destructor of
    an imported extension (seen with pandas 3, imported by batchgenerators) intermittently aborts
    ("terminate called without an active exception") and the main process reports the worker
    as killed. Runs last among atexit handlers; the result queues were flushed before.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _user_error_from_worker(err: AutosegError) -> AutosegError:
    """DataLoader appends the worker traceback to the message; keep the one-line user message."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else str(err)
    prefix = "AutosegError: "
    return AutosegError(last.split(prefix, 1)[1] if prefix in last else last)


class BackgroundLoader:
    """Iterator of augmented batches produced by ``num_workers`` background processes.

    ``sampler_factory(seed=...)`` -> an object with ``next_batch() -> dict``;
    ``transform(**batch) -> dict`` (e.g. from :mod:`autoseg.trainers.augmentation`) or None.
    ``num_cached``: batches prefetched across all workers. ``pin_memory``: page-lock batches for
    fast host-to-GPU copies. ``multiprocessing_context``: None (the platform default, fork on Linux,
    or forkserver once a fork-unsafe engine runs in this process: ``io.workers.pool_context``),
    "spawn" or "forkserver".

    Shutdown: :meth:`close` (or leaving the ``with`` block, or any exception/KeyboardInterrupt while
    waiting for a batch) stops and joins the workers; the exception is then re-raised, a worker's
    own exception with the worker's traceback in its message (an :class:`AutosegError` keeps its
    one-line message).
    """

    def __init__(self, sampler_factory: Callable[..., BatchSource], transform: Callable[..., dict] | None,
                 num_workers: int, seed: int, num_cached: int = 4, rank: int = 0, pin_memory: bool = False,
                 multiprocessing_context: str | None = None) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        self.num_workers = int(num_workers)
        self._stream = BatchStream(sampler_factory, transform, seed, rank)
        self._closed = False
        self._iter: Iterator[Any] | None = None
        if self.num_workers == 0:
            self._iter = iter(self._stream)
            self._pin = pin_memory and torch.cuda.is_available()
        else:
            self._pin = False  # the DataLoader's pin-memory thread does it
            loader = DataLoader(self._stream, batch_size=None, num_workers=self.num_workers,
                                prefetch_factor=max(1, math.ceil(num_cached / self.num_workers)),
                                pin_memory=pin_memory and torch.cuda.is_available(),
                                multiprocessing_context=pool_context(multiprocessing_context),
                                persistent_workers=False)
            self._iter = iter(loader)  # starts the workers

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (empty in-process or after :meth:`close`)."""
        workers = getattr(self._iter, "_workers", None) or []
        return [w.pid for w in workers if w.pid is not None]

    def __iter__(self) -> "BackgroundLoader":
        return self

    def __next__(self) -> dict:
        if self._closed or self._iter is None:
            raise RuntimeError("BackgroundLoader is closed")
        try:
            batch = next(self._iter)
        except AutosegError as e:
            self.close()
            if self.num_workers == 0:
                raise
            raise _user_error_from_worker(e) from None
        except BaseException:
            self.close()
            raise
        if self._pin:
            batch = _pin(batch)
        return batch

    def close(self) -> None:
        """Stop and join the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        it, self._iter = self._iter, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            try:
                shutdown()
            except RuntimeError:  # torch's SIGCHLD check: a worker died while stopping; stop the rest
                pass
            for w in getattr(it, "_workers", []):
                if w.is_alive():
                    w.terminate()
                w.join(timeout=5)
        elif hasattr(it, "close"):
            it.close()  # the in-process generator

    def __enter__(self) -> "BackgroundLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _pin(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: _pin(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_pin(v) for v in obj]
    return obj


__all__ = ["BackgroundLoader", "BatchStream", "BatchSource", "worker_seed", "seed_globals"]
