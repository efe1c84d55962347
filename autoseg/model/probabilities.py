"""Saved class probabilities: written by ``predict --save-probabilities`` and fold validation,
combined by ``autoseg ensemble`` and by model selection's ensemble candidates.

``<case>_probabilities.npz`` holds key ``probabilities``, float16 (K, Z, Y, X) in the input
grid (class k = k-th label value in ascending order, ignore excluded), beside ``<case>_probabilities.json``
(:class:`ProbabilityInfo`: labels, geometry, mask file name). For a region-based dataset channel r
is region r's sigmoid probability (regions in dataset.json order) and masks are made with
nnU-Net's rule (:func:`combine_saved`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.datasets.labels import LabelDefinition, label_definition
from autoseg.io.images import Geometry
from autoseg.io.json_io import atomic_path, load_dataclass, save_json

SUFFIX = "_probabilities.npz"


@dataclass
class ProbabilityInfo:
    """``<case>_probabilities.json``: what the float16 array in the ``.npz`` means."""

    case_id: str
    labels: dict[str, int | list[int]]  # dataset.json's (see autoseg.datasets.labels)
    geometry: Geometry
    segmentation_file: str
    regions_class_order: list[int] | None = None  # region-based: channel r is region r's probability


def probability_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    return Path(out_dir) / f"{case_id}{SUFFIX}", Path(out_dir) / f"{case_id}_probabilities.json"


def cases_with_probabilities(folder: Path) -> set[str]:
    """Case ids with a ``<case>_probabilities.npz`` in ``folder`` (hidden temp files excluded)."""
    return {p.name[: -len(SUFFIX)] for p in Path(folder).glob(f"*{SUFFIX}") if not p.name.startswith(".")}


def write_probabilities(probs: np.ndarray, info: ProbabilityInfo, out_dir: Path) -> None:
    """Write ``<case>_probabilities.npz`` (float16 (K, Z, Y, X)) and its ``.json``."""
    npz, js = probability_paths(out_dir, info.case_id)
    with atomic_path(npz, ".tmp.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, probabilities=np.asarray(probs, dtype=np.float16))
    save_json(info, js)


def load_probabilities(folder: Path, case_id: str) -> tuple[np.ndarray, ProbabilityInfo]:
    """float16 (K, Z, Y, X) probabilities and their description, as written by :func:`write_probabilities`."""
    npz, js = probability_paths(folder, case_id)
    info = load_dataclass(ProbabilityInfo, js)
    with np.load(npz) as f:
        return f["probabilities"], info


def combine(probabilities: Sequence[np.ndarray], weights: Sequence[float], label_values: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of (K, Z, Y, X) probability arrays: (uint8 argmax labels, float32 max probability).

    Computed class by class (memory: two float32 volumes); ties go to the lower class.
    ``label_values[k]`` is class k's label.
    """
    best = labels = None
    for k in range(probabilities[0].shape[0]):
        pk = weighted_channel(probabilities, weights, k)
        if best is None:
            best, labels = pk, np.full(pk.shape, label_values[0], dtype=np.uint8)
            continue
        better = pk > best
        best[better] = pk[better]
        assert labels is not None
        labels[better] = label_values[k]
    assert best is not None and labels is not None
    return labels, best


def weighted_channel(probabilities: Sequence[np.ndarray], weights: Sequence[float], k: int) -> np.ndarray:
    """float32 ``sum_i weights[i] * probabilities[i][k]``."""
    out = np.zeros(probabilities[0].shape[1:], dtype=np.float32)
    for p, w in zip(probabilities, weights):
        out += np.float32(w) * p[k]
    return out


def definition_of(info: ProbabilityInfo) -> LabelDefinition:
    return label_definition(info.labels, info.regions_class_order)


def combine_saved(probabilities: Sequence[np.ndarray], weights: Sequence[float], info: ProbabilityInfo) -> np.ndarray:
    """The uint8 label map of saved probabilities combined with ``weights``, by the labels in ``info``
    (argmax over classes; or, region-based, nnU-Net's rule: each region's combined probability > 0.5,
    painted in ``regions_class_order``)."""
    d = definition_of(info)
    if d.has_regions:
        return d.paint_regions(weighted_channel(probabilities, weights, r) > 0.5 for r in range(probabilities[0].shape[0]))
    return combine(probabilities, weights, d.class_values)[0]
