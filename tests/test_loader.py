"""Background loader: same batches as in-process, clean shutdown, worker errors surface in the main process."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.io.images import Geometry
from autoseg.preprocessing.case_store import CaseProperties, save_case
from autoseg.trainers.augmentation import build_val_transforms
from autoseg.trainers.loader import BackgroundLoader, worker_seed
from autoseg.trainers.sampling import PatchSampler


class CountingSampler:
    """Batches that record the seed they were made with; optionally fails or stalls."""

    def __init__(self, seed: int, fail_after: int | None = None, sleep_s: float = 0.0) -> None:
        self.seed, self.fail_after, self.sleep_s, self.n = seed, fail_after, sleep_s, 0

    def next_batch(self) -> dict:
        if self.fail_after is not None and self.n >= self.fail_after:
            raise ValueError(f"boom in sampler seeded {self.seed}")
        time.sleep(self.sleep_s)
        self.n += 1
        return {"data": np.full((2, 1, 4, 4), self.seed, np.float32), "step": self.n,
                "noise": float(np.random.uniform())}


def gone(pid: int) -> bool:
    """The process has exited and was reaped: no entry left, not even a zombie."""
    return not Path(f"/proc/{pid}").exists()


def write_tiny_cases(folder: Path) -> list[str]:
    ids = []
    for i in range(2):
        seg = np.zeros((1, 12, 24, 24), np.int8)
        seg[0, 3:9, 6:18, 6:18] = 1
        seg[0, 5:7, 10:12, 10:12] = 2
        locs = {str(k): np.argwhere(seg == k).tolist() for k in (1, 2)}
        props = CaseProperties(f"c{i}", Geometry([12, 24, 24], [1.0, 1.0, 1.0]), [[0, 12], [0, 24], [0, 24]],
                               [12, 24, 24], [1.0, 1.0, 1.0], [12, 24, 24], locs)
        save_case(folder, np.random.default_rng(i).normal(size=(1, 12, 24, 24)).astype(np.float32), seg, props)
        ids.append(f"c{i}")
    return ids


def test_worker_seed_is_distinct_per_rank_and_worker():
    seeds = {worker_seed(5, r, w) for r in range(4) for w in range(8)}
    assert len(seeds) == 32 and worker_seed(5, 1, 2) == 1007


def test_in_process_and_one_worker_give_the_same_batches(tmp_path):
    ids = write_tiny_cases(tmp_path)
    factory = functools.partial(PatchSampler, tmp_path, ids, [8, 16, 16], 2)
    with BackgroundLoader(factory, build_val_transforms([[1, 1, 1], [0.5, 0.5, 0.5]]), 0, seed=11) as sync:
        a = [next(sync) for _ in range(4)]
    with BackgroundLoader(factory, build_val_transforms([[1, 1, 1], [0.5, 0.5, 0.5]]), 1, seed=11) as bg:
        b = [next(bg) for _ in range(4)]
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        assert torch.equal(x["data"], y["data"])
        assert all(torch.equal(s, t) for s, t in zip(x["target"], y["target"]))
        assert x["target"][1].shape == (2, 1, 4, 8, 8)


def test_two_workers_yield_batches_and_close_without_leftover_processes():
    loader = BackgroundLoader(CountingSampler, None, num_workers=2, seed=100, num_cached=4)
    pids = loader.worker_pids
    assert len(pids) == 2
    batches = [next(loader) for _ in range(8)]
    assert {float(b["data"][0, 0, 0, 0]) for b in batches} == {100.0, 101.0}  # both workers, distinct seeds
    assert isinstance(batches[0]["data"], torch.Tensor)
    loader.close()
    loader.close()  # idempotent
    assert all(gone(p) for p in pids)
    assert multiprocessing.active_children() == []
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)


def test_worker_exception_surfaces_in_main_with_its_message_and_workers_stop():
    factory = functools.partial(CountingSampler, fail_after=2)
    loader = BackgroundLoader(factory, None, num_workers=2, seed=0)
    pids = loader.worker_pids
    with pytest.raises(ValueError, match="boom in sampler seeded"):
        for _ in range(20):
            next(loader)
    assert all(gone(p) for p in pids)


def test_user_error_in_worker_keeps_its_one_line_message(tmp_path):
    factory = functools.partial(PatchSampler, tmp_path, ["missing_case"], [8, 16, 16], 2)
    with BackgroundLoader(factory, None, num_workers=1, seed=0) as loader:
        with pytest.raises(AutosegError) as info:
            next(loader)
    msg = str(info.value)
    assert "missing_case.npy" in msg and "\n" not in msg and "Traceback" not in msg


def test_in_process_exception_and_context_manager():
    factory = functools.partial(CountingSampler, fail_after=1)
    with BackgroundLoader(factory, None, num_workers=0, seed=0) as loader:
        assert next(loader)["step"] == 1
        with pytest.raises(ValueError, match="boom"):
            next(loader)


def test_keyboard_interrupt_while_waiting_stops_workers():
    factory = functools.partial(CountingSampler, sleep_s=0.6)
    loader = BackgroundLoader(factory, None, num_workers=2, seed=0, num_cached=2)
    pids = loader.worker_pids
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in range(50):
            next(loader)
    timer.join()
    assert all(gone(p) for p in pids)


def test_spawn_workers_match_in_process_batches_and_exit_cleanly(tmp_path):
    """Spawn-safe: sampler factory and transforms pickle; worker exit does not abort (see loader)."""
    ids = write_tiny_cases(tmp_path)
    factory = functools.partial(PatchSampler, tmp_path, ids, [8, 16, 16], 2)
    with BackgroundLoader(factory, build_val_transforms(None), 0, seed=3) as sync:
        expected = [next(sync)["data"] for _ in range(2)]
    loader = BackgroundLoader(factory, build_val_transforms(None), 1, seed=3, multiprocessing_context="spawn")
    pids = loader.worker_pids
    got = [next(loader)["data"] for _ in range(2)]
    loader.close()
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert all(gone(p) for p in pids)
