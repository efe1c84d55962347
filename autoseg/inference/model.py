"""A trained model on disk: one configuration's folds, and packing models into one zip.

Layout read (written by ``autoseg train`` / ``find_best_configuration``)::

    <results>/<Dataset>/
        best_configuration.json            optional: {"configuration": "3d_fullres", ...}
        <configuration>/
            plans.json  dataset.json  dataset_fingerprint.json   copies made by the trainer
            postprocessing.json            optional (model selection)
            fold_<f>/checkpoint_final.pth  checkpoint_best.pth  training.json

A zip made by :func:`export_model` holds the same tree under ``<Dataset>/`` and is used by
``autoseg predict --model model.zip`` after a safe extraction (entries that would land
outside the target folder are refused).
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from autoseg import paths
from autoseg.datasets.layout import DatasetInfo, load_dataset_info
from autoseg.errors import AutosegError
from autoseg.evaluation.postprocessing import RULES_FILE, PostprocessingRules, load_rules
from autoseg.inference.onnx_export import ONNX_FILE, ONNX_INFO_FILE, write_onnx
from autoseg.io.json_io import load_dataclass, load_json
from autoseg.networks.builder import build_network
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.trainers.checkpoint import load_checkpoint, strip_module_prefix
from autoseg.trainers.training_config import TrainingConfig

DEFAULT_CONFIGURATION = "3d_fullres"
BEST_FILE = "best_configuration.json"
_FOLD = re.compile(r"^fold_(.+)$")


@dataclass
class FoldModel:
    fold: str
    checkpoint: Path
    training: TrainingConfig


def _fold_key(fold: str) -> tuple[int, str]:
    return (0, f"{int(fold):06d}") if fold.isdigit() else (1, fold)


def default_configurations(dataset_dir: Path) -> list[str]:
    """What ``predict`` uses without ``-c``: the ensemble members that ``best_configuration.json``
    names (model selection chose an ensemble), else its configuration, else 3d_fullres.

    Example: ``{"configuration": "2d", "ensemble": ["2d", "3d_fullres"]}`` -> ``["2d", "3d_fullres"]``.
    """
    best = Path(dataset_dir) / BEST_FILE
    if best.is_file():
        data = load_json(best)
        if isinstance(data, dict):
            if isinstance(data.get("ensemble"), list) and len(data["ensemble"]) > 1:
                return [str(c) for c in data["ensemble"]]
            if data.get("configuration"):
                return [str(data["configuration"])]
    return [DEFAULT_CONFIGURATION]


def ensemble_rules_file(dataset_dir: Path, configurations: Sequence[str]) -> Path:
    """Where model selection puts the postprocessing rules of an ensemble of ``configurations``."""
    return Path(dataset_dir) / "crossval" / ("ensemble__" + "__".join(configurations)) / RULES_FILE


class TrainedModel:
    """Plans, labels, postprocessing and fold checkpoints of ``<results>/<D>/<configuration>``.

    ``folds=None`` takes every ``fold_*`` folder holding the chosen checkpoint; named folds
    must all have it. ``checkpoint`` is ``final`` or ``best``.
    """

    def __init__(self, dataset_dir: Path, configuration: str, folds: Sequence[str] | None = None, checkpoint: str = "final"):
        self.dataset_dir = Path(dataset_dir)
        self.configuration = configuration
        self.folder = self.dataset_dir / configuration
        if not self.folder.is_dir():
            trained = sorted(p.name for p in self.dataset_dir.iterdir() if p.is_dir() and any(p.glob("fold_*"))) \
                if self.dataset_dir.is_dir() else []
            raise AutosegError(f"{self.folder}: no trained '{configuration}' model (trained: {', '.join(trained) or 'none'}); "
                               f"train it or choose one with -c")
        self.plans = Plans.load(self._artefact("plans.json"))
        if configuration not in self.plans.configurations:
            raise AutosegError(f"{self.folder / 'plans.json'}: has no configuration '{configuration}'")
        self.config: ConfigurationPlan = self.plans.configurations[configuration]
        self.dataset_info: DatasetInfo = load_dataset_info(self._artefact("dataset.json").parent)
        rules = self.folder / RULES_FILE
        self.postprocessing: PostprocessingRules | None = load_rules(rules) if rules.is_file() else None
        if checkpoint not in ("final", "best"):
            raise AutosegError(f"--checkpoint {checkpoint}: choose final or best")
        self.checkpoint = checkpoint
        self.folds = self._find_folds(folds, f"checkpoint_{checkpoint}.pth")

    def previous_stage_model(self) -> "TrainedModel | None":
        """A cascade's first stage (every fold with the same checkpoint kind); None for other configurations."""
        prev = self.config.previous_stage
        return TrainedModel(self.dataset_dir, prev, None, self.checkpoint) if prev else None

    def _artefact(self, name: str) -> Path:
        """The trainer's copy in the configuration folder, else the preprocessed folder's."""
        for p in (self.folder / name, paths.preprocessed_dataset_dir(self.dataset_dir.name) / name):
            if p.is_file():
                return p
        raise AutosegError(f"{self.folder / name}: missing; it is copied there by 'autoseg train' (re-run training setup)")

    def _find_folds(self, folds: Sequence[str] | None, ck_name: str) -> list[FoldModel]:
        found = {m.group(1): p for p in self.folder.iterdir() if p.is_dir() and (m := _FOLD.match(p.name))}

        def weights(fd: Path) -> Path | None:  # the checkpoint, else an ONNX network (export_model --format onnx)
            return next((p for p in (fd / ck_name, fd / ONNX_FILE) if p.is_file()), None)
        if folds is None:
            chosen = sorted((f for f, p in found.items() if weights(p)), key=_fold_key)
            if not chosen:
                raise AutosegError(f"{self.folder}: no fold has {ck_name}; finish training (autoseg train) or use --checkpoint best")
        else:
            chosen = [str(f) for f in folds]
            for f in chosen:
                if not weights(self.folder / f"fold_{f}"):
                    raise AutosegError(f"{self.folder / f'fold_{f}' / ck_name}: not found; train fold {f} or leave it out of -f")
        out = []
        for f in chosen:
            fd = self.folder / f"fold_{f}"
            tj = fd / "training.json"
            training = load_dataclass(TrainingConfig, tj) if tj.is_file() else TrainingConfig(
                dataset=self.dataset_dir.name, configuration=self.configuration, fold=f,
                num_input_channels=self.plans.num_input_channels, num_classes=self.plans.num_classes)
            out.append(FoldModel(f, weights(fd), training))  # type: ignore[arg-type]
        return out

    @property
    def fold_names(self) -> list[str]:
        return [f.fold for f in self.folds]

    @property
    def num_input_channels(self) -> int:
        """Channels the networks take (image channels + the cascade's one-hot channels)."""
        return self.folds[0].training.num_input_channels

    @property
    def num_image_channels(self) -> int:
        return self.dataset_info.num_channels

    @property
    def num_classes(self) -> int:
        return len(self.plans.labels)

    @property
    def patch_size(self) -> list[int]:
        p = self.folds[0].training.patch_size
        return list(p) if p else list(self.config.patch_size)

    def load_networks(self, device: str | torch.device = "cpu") -> list[nn.Module]:
        """One eval-mode network per fold, weights loaded with ``weights_only=True``."""
        nets = []
        for f in self.folds:
            if f.checkpoint.suffix == ".onnx":
                raise AutosegError(f"{f.checkpoint}: an ONNX network; predict it with --runtime onnxruntime or openvino")
            ck = load_checkpoint(f.checkpoint)
            net = build_network(f.training.network, self.config.topology, f.training.num_input_channels,
                                f.training.num_classes, deep_supervision=False)
            try:
                net.load_state_dict(strip_module_prefix(ck["network"]))
            except (RuntimeError, KeyError) as e:
                raise AutosegError(f"{f.checkpoint}: weights do not fit a '{f.training.network}' network for this plan "
                                   f"({str(e).splitlines()[0][:120]}); check training.json or retrain") from None
            nets.append(net.to(device).eval())
        return nets


def _add(zf: zipfile.ZipFile, path: Path, arcname: str) -> None:
    if path.is_file():
        zf.write(path, arcname)


def _add_onnx(zf: zipfile.ZipFile, net: nn.Module, model: TrainedModel, fold: FoldModel, arc_dir: str) -> None:
    with tempfile.TemporaryDirectory(prefix="autoseg_onnx_") as d:
        write_onnx(net, fold.training.num_input_channels, fold.training.num_classes, model.patch_size, Path(d), fold.checkpoint.name)
        for name in (ONNX_FILE, ONNX_INFO_FILE):
            zf.write(Path(d) / name, f"{arc_dir}/{name}")


def export_model(dataset: str, out_zip: Path | str, configurations: Sequence[str] | None = None,
                 folds: Sequence[str] | None = None, checkpoint: str = "final", fmt: str = "torch") -> Path:
    """Zip the chosen configurations' folds (checkpoint + training.json) with plans, dataset.json,
    fingerprint, postprocessing.json and best_configuration.json; returns the zip's path.

    ``fmt="onnx"``: each fold's network as ``network.onnx`` (+ ``network_onnx.json``) instead of
    its checkpoint (see :mod:`autoseg.inference.onnx_export`).

    ``configurations=None``: what ``predict`` would use (:func:`default_configurations`: the
    chosen ensemble's members with its postprocessing rules, or one configuration).
    """
    ddir = paths.results_dataset_dir(dataset)
    confs = list(configurations) if configurations else default_configurations(ddir)
    members = list(confs)
    for conf in list(confs):  # a cascade needs its first stage
        prev = TrainedModel(ddir, conf, folds, checkpoint).config.previous_stage
        if prev and prev not in confs:
            confs.append(prev)
    out_zip = Path(out_zip).expanduser()
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(f".{out_zip.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        _add(zf, ddir / BEST_FILE, f"{dataset}/{BEST_FILE}")
        _add(zf, ddir / "segment_codes.json", f"{dataset}/segment_codes.json")  # DICOM SEG codes (inference/seg_output.py)
        if len(members) > 1:
            rules = ensemble_rules_file(ddir, members)
            _add(zf, rules, rules.relative_to(ddir.parent).as_posix())
        for conf in confs:
            model = TrainedModel(ddir, conf, folds, checkpoint)
            for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
                for src in (model.folder / name, paths.preprocessed_dataset_dir(dataset) / name):
                    if src.is_file():
                        zf.write(src, f"{dataset}/{conf}/{name}")
                        break
            _add(zf, model.folder / RULES_FILE, f"{dataset}/{conf}/{RULES_FILE}")
            nets = model.load_networks("cpu") if fmt == "onnx" else [None] * len(model.folds)
            for f, net in zip(model.folds, nets):
                if net is not None:
                    _add_onnx(zf, net, model, f, f"{dataset}/{conf}/fold_{f.fold}")
                else:
                    _add(zf, f.checkpoint, f"{dataset}/{conf}/fold_{f.fold}/{f.checkpoint.name}")
                _add(zf, f.checkpoint.parent / "training.json", f"{dataset}/{conf}/fold_{f.fold}/training.json")
    tmp.replace(out_zip)
    return out_zip


def extract_model(zip_path: Path | str, target: Path | str) -> Path:
    """Extract a model zip into ``target``; returns the dataset folder (the zip's single top folder).

    Entries with absolute paths or ``..`` that would land outside ``target`` are refused.
    """
    zip_path, target = Path(zip_path).expanduser(), Path(target).resolve()
    if not zip_path.is_file():
        raise AutosegError(f"{zip_path}: model zip not found")
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise AutosegError(f"{zip_path}: not a zip file; pass a file made by 'autoseg export_model'") from None
    with zf:
        names = zf.namelist()
        for n in names:
            dest = (target / n).resolve()
            if n.startswith(("/", "\\")) or (dest != target and target not in dest.parents):
                raise AutosegError(f"{zip_path}: entry '{n}' would be written outside the extraction folder; refusing this zip")
        tops = {n.split("/", 1)[0] for n in names if n.strip("/")}
        if len(tops) != 1:
            raise AutosegError(f"{zip_path}: expected one dataset folder at the top, found {sorted(tops) or 'none'}; "
                               f"pass a file made by 'autoseg export_model'")
        zf.extractall(target)
    return target / tops.pop()
