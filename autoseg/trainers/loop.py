"""Train one fold: a short loop that composes sampler, augmentation, network, loss,
optimiser, checkpoint store and progress log — each testable on its own.

Resume: when ``checkpoint_latest.pth`` exists (and ``restart`` is False) the network,
optimiser, grad scaler, history and epoch counter are restored and training continues
with the same schedule (and, with a time budget, the time that was left). SIGINT/SIGTERM
save ``checkpoint_latest.pth`` with the number of *completed* epochs before exiting.

Time budget (``cfg.time_budget_s``, see :mod:`autoseg.trainers.budget`): a warm-up measures
seconds per training and validation iteration, then the epochs are set to fit; each epoch's
measured time corrects the plan.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from autoseg.errors import AutosegError
from autoseg.io.json_io import remove_stale_temps, save_json
from autoseg.model.checkpoint import BEST, FINAL, LATEST, load_checkpoint, save_checkpoint, strip_module_prefix
from autoseg.model.training_config import TrainingConfig
from autoseg.networks.builder import build_network
from autoseg.networks.precision import amp_dtype as resolve_amp_dtype, autocast, enable_cudnn_benchmark, make_grad_scaler
from autoseg.overlap import dice_from_counts
from autoseg.planners.plans import ConfigurationPlan
from autoseg.trainers import budget as budget_rules
from autoseg.trainers import distributed as dist_utils
from autoseg.trainers.augmentation import (build_train_transforms_from_settings, build_val_transforms,
                                           deep_supervision_scales, default_augmentation_settings)
from autoseg.trainers.loader import BackgroundLoader
from autoseg.trainers.losses import build_loss
from autoseg.trainers.progress import ProgressLog
from autoseg.trainers.region_loss import region_confusion_counts
from autoseg.trainers.sampling import PatchSampler

log = logging.getLogger("autoseg")


def poly_lr(initial: float, epoch: int, max_epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's polynomial decay: ``initial * (1 - epoch / max_epochs) ** exponent``."""
    return initial * (1 - min(epoch, max_epochs) / max_epochs) ** exponent


def make_optimizer(cfg: TrainingConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise AutosegError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")


def load_pretrained(network: torch.nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Copy every weight whose name and shape match; returns (loaded, skipped) names."""
    state = strip_module_prefix(load_checkpoint(path)["network"])
    own = network.state_dict()
    loaded, skipped = [], []
    for k, v in own.items():
        if k in state and tuple(state[k].shape) == tuple(v.shape):
            own[k] = state[k]
            loaded.append(k)
        else:
            skipped.append(k)
    network.load_state_dict(own)
    return loaded, skipped


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, cfg: TrainingConfig) -> np.ndarray:
    """(K-1, 3) true positives, false positives, false negatives per foreground class (argmax), or
    (R, 3) per region (sigmoid > 0.5); voxels of the ignore class are left out."""
    if cfg.region_classes is not None:
        return np.asarray(region_confusion_counts(logits, target, cfg.region_classes, cfg.ignore_class))
    pred = logits.argmax(1)
    tgt = target[:, 0].long()
    out = np.zeros((cfg.num_classes - 1, 3))
    valid = None if cfg.ignore_class is None else tgt != cfg.ignore_class
    for c in range(1, cfg.num_classes):
        p, t = pred == c, tgt == c
        if valid is not None:
            p = p & valid
        out[c - 1] = [(p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item()]
    return out


class _Stop:
    """SIGTERM handler target: turns the signal into KeyboardInterrupt at a safe point."""

    def __init__(self):
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not in the main thread
            self.previous = None
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _as_float(out):
    """Network output(s) in float32 (autocast leaves them in bfloat16/float16) for softmax and the loss."""
    return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()


def _to(batch: dict, device: torch.device):
    data = batch["data"].to(device, non_blocking=True)
    tgt = batch["target"]
    tgt = [t.to(device, non_blocking=True) for t in tgt] if isinstance(tgt, (list, tuple)) else tgt.to(device, non_blocking=True)
    return data, tgt


@dataclass
class TrainState:
    """Everything one fold's steps use: built once by :func:`build_state`, updated by the loop."""

    cfg: TrainingConfig
    network: torch.nn.Module
    model: torch.nn.Module          # ``network``, wrapped for DDP when there are several ranks
    optimizer: torch.optim.Optimizer
    scaler: Any
    loss_fn: torch.nn.Module
    amp_dtype: torch.dtype | None
    device: torch.device
    out_dir: Path
    progress: ProgressLog
    start_epoch: int = 0
    best_ema: float = -math.inf
    elapsed_before_s: float = 0.0   # training time spent before this process (resume)

    def save(self, name: str, epoch: int, elapsed_s: float) -> None:
        """Write checkpoint ``name`` (main rank only) recording ``epoch`` completed epochs."""
        if not dist_utils.context().is_main:
            return
        meta = {"epoch": epoch, "fold": self.cfg.fold, "configuration": self.cfg.configuration, "network": self.cfg.network,
                "best_ema": self.best_ema if math.isfinite(self.best_ema) else -1.0, "planned_epochs": self.cfg.epochs,
                "elapsed_s": float(elapsed_s), "iters_per_epoch": self.cfg.iters_per_epoch, "val_iters": self.cfg.val_iters}
        save_checkpoint(self.out_dir / name, self.network.state_dict(), meta, self.optimizer.state_dict(),
                        self.scaler.state_dict() if self.scaler else None, self.progress.history)


def build_state(cfg: TrainingConfig, config: ConfigurationPlan, out_dir: Path) -> TrainState:
    """Network (with pretrained weights), optimiser, grad scaler, loss and AMP choice on the fold's device."""
    ctx = dist_utils.context(cfg.device)
    device = torch.device(cfg.device if cfg.device != "cuda" or ctx.world_size == 1 else f"cuda:{ctx.local_rank}")
    enable_cudnn_benchmark(device)
    torch.manual_seed(cfg.seed + ctx.rank)
    topo = config.topology
    network = build_network(cfg.network, topo, cfg.num_input_channels, cfg.num_classes, deep_supervision=cfg.deep_supervision).to(device)
    if cfg.pretrained:
        loaded, skipped = load_pretrained(network, cfg.pretrained)
        log.info("pretrained %s: loaded %d tensors, kept %d initialised (name/shape mismatch): %s",
                 cfg.pretrained, len(loaded), len(skipped), ", ".join(skipped[:8]) + (" ..." if len(skipped) > 8 else ""))
    optimizer = make_optimizer(cfg, network.parameters())
    amp_dtype = resolve_amp_dtype(device.type, cfg.amp)
    scaler = make_grad_scaler(device.type, amp_dtype)
    n_heads = topo.n_stages - 1 if cfg.deep_supervision else 1
    loss_fn = build_loss(cfg.loss, cfg.num_classes, config.batch_dice, cfg.class_weights, n_heads,
                         ignore_index=cfg.ignore_class, regions=cfg.region_classes)
    return TrainState(cfg, network, network, optimizer, scaler, loss_fn, amp_dtype, device, out_dir, ProgressLog(out_dir))


def resume(state: TrainState, restart: bool) -> None:
    """Restore ``checkpoint_latest.pth`` (weights, optimiser, scaler, history, epochs, time spent);
    a fresh start removes an old training log."""
    latest, ctx = state.out_dir / LATEST, dist_utils.context()
    if not latest.is_file() or restart:
        if ctx.is_main and (state.out_dir / "training_log.txt").exists():
            (state.out_dir / "training_log.txt").unlink()
        return
    ck = load_checkpoint(latest, map_location=state.device)
    state.network.load_state_dict(strip_module_prefix(ck["network"]))
    if ck.get("optimizer"):
        state.optimizer.load_state_dict(ck["optimizer"])
    if state.scaler is not None and ck.get("grad_scaler"):
        state.scaler.load_state_dict(ck["grad_scaler"])
    meta = ck["meta"]
    state.start_epoch, state.best_ema = int(meta["epoch"]), float(meta.get("best_ema", -math.inf))
    state.elapsed_before_s = float(meta.get("elapsed_s", 0.0))
    if state.cfg.time_budget_s is not None and state.cfg.budget_sets and meta.get("planned_epochs"):
        # the budget's plan and the time left, not a new budget
        state.cfg.epochs = int(meta["planned_epochs"])
        state.cfg.iters_per_epoch = int(meta.get("iters_per_epoch", state.cfg.iters_per_epoch))
        state.cfg.val_iters = int(meta.get("val_iters", state.cfg.val_iters))
    state.progress = ProgressLog(state.out_dir, ck.get("history"))
    if ctx.is_main:
        state.progress.rewrite_log()  # drop lines of epochs the checkpoint does not hold
        print(f"resuming fold {state.cfg.fold} from epoch {state.start_epoch}")


def make_loaders(cfg: TrainingConfig, config: ConfigurationPlan, data_folder: Path, train_ids: list[str], val_ids: list[str],
                 start_epoch: int, device: torch.device) -> tuple[BackgroundLoader, BackgroundLoader]:
    """Background loaders of augmented training patches and plain validation patches."""
    ctx = dist_utils.context()
    topo = config.topology
    ds_scales = deep_supervision_scales(topo.strides, topo.n_stages - 1) if cfg.deep_supervision else None
    aug = default_augmentation_settings(config.patch_size, config.mirror_axes)
    per_rank_bs, oversample = dist_utils.rank_batch(cfg.batch_size, cfg.oversample_foreground, ctx.rank, ctx.world_size)
    seed = cfg.seed + 7919 * start_epoch  # resumed runs draw fresh patches
    train_factory = functools.partial(PatchSampler, data_folder, train_ids, config.patch_size, per_rank_bs,
                                      oversample, initial_patch_size=aug.initial_patch_size,
                                      rare_class_bias=cfg.rare_class_bias, roi_jitter=config.is_roi)
    val_factory = functools.partial(PatchSampler, data_folder, val_ids, config.patch_size, per_rank_bs, oversample)
    pin = device.type == "cuda"
    train_loader = BackgroundLoader(train_factory, build_train_transforms_from_settings(aug, ds_scales), cfg.num_workers,
                                    seed, rank=ctx.rank, pin_memory=pin)
    val_loader = BackgroundLoader(val_factory, build_val_transforms(ds_scales), max(0, min(1, cfg.num_workers)),
                                  seed + 10**6, rank=ctx.rank, pin_memory=pin)
    return train_loader, val_loader


def train_step(state: TrainState, batch: dict) -> float:
    """One optimiser step on one batch; returns the loss."""
    data, tgt = _to(batch, state.device)
    state.optimizer.zero_grad(set_to_none=True)
    with autocast(state.device.type, state.amp_dtype):
        out = state.model(data)
    loss = state.loss_fn(_as_float(out), tgt)
    params = state.model.parameters()
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(params, state.cfg.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, state.cfg.grad_clip)
        state.optimizer.step()
    return loss.item()


def validate_patches(state: TrainState, loader: BackgroundLoader, n: int) -> tuple[list[float], np.ndarray]:
    """``n`` validation batches: their losses and (K-1, 3) (regions: (R, 3)) tp/fp/fn counts of the full-resolution output."""
    cfg = state.cfg
    losses, counts = [], np.zeros((len(cfg.region_classes) if cfg.region_classes is not None else cfg.num_classes - 1, 3))
    state.model.eval()
    with torch.no_grad():
        for _ in range(n):
            data, tgt = _to(next(loader), state.device)
            with autocast(state.device.type, state.amp_dtype):
                out = _as_float(state.model(data))
            losses.append(state.loss_fn(out, tgt).item())
            top = out[0] if isinstance(out, (list, tuple)) else out
            counts += confusion_counts(top.float(), tgt[0] if isinstance(tgt, list) else tgt, state.cfg)
    return losses, counts


def run_epoch(state: TrainState, epoch: int, loaders: tuple[BackgroundLoader, BackgroundLoader]) -> None:
    """Train ``iters_per_epoch`` steps at the epoch's poly LR, validate, log, keep the best checkpoint."""
    cfg, ctx, t0 = state.cfg, dist_utils.context(), time.time()
    lr = poly_lr(cfg.lr, epoch, cfg.epochs, cfg.poly_exponent)
    for g in state.optimizer.param_groups:
        g["lr"] = lr
    state.model.train()
    losses: list[float] = []
    bar = tqdm(range(cfg.iters_per_epoch), desc=f"fold {cfg.fold} epoch {epoch + 1}/{cfg.epochs}", unit="it",
               disable=not ctx.is_main, leave=False)
    for _ in bar:
        losses.append(train_step(state, next(loaders[0])))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    val_losses, counts = validate_patches(state, loaders[1], cfg.val_iters)
    counts = dist_utils.all_reduce_sum(counts, state.device)
    train_loss = float(dist_utils.all_reduce_mean(float(np.mean(losses)), state.device))
    val_loss = float(dist_utils.all_reduce_mean(float(np.mean(val_losses)) if val_losses else float("nan"), state.device))
    per_class = dice_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])
    mean_dice = float(np.nanmean(per_class)) if np.any(~np.isnan(per_class)) else 0.0
    ema = mean_dice if not state.progress.history["ema_pseudo_dice"] else 0.9 * state.progress.ema + 0.1 * mean_dice
    if ctx.is_main:
        tqdm.write(state.progress.log_epoch(epoch, train_loss=train_loss, val_loss=val_loss, pseudo_dice=mean_dice,
                                            ema_pseudo_dice=ema, lr=lr, epoch_time_s=time.time() - t0,
                                            pseudo_dice_per_class=[None if np.isnan(d) else float(d) for d in per_class]))
        state.progress.plot()
    if ema > state.best_ema:
        state.best_ema = ema
        state.save(BEST, epoch + 1, 0.0)


def warm_up(state: TrainState, loaders: tuple[BackgroundLoader, BackgroundLoader], n_train: int = 6, n_val: int = 3) -> budget_rules.EpochCost:
    """Real training steps at the initial LR, then validation batches; seconds per iteration of each,
    the first step of each (allocation, kernel choice) not counted. Averaged over DDP ranks."""
    for g in state.optimizer.param_groups:
        g["lr"] = state.cfg.lr
    state.model.train()
    stamps = []
    for _ in range(n_train):
        train_step(state, next(loaders[0]))
        stamps.append(time.perf_counter())
    t_val = time.perf_counter()
    validate_patches(state, loaders[1], 1)
    t0 = time.perf_counter()
    validate_patches(state, loaders[1], n_val - 1)
    train_s = (stamps[-1] - stamps[0]) / (n_train - 1)
    val_s = (time.perf_counter() - t0) / (n_val - 1) if n_val > 1 else time.perf_counter() - t_val
    train_s = dist_utils.all_reduce_mean(train_s, state.device)
    val_s = dist_utils.all_reduce_mean(val_s, state.device)
    return budget_rules.EpochCost(float(train_s), float(val_s))


def plan_budget(state: TrainState, loaders: tuple[BackgroundLoader, BackgroundLoader], elapsed_s) -> None:
    """Warm up, then set what the budget decides (``cfg.budget_sets``: epochs, and iterations per
    epoch and validation iterations when not given) so the schedule ends within the budget."""
    cfg = state.cfg
    assert cfg.time_budget_s is not None
    cost = warm_up(state, loaders)
    remaining = dist_utils.all_reduce_mean(cfg.time_budget_s - elapsed_s(), state.device)
    if "iters_per_epoch" in cfg.budget_sets:
        cfg.iters_per_epoch = budget_rules.budget_iters_per_epoch(remaining, cost.train_iter_s)
    if "val_iters" in cfg.budget_sets:
        cfg.val_iters = budget_rules.default_val_iters(cfg.iters_per_epoch)
    cfg.epochs = budget_rules.epochs_that_fit(remaining, cost.epoch_s(cfg.iters_per_epoch, cfg.val_iters))
    cfg.measured_train_iter_s, cfg.measured_val_iter_s = round(cost.train_iter_s, 4), round(cost.val_iter_s, 4)
    if dist_utils.context().is_main:
        print(f"time budget {cfg.time_budget_s:.0f} s: start-up + warm-up {elapsed_s():.0f} s, {cost.train_iter_s:.2f} s per "
              f"training and {cost.val_iter_s:.2f} s per validation iteration -> {cfg.epochs} epochs x {cfg.iters_per_epoch} "
              f"iterations (+ {cfg.val_iters} validation iterations)", flush=True)


def adjust_to_budget(state: TrainState, done: int, epoch_times: list[float], elapsed_s: float) -> None:
    """After ``done`` epochs: correct the planned epochs from the measured epoch time (mean of the last 3)."""
    cfg = state.cfg
    assert cfg.time_budget_s is not None
    epoch_s = dist_utils.all_reduce_mean(float(np.mean(epoch_times[-3:])), state.device)
    remaining = dist_utils.all_reduce_mean(cfg.time_budget_s - elapsed_s, state.device)
    new = budget_rules.replan(done, cfg.epochs, remaining, epoch_s)
    if new != cfg.epochs and dist_utils.context().is_main:
        tqdm.write(f"time budget: {remaining:.0f} s left at {epoch_s:.1f} s per epoch -> {new} epochs instead of {cfg.epochs}")
    cfg.epochs = new


def _save_training_json(cfg: TrainingConfig, out_dir: Path) -> None:
    if dist_utils.context().is_main:
        save_json(asdict(cfg), out_dir / "training.json")


def train_fold(cfg: TrainingConfig, config: ConfigurationPlan, data_folder: Path, out_dir: Path,
               train_ids: list[str], val_ids: list[str], restart: bool = False) -> torch.nn.Module:
    """Train one fold into ``out_dir`` (``training.json``, ``checkpoint_final.pth`` at the end); returns the network."""
    clock0 = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist_utils.context(cfg.device).is_main:
        remove_stale_temps(out_dir)  # half-written checkpoints of a killed run
    state = build_state(cfg, config, out_dir)
    resume(state, restart)
    if not dist_utils.same_on_all_ranks(state.start_epoch, state.device):
        raise AutosegError(f"{out_dir / LATEST}: the ranks resume from different epochs (a node does not see rank 0's checkpoint); "
                           "put AUTOSEG_RESULTS on a filesystem shared by all nodes, or add --restart")
    state.model = dist_utils.wrap(state.network, state.device)
    loaders = make_loaders(cfg, config, data_folder, train_ids, val_ids, state.start_epoch, state.device)
    done, epoch_times = state.start_epoch, []

    def elapsed() -> float:
        return state.elapsed_before_s + time.time() - clock0

    try:
        with _Stop(), loaders[0], loaders[1]:
            if cfg.time_budget_s is not None and done == 0 and cfg.budget_sets:
                plan_budget(state, loaders, elapsed)
            _save_training_json(cfg, out_dir)
            while done < cfg.epochs:
                t0 = time.time()
                run_epoch(state, done, loaders)
                done += 1
                if done % cfg.checkpoint_every == 0 or done == cfg.epochs:
                    state.save(LATEST, done, elapsed())
                epoch_times.append(time.time() - t0)
                if cfg.time_budget_s is not None and "epochs" in cfg.budget_sets:
                    adjust_to_budget(state, done, epoch_times, elapsed())
    except KeyboardInterrupt:
        done = len(state.progress.history["train_loss"])  # the epochs logged are the ones completed
        state.save(LATEST, done, elapsed())
        if dist_utils.context().is_main:
            print(f"interrupted: saved {out_dir / LATEST} after {done} epochs; re-run the same command to resume")
        raise
    state.save(FINAL, done, elapsed())
    _save_training_json(cfg, out_dir)
    if dist_utils.context().is_main:
        budget = f" (time budget {cfg.time_budget_s:.0f} s)" if cfg.time_budget_s is not None else ""
        print(f"fold {cfg.fold}: trained {done} epochs in {elapsed():.0f} s{budget}", flush=True)
    dist_utils.barrier()
    return state.network
