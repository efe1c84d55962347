"""Intensity normalisation schemes (see :class:`autoseg.planners.plans.ChannelNormalization`)."""

from __future__ import annotations

import numpy as np

from autoseg.planners.plans import ChannelNormalization


def normalize_channel(x: np.ndarray, norm: ChannelNormalization) -> np.ndarray:
    """Normalise one channel (any shape) in place where possible; returns float32.

    * ``ct``: clip to the dataset's foreground [0.5, 99.5] percentiles, subtract the
      foreground mean, divide by the foreground std (all in HU, from the fingerprint).
    * ``window``: clip to [lower, upper] and scale to [0, 1] (e.g. -200..200 HU).
    * ``zscore``: per-image mean/std (a constant image becomes all zeros).
    * ``rescale``: divide by 255 (8-bit grey levels).
    """
    x = np.asarray(x, dtype=np.float32)
    if norm.scheme == "ct":
        np.clip(x, norm.lower, norm.upper, out=x)
        x -= norm.mean
        x /= max(norm.std, 1e-8)
    elif norm.scheme == "window":
        np.clip(x, norm.lower, norm.upper, out=x)
        x -= norm.lower
        x /= max(norm.upper - norm.lower, 1e-8)
    elif norm.scheme == "zscore":
        m, s = float(x.mean()), float(x.std())
        x -= m
        x /= max(s, 1e-8)
    elif norm.scheme == "rescale":
        x /= 255.0
    else:
        raise ValueError(f"unknown normalisation scheme {norm.scheme!r}")
    return x


def normalize(data: np.ndarray, norms: list[ChannelNormalization]) -> np.ndarray:
    """(C, ...) float32 array, each channel with its own scheme.

    Makes one C-contiguous float32 copy of ``data`` (which may be a transposed view; the
    input is never modified) and normalises it in place.
    """
    data = np.array(data, dtype=np.float32, copy=True, order="C")
    for c, n in enumerate(norms):
        normalize_channel(data[c], n)  # float32 view: normalised in place
    return data
