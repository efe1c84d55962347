"""Default cross-entropy class weights for short (CPU-budget) schedules: rare classes lifted.

With nnU-Net's unweighted Dice + CE, a class that holds ~2 % of the foreground voxels (a liver
tumour) is first pushed to zero everywhere while the network separates organ from background, and
comes back only after thousands of iterations: more than a CPU budget of minutes gives. Weighting
each foreground class's CE by ``n_largest / n_class`` (the voxel count of the most frequent
foreground class over the class's own, capped at ``MAX_WEIGHT``; background 1) gives every
foreground class as much pull in the CE as the largest one from the first iteration. On the demo
data (liver : tumour voxels about 49 : 1) the tumour is found with it and not at all without
(docs/benchmarks.md, "What was tried for the tumour"); weights that decay to 1 with the learning
rate lost it again, so they stay constant.

Example::

    weights = frequency_class_weights(folder, ["liver_000", "liver_001"], num_classes=3)  # [1.0, 1.0, 48.74]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_WEIGHT = 100.0
STRIDE = 2  # every 2nd voxel per axis: 1/8 of the reads; the ratio of large classes barely moves


def class_voxel_counts(folder: Path, cases: list[str], num_classes: int) -> np.ndarray:
    """Voxels per class 0..num_classes-1 over the cases' preprocessed label maps (every ``STRIDE``-th
    voxel per spatial axis; -1, outside the body crop, is not counted)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for case in cases:
        seg = np.load(Path(folder) / f"{case}_seg.npy", mmap_mode="r")
        sub = np.asarray(seg[(slice(None),) + (slice(None, None, STRIDE),) * (seg.ndim - 1)]).ravel()
        counts += np.bincount(sub[sub >= 0].astype(np.int64), minlength=num_classes)[:num_classes]
    return counts


def frequency_class_weights(folder: Path, cases: list[str], num_classes: int) -> list[float] | None:
    """``[1, n_max / n_1, ..., n_max / n_{K-1}]`` capped at ``MAX_WEIGHT`` (n over foreground classes);
    None when fewer than two foreground classes occur (nothing to balance)."""
    counts = class_voxel_counts(folder, cases, num_classes)[1:].astype(np.float64)
    present = counts > 0
    if num_classes < 3 or present.sum() < 2:
        return None
    ratio = np.where(present, counts.max() / np.maximum(counts, 1), 1.0)
    return [1.0] + [round(float(min(MAX_WEIGHT, r)), 2) for r in ratio]
