"""Data parallel: 2 CPU processes with gloo train identical weights; backend from --device; batch Dice
gathered over ranks equals one process's batch Dice (loss and gradients); the batch split over ranks."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.trainers import distributed as dist_utils
from autoseg.trainers.losses import build_loss
from autoseg.trainers.sampling import n_forced_per_batch

from conftest import write_blob_dataset


def test_ddp_two_cpu_processes_identical_weights(autoseg_env, tmp_path):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=4)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "-np", "1"]) == 0
    out = tmp_path / "ddp"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)  # --device cpu: gloo, even on a GPU machine
    env.pop(dist_utils.BACKEND_ENV, None)
    worker = os.path.join(os.path.dirname(__file__), "ddp_train_worker.py")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                        worker, str(autoseg_env["pre"] / "Dataset003_Liver"), str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = torch.load(out / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(out / "rank1_weights.pt", weights_only=True)
    initial = torch.load(out / "checkpoint_final.pth", weights_only=True)["network"]
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert all(torch.equal(w0[k], initial[k]) for k in w0)  # rank 0 wrote what it trained


# -- backend from --device --------------------------------------------------------------------

def test_backend_follows_device_and_env_override(monkeypatch):
    monkeypatch.delenv(dist_utils.BACKEND_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    assert dist_utils.backend_for("cpu") == "gloo"
    assert dist_utils.backend_for(torch.device("cpu")) == "gloo"
    assert dist_utils.backend_for("cuda") == "nccl" and dist_utils.backend_for("cuda:1") == "nccl"
    assert dist_utils.backend_for("mps") == "gloo"
    monkeypatch.setenv(dist_utils.BACKEND_ENV, "gloo")
    assert dist_utils.backend_for("cuda") == "gloo"
    monkeypatch.setenv(dist_utils.BACKEND_ENV, "mpi")
    with pytest.raises(AutosegError, match="gloo or nccl"):
        dist_utils.backend_for("cpu")


class _Started(Exception):
    pass


@pytest.fixture
def fake_torchrun(monkeypatch):
    """torchrun's environment for local rank 1 of 2 on a GPU machine; records what the process group gets."""
    calls: list = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv(dist_utils.BACKEND_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)

    def init(backend, *a, **k):
        calls.append(("init", backend))
        raise _Started

    monkeypatch.setattr(dist, "init_process_group", init)
    return calls


def test_context_picks_backend_from_device_and_gpu_before_init(fake_torchrun):
    with pytest.raises(_Started):
        dist_utils.context("cpu")
    assert fake_torchrun == [("init", "gloo")]
    fake_torchrun.clear()
    with pytest.raises(_Started):
        dist_utils.context("cuda")
    assert fake_torchrun == [("set_device", 1), ("init", "nccl")]  # the local rank's GPU, before NCCL starts
    with pytest.raises(RuntimeError, match="must be given the device"):
        dist_utils.context()


def test_train_device_cpu_under_torchrun_on_a_gpu_machine_uses_gloo(autoseg_env, fake_torchrun):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=4)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "-np", "1"]) == 0
    with pytest.raises(_Started):
        main(["train", "-f", "0", "--device", "cpu", "--epochs", "1", "--num-workers", "0"])
    assert fake_torchrun == [("init", "gloo")]


# -- the global batch split over ranks ------------------------------------------------------------

def test_rank_batch_splits_like_nnunet_and_keeps_the_forced_foreground_share():
    assert dist_utils.rank_batch(2, 0.33, 0, 1) == (2, 0.33)
    assert [dist_utils.rank_batch(2, 0.33, r, 2) for r in range(2)] == [(1, 0.0), (1, 1.0)]
    assert [dist_utils.rank_batch(5, 0.33, r, 2)[0] for r in range(2)] == [3, 2]
    for batch in range(2, 13):
        for world in range(2, batch + 1):
            for p in (0.0, 0.33, 0.5, 1.0):
                shares = [dist_utils.rank_batch(batch, p, r, world) for r in range(world)]
                assert sum(b for b, _ in shares) == batch
                forced = 0
                for b, q in shares:
                    if b == 1:
                        assert q in (0.0, 1.0)  # batch 1 draws at random with q: only 0 and 1 are exact
                        forced += int(q)
                    else:
                        forced += n_forced_per_batch(b, q)
                assert forced == n_forced_per_batch(batch, p), (batch, world, p, shares)
    with pytest.raises(AutosegError, match="smaller than the 4 processes"):
        dist_utils.rank_batch(2, 0.33, 0, 4)


# -- batch Dice gathered over ranks: 2 gloo processes x batch 1 == 1 process x batch 2 -----------

LOSSES = ("dice_ce", "soft_dice", "gdl", "gdl_focal")


def _inputs():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(2, 2, 4, 6, 6, generator=g)
    target = torch.zeros(2, 1, 4, 6, 6, dtype=torch.long)
    target[0, :, 1:3, 1:4, 1:4] = 1       # sample 0: classes 0, 1
    target[1, :, 0:2, 2:6, 2:6] = 2       # sample 1: classes 0, 2, 1
    target[1, :, 3, :2, :2] = 1
    logits = torch.randn(2, 3, 4, 6, 6, generator=g)
    return data, target, logits


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(), nn.Conv3d(4, 3, 1))


def _batch_dice_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data, target, logits = _inputs()
        mine = slice(rank, rank + 1)
        res = {}
        for name in LOSSES:
            loss_fn = build_loss(name, 3, batch_dice=True)  # ddp: detected from the running process group
            x = logits[mine].clone().requires_grad_(True)
            loss = loss_fn(x, target[mine])
            loss.backward()
            res[name] = (loss.detach(), x.grad)
            res[name + "_not_gathered"] = build_loss(name, 3, batch_dice=True, ddp=False)(logits[mine], target[mine])
        net = _net()
        model = nn.parallel.DistributedDataParallel(net)
        build_loss("dice_ce", 3, batch_dice=True)(model(data[mine]), target[mine]).backward()
        res["param_grads"] = [p.grad.clone() for p in net.parameters()]
        cpu = torch.device("cpu")
        res["resume_check"] = (dist_utils.same_on_all_ranks(5, cpu), dist_utils.same_on_all_ranks(rank, cpu))
        dist_utils.barrier()
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_batch_dice_gathered_over_two_gloo_ranks_equals_one_process_batch_of_two(tmp_path):
    mp.spawn(_batch_dice_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    data, target, logits = _inputs()
    for name in LOSSES:
        x = logits.clone().requires_grad_(True)
        single = build_loss(name, 3, batch_dice=True, ddp=False)(x, target)
        single.backward()
        # The loss on each rank averaged (what DDP's gradient averaging optimises) is the one-process loss;
        # its Dice part is the same on every rank.
        mean_loss = sum(r[name][0] for r in ranks) / 2
        assert torch.allclose(mean_loss, single.detach(), atol=1e-6), name
        # Rank r's gradient w.r.t. its own logits, averaged by DDP (/ world), is the one-process gradient of sample r.
        for r in range(2):
            assert torch.allclose(ranks[r][name][1] / 2, x.grad[r:r + 1], atol=1e-7), name
        # Without gathering it is per-rank (here per-sample) Dice: a different loss.
        ungathered = sum(r[name + "_not_gathered"] for r in ranks) / 2
        assert not torch.allclose(ungathered, single.detach(), atol=1e-4), name
    assert torch.allclose(ranks[0]["soft_dice"][0], ranks[1]["soft_dice"][0])  # Dice alone: one value on all ranks
    assert all(r["resume_check"] == (True, False) for r in ranks)  # ranks resuming from different epochs are caught
    net = _net()
    build_loss("dice_ce", 3, batch_dice=True, ddp=False)(net(data), target).backward()
    for a, b, p in zip(ranks[0]["param_grads"], ranks[1]["param_grads"], net.parameters()):
        assert torch.equal(a, b)  # DDP: identical on both ranks
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-4)  # and equal to batch 2 in one process


def test_gather_helpers_are_identity_in_one_process():
    t = torch.arange(3.0, requires_grad=True)
    g = dist_utils.all_gather_with_grad(t)
    assert g.shape == (1, 3) and torch.equal(g[0], t)
    assert dist_utils.same_on_all_ranks(7, torch.device("cpu"))
    assert np.array_equal(dist_utils.all_reduce_sum(np.array([1.0, 2.0]), torch.device("cpu")), [1.0, 2.0])
