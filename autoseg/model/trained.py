"""A trained model on disk: one configuration's plan, labels, postprocessing and fold checkpoints.

Layout read (written by ``autoseg train`` / ``find_best_configuration``)::

    <results>/<Dataset>/
        best_configuration.json            optional: {"configuration": "3d_fullres", ...}
        <configuration>/
            plans.json  dataset.json  dataset_fingerprint.json   copies made by the trainer
            postprocessing.json            optional (model selection)
            fold_<f>/checkpoint_final.pth  checkpoint_best.pth  training.json
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from autoseg import paths
from autoseg.datasets.layout import DatasetInfo, load_dataset_info
from autoseg.errors import AutosegError
from autoseg.io.json_io import load_dataclass
from autoseg.model.checkpoint import checkpoint_name, load_checkpoint, strip_module_prefix
from autoseg.model.postprocessing import PostprocessingRules, load_rules
from autoseg.model.onnx_export import ONNX_FILE
from autoseg.model.training_config import TrainingConfig
from autoseg.networks.builder import build_network
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.paths import POSTPROCESSING_FILE

_FOLD = re.compile(r"^fold_(.+)$")


@dataclass
class FoldModel:
    fold: str
    checkpoint: Path
    training: TrainingConfig


def _fold_key(fold: str) -> tuple[int, str]:
    return (0, f"{int(fold):06d}") if fold.isdigit() else (1, fold)


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
        rules = self.folder / POSTPROCESSING_FILE
        self.postprocessing: PostprocessingRules | None = load_rules(rules) if rules.is_file() else None
        if checkpoint not in ("final", "best"):
            raise AutosegError(f"--checkpoint {checkpoint}: choose final or best")
        self.checkpoint = checkpoint
        self.folds = self._find_folds(folds, checkpoint_name(checkpoint))

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
        return self.plans.num_classes

    @property
    def patch_size(self) -> list[int]:
        """The plan's patch size (the plan the folds were trained with is copied beside them)."""
        return list(self.config.patch_size)

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
