"""``autoseg train``: resolve dataset/configuration/folds, then train each fold in turn."""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import asdict

import torch

from autoseg import paths
from autoseg.datasets.layout import load_dataset_info
from autoseg.errors import AutosegError
from autoseg.io.json_io import save_json
from autoseg.planners.plans import Plans
from autoseg.preprocessing.case_store import list_preprocessed_cases
from autoseg.trainers import distributed as dist_utils
from autoseg.trainers.splits import fold_cases, load_or_create_splits, parse_folds
from autoseg.trainers.training_config import TrainingConfig


def best_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", default=None, help="dataset (name, DatasetNNN_Name, id); optional when only one exists")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="2d, 3d_fullres, 3d_lowres or 3d_cascade_fullres")
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="fold(s): 0, '0 1 2', 0..4 or all (default 0)")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--iters-per-epoch", type=int, default=250)
    p.add_argument("--val-iters", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=None, help="default: the plan's")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], default=None, help="default: best available")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="mixed precision: auto = on CUDA, and bfloat16 on CPUs with native bf16 (avx512_bf16/amx)")
    p.add_argument("--network", choices=["unet", "resenc", "vnet"], default="unet")
    p.add_argument("--loss", default="dice_ce", choices=["dice_ce", "soft_dice", "gdl", "focal", "gdl_focal", "balanced_ce"])
    p.add_argument("--class-weights", type=float, nargs="+", default=None, help="per label, background first (e.g. 0 1 2)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=float, default=None, help="default 1e-2 (sgd) / 3e-4 (adam)")
    p.add_argument("--pretrained", default=None, help="checkpoint whose matching weights initialise the network")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--num-workers", type=int, default=None, help="data loading processes (default: cores - 1)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="save checkpoint_latest every N epochs (default 50)")
    p.add_argument("--restart", action="store_true", help="ignore checkpoint_latest and start over")
    p.add_argument("--no-validation", action="store_true", help="skip predicting the validation cases at the end")


RESUME_KEYS = ("network", "loss", "class_weights", "optimizer", "num_input_channels", "num_classes", "patch_size")


def _check_resumable(out, cfg: TrainingConfig, restart: bool) -> None:
    """Refuse to resume a fold folder that was trained with another network/loss/patch."""
    old = out / "training.json"
    if restart or not (out / "checkpoint_latest.pth").is_file() or not old.is_file():
        return
    from autoseg.io.json_io import load_json
    prev = load_json(old)
    diff = [k for k in RESUME_KEYS if k in prev and prev[k] != asdict(cfg)[k]]
    if diff:
        raise AutosegError(f"{out}: was trained with other settings ({', '.join(f'{k}={prev[k]}' for k in diff)}); "
                           f"add --restart to overwrite it, or set AUTOSEG_RESULTS to another folder for this experiment")


def run(a: argparse.Namespace) -> int:
    name = paths.resolve_dataset(a.dataset)
    pp = paths.preprocessed_dataset_dir(name)
    if not (pp / "plans.json").is_file():
        raise AutosegError(f"{pp / 'plans.json'}: not found; run 'autoseg plan_and_preprocess -d {name}' first")
    plans = Plans.load(pp / "plans.json")
    if a.configuration not in plans.configurations:
        raise AutosegError(f"configuration {a.configuration!r} is not in {pp / 'plans.json'} (planned: {', '.join(plans.configurations)})")
    config = plans.configurations[a.configuration]
    data_folder = pp / config.data_identifier
    in_channels = plans.num_input_channels
    if config.previous_stage:
        from autoseg.trainers.cascade import prepare_cascade_data
        data_folder = pp / prepare_cascade_data(name, plans, a.configuration)
        in_channels += len(plans.labels) - 1
    cases = list_preprocessed_cases(data_folder)
    if not cases:
        raise AutosegError(f"{data_folder}: no preprocessed cases; run 'autoseg plan_and_preprocess -d {name} -c {a.configuration}'")
    splits = load_or_create_splits(pp / "splits_final.json", cases)
    info = load_dataset_info(pp)
    device = a.device or best_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise AutosegError("--device cuda: no CUDA GPU is visible; use --device cpu")
    conf_dir = paths.results_dataset_dir(name) / a.configuration
    conf_dir.mkdir(parents=True, exist_ok=True)
    ctx = dist_utils.context(device)  # under torchrun: backend from --device (nccl for cuda, gloo for cpu)
    if ctx.is_main:
        for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            if (pp / f).is_file():
                shutil.copyfile(pp / f, conf_dir / f)
    from autoseg.trainers.loop import train_fold
    pending: list[tuple[str, list[str]]] = []  # (fold, validation cases) that rank 0 still validates
    for fold in parse_folds(a.folds):
        train_ids, val_ids = fold_cases(splits, fold, cases)
        cfg = TrainingConfig(
            dataset=name, configuration=a.configuration, fold=fold, network=a.network, loss=a.loss, class_weights=a.class_weights,
            optimizer=a.optimizer, lr=a.lr if a.lr is not None else (1e-2 if a.optimizer == "sgd" else 3e-4),
            epochs=a.epochs, iters_per_epoch=a.iters_per_epoch, val_iters=a.val_iters,
            batch_size=a.batch_size or config.batch_size, patch_size=list(config.patch_size), seed=a.seed,
            num_workers=default_workers() if a.num_workers is None else a.num_workers, device=device, amp=a.amp,
            num_input_channels=in_channels, num_classes=len(info.labels),
            checkpoint_every=a.checkpoint_every, pretrained=a.pretrained, previous_stage=config.previous_stage)
        out = paths.fold_dir(name, a.configuration, fold)
        out.mkdir(parents=True, exist_ok=True)
        _check_resumable(out, cfg, a.restart)
        if ctx.is_main:
            save_json(asdict(cfg), out / "training.json")
            print(f"training {name} {a.configuration} fold {fold}: {len(train_ids)} train / {len(val_ids)} val cases, "
                  f"patch {config.patch_size}, batch {cfg.batch_size}, {cfg.network}, {device}")
        train_fold(cfg, config, data_folder, out, train_ids, val_ids, restart=a.restart)
        if not a.no_validation and ctx.is_main:
            pending.append((fold, val_ids))
        if ctx.world_size == 1:
            _validate(pending, name, a.configuration, device, a.amp)
    _validate(pending, name, a.configuration, device, a.amp)  # torchrun: after the last fold, no rank waits on it in a collective
    return 0


def _validate(pending: list[tuple[str, list[str]]], name: str, configuration: str, device: str, amp: str) -> None:
    """Predict and evaluate each pending fold's validation cases (rank 0 only), emptying ``pending``."""
    from autoseg.trainers.validation import validate_fold
    while pending:
        fold, val_ids = pending.pop(0)
        validate_fold(name, configuration, fold, val_ids, device, amp=amp)
