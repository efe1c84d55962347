"""``autoseg train``: resolve dataset/configuration/folds, then train each fold in turn.

Fold validation after training (predict + evaluate) is downstream of this stage: the train
command in :mod:`autoseg.crossval` passes it in as ``after_fold``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from autoseg import paths
from autoseg.datasets.splits import fold_cases, load_or_create_splits, parse_folds
from autoseg.errors import AutosegError
from autoseg.io.json_io import load_json
from autoseg.model.checkpoint import LATEST
from autoseg.model.training_config import TrainingConfig
from autoseg.networks.builder import NETWORKS
from autoseg.networks.device import DEVICES, resolve_device
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.case_store import list_preprocessed_cases
from autoseg.trainers import distributed as dist_utils
from autoseg.trainers.budget import default_val_iters, parse_duration
from autoseg.trainers.class_weights import frequency_class_weights
from autoseg.trainers.losses import LOSS_NAMES

AfterFold = Callable[[str, str, str, list[str], str, str], object]  # (dataset, configuration, fold, val ids, device, amp)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", default=None, help="dataset (name, DatasetNNN_Name, id); optional when only one exists")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="2d, 3d_fullres, 3d_lowres or 3d_cascade_fullres")
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="fold(s): 0, '0 1 2', 0..4 or all (default 0)")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="train each fold within this time (90s, 30m, 2h, 1h30m): a warm-up measures s/iteration and the "
                        "epochs are set to fit; fold validation afterwards is extra (its time is printed)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 1000, or what fits --time-budget); wins over the budget")
    p.add_argument("--iters-per-epoch", type=int, default=None,
                   help="training iterations per epoch (default 250; with --time-budget: about 1/25 of what fits, 10..250)")
    p.add_argument("--val-iters", type=int, default=None, help="validation iterations per epoch (default: 1/5 of --iters-per-epoch)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the plan's")
    p.add_argument("--device", choices=DEVICES, default=None, help="default: best available")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="mixed precision: auto = on CUDA, and bfloat16 on CPUs with native bf16 (avx512_bf16/amx)")
    p.add_argument("--network", choices=sorted(NETWORKS), default="unet")
    p.add_argument("--loss", default="dice_ce", choices=LOSS_NAMES)
    p.add_argument("--oversample-foreground", type=float, default=None,
                   help="share of patches centred on a foreground voxel (default 0.5 for --target cpu plans and "
                        "3d_roi_fullres, else 0.33, nnU-Net's)")
    p.add_argument("--rare-class-bias", type=float, default=None,
                   help="share of foreground-centred patches put on the rarest class, e.g. the tumour "
                        "(default 1.0 for 3d_roi_fullres and --target cpu plans, else 0: nnU-Net's uniform choice)")
    p.add_argument("--class-weights", type=float, nargs="+", default=None, help="per label, background first (e.g. 0 1 2); default for dice_ce on --target cpu plans and "
                        "3d_roi_fullres: rarer foreground classes weighted up to the largest one's voxel count (cap 100)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=float, default=None, help="default 1e-2 (sgd) / 3e-4 (adam)")
    p.add_argument("--pretrained", default=None, help="checkpoint whose matching weights initialise the network")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("-np", "--num-processes", "--num-workers", dest="num_workers", type=int, default=None,
                   help="data loading worker processes (default: cores - 1; 0 loads in the main process)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="save checkpoint_latest every N epochs (default 50)")
    p.add_argument("--restart", action="store_true", help="ignore checkpoint_latest and start over")
    p.add_argument("--no-validation", action="store_true", help="skip predicting the validation cases at the end")


RESUME_KEYS = ("network", "loss", "class_weights", "optimizer", "num_input_channels", "num_classes")


def _check_resumable(out, cfg: TrainingConfig, restart: bool) -> None:
    """Refuse to resume a fold folder that was trained with another network/loss/patch."""
    old = out / "training.json"
    if restart or not (out / LATEST).is_file() or not old.is_file():
        return
    prev = load_json(old)
    diff = [k for k in RESUME_KEYS if k in prev and prev[k] != asdict(cfg)[k]]
    if diff:
        raise AutosegError(f"{out}: was trained with other settings ({', '.join(f'{k}={prev[k]}' for k in diff)}); "
                           f"add --restart to overwrite it, or set AUTOSEG_RESULTS to another folder for this experiment")


@dataclass
class TrainingData:
    """What every fold of one ``autoseg train`` call trains on."""

    dataset: str
    plans: Plans
    config: ConfigurationPlan
    folder: Path
    in_channels: int
    cases: list[str]
    splits: list[dict[str, list[str]]]


def training_data(dataset: str | None, configuration: str, seed: int) -> TrainingData:
    """Resolve the dataset, its plan and preprocessed cases (building a cascade's inputs), and the splits."""
    name = paths.resolve_dataset(dataset)
    pp = paths.preprocessed_dataset_dir(name)
    if not (pp / "plans.json").is_file():
        raise AutosegError(f"{pp / 'plans.json'}: not found; run 'autoseg plan_and_preprocess -d {name}' first")
    plans = Plans.load(pp / "plans.json")
    if configuration not in plans.configurations:
        raise AutosegError(f"configuration {configuration!r} is not in {pp / 'plans.json'} (planned: {', '.join(plans.configurations)})")
    config = plans.configurations[configuration]
    folder, in_channels = pp / config.data_identifier, plans.num_input_channels
    if config.is_cascade:
        from autoseg.trainers.cascade import prepare_cascade_data
        folder = pp / prepare_cascade_data(name, plans, configuration)
        in_channels += plans.label_definition.num_classes - 1
    cases = list_preprocessed_cases(folder)
    if not cases:
        raise AutosegError(f"{folder}: no preprocessed cases; run 'autoseg plan_and_preprocess -d {name} -c {configuration}'")
    splits = load_or_create_splits(pp / "splits_final.json", cases, seed=seed)
    return TrainingData(name, plans, config, folder, in_channels, cases, splits)


def budget_settings(a: argparse.Namespace) -> dict:
    """Epochs, iterations and the time budget from the command line; what is not given and the
    budget decides is listed in ``budget_sets`` (``--epochs`` wins over the budget)."""
    budget = parse_duration(a.time_budget) if a.time_budget else None
    iters = a.iters_per_epoch or 250
    sets = [] if budget is None else [k for k, given in (("epochs", a.epochs), ("iters_per_epoch", a.iters_per_epoch),
                                                         ("val_iters", a.val_iters)) if given is None]
    if "epochs" not in sets:  # the budget only sizes epochs; without that it decides nothing
        sets = []
    return dict(epochs=a.epochs or 1000, iters_per_epoch=iters,
                val_iters=a.val_iters if a.val_iters is not None else default_val_iters(iters),
                time_budget_s=budget, budget_sets=sets)


def default_rare_class_bias(data: TrainingData) -> float:
    """1.0 for the two-stage model's stage 2 and for CPU-sized plans (every foreground-forced patch on
    the rarest class present: short schedules must meet the small lesions often), else 0 (nnU-Net's
    uniform choice among the classes present)."""
    return 1.0 if is_short_schedule_plan(data) else 0.0


def default_class_weights(a: argparse.Namespace, data: TrainingData) -> list[float] | None:
    """``--class-weights``, else for ``dice_ce`` on CPU-sized plans and the two-stage model's stage 2
    the inverse foreground frequencies (:mod:`autoseg.trainers.class_weights`), else None (nnU-Net's)."""
    regions = data.plans.label_definition.has_regions  # sigmoid outputs: no CE
    if a.class_weights is not None or a.loss != "dice_ce" or regions or not is_short_schedule_plan(data):
        return a.class_weights
    weights = frequency_class_weights(data.folder, data.cases, data.plans.num_classes)
    if weights is not None:
        print(f"CE class weights {', '.join(f'{w:g}' for w in weights)} (rarer foreground classes lifted to the "
              f"largest one's voxel count; --class-weights to choose others)")
    return weights


def is_short_schedule_plan(data: TrainingData) -> bool:
    """CPU-sized plans and the two-stage model's stage 2: trained in minutes, so rare classes get help."""
    return data.config.is_roi or getattr(data.plans, "target", "gpu") == "cpu"


def fold_config(a: argparse.Namespace, data: TrainingData, fold: str, device: str,
                weights: list[float] | None) -> TrainingConfig:
    """The fold's :class:`TrainingConfig` from the command line, the plan and the run's class
    ``weights`` (:func:`default_class_weights`, counted once for all folds)."""
    labels = data.plans.label_definition
    return TrainingConfig(
        dataset=data.dataset, configuration=a.configuration, fold=fold, num_input_channels=data.in_channels,
        num_classes=data.plans.num_classes, network=a.network, loss=a.loss, class_weights=weights,
        optimizer=a.optimizer, lr=a.lr if a.lr is not None else (1e-2 if a.optimizer == "sgd" else 3e-4),
        **budget_settings(a), batch_size=a.batch_size or data.config.batch_size, seed=a.seed,
        num_workers=default_workers() if a.num_workers is None else a.num_workers, device=device, amp=a.amp,
        checkpoint_every=a.checkpoint_every, pretrained=a.pretrained, previous_stage=data.config.previous_stage,
        rare_class_bias=a.rare_class_bias if a.rare_class_bias is not None else default_rare_class_bias(data),
        oversample_foreground=a.oversample_foreground if a.oversample_foreground is not None
        else (0.5 if is_short_schedule_plan(data) else 0.33),
        ignore_class=labels.ignore_class, region_classes=labels.region_classes if labels.has_regions else None)


def _copy_plan_artefacts(data: TrainingData, configuration: str) -> None:
    """plans.json, dataset.json and the fingerprint beside the folds: the trained model's plan."""
    pp, conf_dir = paths.preprocessed_dataset_dir(data.dataset), paths.results_dataset_dir(data.dataset) / configuration
    conf_dir.mkdir(parents=True, exist_ok=True)
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if (pp / f).is_file():
            shutil.copyfile(pp / f, conf_dir / f)


def run_train(a: argparse.Namespace, after_fold: AfterFold | None = None) -> int:
    """Train the requested folds in turn; ``after_fold`` (fold validation) runs on the main rank after each."""
    data = training_data(a.dataset, a.configuration, a.seed)
    device = resolve_device(a.device)
    ctx = dist_utils.context(device)  # under torchrun: backend from --device (nccl for cuda, gloo for cpu)
    main_rank = ctx.is_main
    if main_rank:
        _copy_plan_artefacts(data, a.configuration)
    pending: list[tuple[str, list[str]]] = []  # folds whose validation rank 0 still runs
    from autoseg.trainers.loop import train_fold
    weights = default_class_weights(a, data)
    for fold in parse_folds(a.folds):
        train_ids, val_ids = fold_cases(data.splits, fold, data.cases)
        cfg = fold_config(a, data, fold, device, weights)
        out = paths.fold_dir(data.dataset, a.configuration, fold)
        out.mkdir(parents=True, exist_ok=True)
        _check_resumable(out, cfg, a.restart)
        if main_rank:
            print(f"training {data.dataset} {a.configuration} fold {fold}: {len(train_ids)} train / {len(val_ids)} val cases, "
                  f"patch {data.config.patch_size}, batch {cfg.batch_size}, {cfg.network}, {device}")
        train_fold(cfg, data.config, data.folder, out, train_ids, val_ids, restart=a.restart)
        if after_fold is not None and main_rank:
            pending.append((fold, val_ids))
        if ctx.world_size == 1:
            _run_pending(pending, after_fold, data.dataset, a.configuration, device, a.amp)
    # torchrun: rank 0 validates after the last fold, so no rank waits on it inside a collective
    _run_pending(pending, after_fold, data.dataset, a.configuration, device, a.amp)
    return 0


def _run_pending(pending: list[tuple[str, list[str]]], after_fold: AfterFold | None, dataset: str, configuration: str,
                 device: str, amp: str) -> None:
    """Run ``after_fold`` (fold validation) for each pending fold, emptying ``pending``."""
    while pending and after_fold is not None:
        fold, val_ids = pending.pop(0)
        after_fold(dataset, configuration, fold, val_ids, device, amp)
