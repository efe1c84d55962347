"""Dice from voxel counts: one definition for the training log's pseudo-Dice, postprocessing
trials and evaluation (a shared home below ``trainers`` and ``evaluation``)."""

from __future__ import annotations

import numpy as np


def dice_from_counts(tp, fp, fn) -> np.ndarray:
    """``2 tp / (2 tp + fp + fn)`` elementwise, NaN where the denominator is 0 (both masks empty).

    Example: tp=6, fp=2, fn=4 -> 12/18 = 0.667; tp=fp=fn=0 -> nan.
    """
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)
