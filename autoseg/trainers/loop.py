"""Train one fold: a short loop that composes sampler, augmentation, network, loss,
optimiser, checkpoint store and progress log — each testable on its own.

Resume: when ``checkpoint_latest.pth`` exists (and ``restart`` is False) the network,
optimiser, grad scaler, history and epoch counter are restored and training continues
with the same schedule. SIGINT/SIGTERM save ``checkpoint_latest.pth`` before exiting.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from autoseg.errors import AutosegError
from autoseg.networks.builder import build_network
from autoseg.networks.precision import amp_dtype as resolve_amp_dtype, autocast, enable_cudnn_benchmark, make_grad_scaler
from autoseg.planners.plans import ConfigurationPlan
from autoseg.trainers import distributed as dist_utils
from autoseg.trainers.augmentation import (build_train_transforms_from_settings, build_val_transforms,
                                           deep_supervision_scales, default_augmentation_settings)
from autoseg.trainers.checkpoint import load_checkpoint, save_checkpoint, strip_module_prefix
from autoseg.trainers.loader import BackgroundLoader
from autoseg.trainers.losses import build_loss
from autoseg.trainers.progress import ProgressLog
from autoseg.trainers.sampling import PatchSampler
from autoseg.trainers.training_config import TrainingConfig

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


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> np.ndarray:
    """(K-1, 3) true positives, false positives, false negatives per foreground class (argmax)."""
    pred = logits.argmax(1)
    tgt = target[:, 0].long()
    out = np.zeros((num_classes - 1, 3))
    for c in range(1, num_classes):
        p, t = pred == c, tgt == c
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


def train_fold(cfg: TrainingConfig, config: ConfigurationPlan, data_folder: Path, out_dir: Path,
               train_ids: list[str], val_ids: list[str], restart: bool = False) -> torch.nn.Module:
    """Train one fold into ``out_dir`` (``checkpoint_final.pth`` at the end); returns the trained network."""
    ctx = dist_utils.context(cfg.device)
    device = torch.device(cfg.device if cfg.device != "cuda" or ctx.world_size == 1 else f"cuda:{ctx.local_rank}")
    enable_cudnn_benchmark(device)
    torch.manual_seed(cfg.seed + ctx.rank)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    ds_scales = deep_supervision_scales(topo.strides, n_heads) if cfg.deep_supervision else None
    loss_fn = build_loss(cfg.loss, cfg.num_classes, config.batch_dice, cfg.class_weights, n_heads)

    history, start_epoch, best_ema = None, 0, -math.inf
    latest = out_dir / "checkpoint_latest.pth"
    if latest.is_file() and not restart:
        ck = load_checkpoint(latest, map_location=device)
        network.load_state_dict(strip_module_prefix(ck["network"]))
        if ck.get("optimizer"):
            optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("grad_scaler"):
            scaler.load_state_dict(ck["grad_scaler"])
        history, start_epoch = ck.get("history"), int(ck["meta"]["epoch"])
        best_ema = float(ck["meta"].get("best_ema", -math.inf))
        if ctx.is_main:
            print(f"resuming fold {cfg.fold} from epoch {start_epoch}")
    elif ctx.is_main and (out_dir / "training_log.txt").exists():
        (out_dir / "training_log.txt").unlink()
    if not dist_utils.same_on_all_ranks(start_epoch, device):
        raise AutosegError(f"{latest}: the ranks resume from different epochs (a node does not see rank 0's checkpoint); "
                           "put AUTOSEG_RESULTS on a filesystem shared by all nodes, or add --restart")
    model = dist_utils.wrap(network, device)
    progress = ProgressLog(out_dir, history)

    aug = default_augmentation_settings(config.patch_size)
    per_rank_bs, oversample = dist_utils.rank_batch(cfg.batch_size, cfg.oversample_foreground, ctx.rank, ctx.world_size)
    seed = cfg.seed + 7919 * start_epoch  # resumed runs draw fresh patches
    train_factory = functools.partial(PatchSampler, data_folder, train_ids, config.patch_size, per_rank_bs,
                                      oversample, initial_patch_size=aug.initial_patch_size)
    val_factory = functools.partial(PatchSampler, data_folder, val_ids, config.patch_size, per_rank_bs, oversample)
    train_loader = BackgroundLoader(train_factory, build_train_transforms_from_settings(aug, ds_scales), cfg.num_workers,
                                    seed, rank=ctx.rank, pin_memory=device.type == "cuda")
    val_loader = BackgroundLoader(val_factory, build_val_transforms(ds_scales), max(0, min(1, cfg.num_workers)),
                                  seed + 10**6, rank=ctx.rank, pin_memory=device.type == "cuda")
    epoch = start_epoch

    def save(name: str, ep: int) -> None:
        if ctx.is_main:
            meta = {"epoch": ep, "fold": cfg.fold, "configuration": cfg.configuration, "network": cfg.network,
                    "best_ema": best_ema if math.isfinite(best_ema) else -1.0}
            save_checkpoint(out_dir / name, network.state_dict(), meta, optimizer.state_dict(),
                            scaler.state_dict() if scaler else None, progress.history)

    try:
        with _Stop(), train_loader, val_loader:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.time()
                lr = poly_lr(cfg.lr, epoch, cfg.epochs, cfg.poly_exponent)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                model.train()
                losses = []
                bar = tqdm(range(cfg.iters_per_epoch), desc=f"fold {cfg.fold} epoch {epoch + 1}/{cfg.epochs}",
                           unit="it", disable=not ctx.is_main, leave=False)
                for _ in bar:
                    data, tgt = _to(next(train_loader), device)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast(device.type, amp_dtype):
                        out = model(data)
                    loss = loss_fn(_as_float(out), tgt)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        optimizer.step()
                    losses.append(loss.item())
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                model.eval()
                val_losses, counts = [], np.zeros((cfg.num_classes - 1, 3))
                with torch.no_grad():
                    for _ in range(cfg.val_iters):
                        data, tgt = _to(next(val_loader), device)
                        with autocast(device.type, amp_dtype):
                            out = _as_float(model(data))
                        val_losses.append(loss_fn(out, tgt).item())
                        top = out[0] if isinstance(out, (list, tuple)) else out
                        counts += confusion_counts(top.float(), tgt[0] if isinstance(tgt, list) else tgt, cfg.num_classes)
                counts = dist_utils.all_reduce_sum(counts, device)
                train_loss = float(dist_utils.all_reduce_mean(float(np.mean(losses)), device))
                val_loss = float(dist_utils.all_reduce_mean(float(np.mean(val_losses)) if val_losses else float("nan"), device))
                tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
                with np.errstate(invalid="ignore", divide="ignore"):
                    per_class = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
                mean_dice = float(np.nanmean(per_class)) if np.any(~np.isnan(per_class)) else 0.0
                ema = mean_dice if not progress.history["ema_pseudo_dice"] else 0.9 * progress.ema + 0.1 * mean_dice
                if ctx.is_main:
                    line = progress.log_epoch(epoch, train_loss=train_loss, val_loss=val_loss, pseudo_dice=mean_dice,
                                              ema_pseudo_dice=ema, lr=lr, epoch_time_s=time.time() - t0,
                                              pseudo_dice_per_class=[None if np.isnan(d) else float(d) for d in per_class])
                    tqdm.write(line)
                    progress.plot()
                    if ema > best_ema:
                        best_ema = ema
                        save("checkpoint_best.pth", epoch + 1)
                    if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                        save("checkpoint_latest.pth", epoch + 1)
    except KeyboardInterrupt:
        save("checkpoint_latest.pth", epoch)
        if ctx.is_main:
            print(f"interrupted: saved {latest} at epoch {epoch}; re-run the same command to resume")
        raise
    save("checkpoint_final.pth", cfg.epochs)
    dist_utils.barrier()
    return network
