"""``best_configuration.json``: what model selection chose, and what ``predict`` runs without ``-c``.

Written by ``autoseg find_best_configuration`` (``evaluation/model_selection.py``) into
``<results>/<dataset>/``; read by ``predict`` and ``export_model``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from autoseg import paths
from autoseg.io.json_io import load_dataclass

DEFAULT_CONFIGURATION = "3d_fullres"


@dataclass
class RankedCandidate:
    """One configuration or ensemble (``ensemble__a__b``) scored on cross-validation."""

    name: str
    mean_foreground_dice: float
    per_label_dice: dict[str, float] = field(default_factory=dict)


@dataclass
class BestConfiguration:
    """The winner: ``ensemble`` lists the members when an ensemble won, else it is None.

    Example: ``{"configuration": "2d", "ensemble": ["2d", "3d_fullres"], "folds": [0, 1, 2, 3, 4],
    "mean_foreground_dice": 0.93, "postprocessing": ".../postprocessing.json", ...}``
    """

    configuration: str
    ensemble: list[str] | None
    folds: list[int]
    mean_foreground_dice: float
    postprocessing: str
    postprocessing_rules: dict[str, object] = field(default_factory=dict)
    ranking: list[RankedCandidate] = field(default_factory=list)
    predict_command: str = ""

    @property
    def members(self) -> list[str]:
        return list(self.ensemble) if self.ensemble else [self.configuration]


def load_best_configuration(dataset_dir: Path) -> BestConfiguration | None:
    path = Path(dataset_dir) / paths.BEST_CONFIGURATION_FILE
    return load_dataclass(BestConfiguration, path) if path.is_file() else None


def default_configurations(dataset_dir: Path) -> list[str]:
    """What ``predict`` uses without ``-c``: the ensemble members that ``best_configuration.json``
    names (model selection chose an ensemble), else its configuration, else 3d_fullres.

    Example: ``{"configuration": "2d", "ensemble": ["2d", "3d_fullres"]}`` -> ``["2d", "3d_fullres"]``.
    """
    best = load_best_configuration(dataset_dir)
    return best.members if best is not None else [DEFAULT_CONFIGURATION]


def ensemble_rules_file(dataset_dir: Path, configurations: Sequence[str]) -> Path:
    """Where model selection puts the postprocessing rules of an ensemble of ``configurations``."""
    return Path(dataset_dir) / "crossval" / paths.ensemble_name(list(configurations)) / paths.POSTPROCESSING_FILE
