"""Crop to the nonzero region of the image (nnU-Net's first preprocessing step)."""

from __future__ import annotations

import numpy as np


def nonzero_bbox(data: np.ndarray) -> list[list[int]]:
    """Bounding box ``[[z0, z1], [y0, y1], [x0, x1]]`` (half-open) of voxels nonzero in any channel.

    ``data`` is (C, Z, Y, X). An all-zero image gives the full extent (nothing is cropped).
    For CT, air is -1000 HU, so the box is usually the whole image.
    """
    mask = np.any(data != 0, axis=0)
    if not mask.any():
        return [[0, s] for s in mask.shape]
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append([int(hits[0]), int(hits[-1]) + 1])
    return out


def crop(arr: np.ndarray, bbox: list[list[int]]) -> np.ndarray:
    """``arr[..., z0:z1, y0:y1, x0:x1]`` for arrays with leading non-spatial axes."""
    sl = tuple(slice(a, b) for a, b in bbox)
    return arr[(Ellipsis,) + sl]
