"""Postprocessing rules: chosen by model selection (``evaluation/postprocessing.py``) on
cross-validation predictions, applied by ``predict`` and ``ensemble`` to every mask.

``postprocessing.json`` (:class:`PostprocessingRules`) says whether to keep only the largest
connected component of all foreground together, for which labels to keep only that
label's largest component, and (region-based datasets) for which regions -- several label
values together, e.g. liver incl. tumour ``[1, 2]`` -- to keep only the region's largest
component. Components are 26-connected (8 in 2D). Voxels removed by either
step become background (0), as in nnU-Net, not the surrounding label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg.io.json_io import load_dataclass, save_json


@dataclass
class PostprocessingRules:
    """What :func:`apply_postprocessing` does; saved as ``postprocessing.json``.

    ``evidence`` records the mean Dice per label before/after each trial so a reader can see
    why a step was kept or rejected (``{"foreground_lcc": {"before": {"1": ..}, "after": {..}}}``).
    """

    keep_largest_foreground: bool = False
    keep_largest_for_labels: list[int] = field(default_factory=list)
    keep_largest_for_regions: list[list[int]] = field(default_factory=list)
    evidence: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def save_rules(rules: PostprocessingRules, path: Path | str) -> None:
    save_json(rules, path)


def load_rules(path: Path | str) -> PostprocessingRules:
    return load_dataclass(PostprocessingRules, path)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected (3D; 8 in 2D) components: (label array with ids 1..n, n)."""
    structure = np.ones((3,) * mask.ndim, dtype=bool)
    labelled, n = ndimage.label(mask, structure=structure)
    return labelled, int(n)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` with everything but its largest 26-connected component removed (ties: lowest id)."""
    labelled, n = connected_components(mask)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def keep_largest_foreground(seg: np.ndarray) -> np.ndarray:
    """Zero every label outside the largest component of ``seg > 0``."""
    out = seg.copy()
    out[(seg > 0) & ~largest_component(seg > 0)] = 0
    return out


def keep_largest_of_label(seg: np.ndarray, label: int | list[int] | tuple[int, ...]) -> np.ndarray:
    """Zero the voxels of ``label`` (or of a region: a list of values, taken together) outside its largest component."""
    mask = np.isin(seg, label) if isinstance(label, (list, tuple)) else seg == label
    out = seg.copy()
    out[mask & ~largest_component(mask)] = 0
    return out


def apply_postprocessing(seg: np.ndarray, rules: PostprocessingRules) -> np.ndarray:
    """Apply ``rules`` to a (Z, Y, X) label map; returns a new array of the same dtype."""
    out = keep_largest_foreground(seg) if rules.keep_largest_foreground else seg.copy()
    for label in rules.keep_largest_for_labels:
        out = keep_largest_of_label(out, int(label))
    for region in rules.keep_largest_for_regions:
        out = keep_largest_of_label(out, [int(v) for v in region])
    return out
