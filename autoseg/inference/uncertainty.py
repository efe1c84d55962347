"""Voxel-wise uncertainty from the TTA and fold passes, without storing the passes.

A *pass* is one (fold network, mirroring) prediction. Per case ``autoseg predict
--uncertainty`` writes, in the input's geometry:

* ``<case>_uncertainty.nii.gz``: variance over passes of the foreground probability
  ``1 - p_background`` (population variance; 0 = all passes agree; at most 0.25);
* ``<case>_entropy.nii.gz``: predictive entropy ``-sum_k p_k ln p_k`` (nats) of the mean
  probabilities (0 = certain; at most ln K);
* ``<case>_uncertainty.json``: :class:`UncertaintySummary`.

How the variance is collected: within each window the passes are combined with Welford's
running mean/M2 per class (window-sized tensors only); the window's variance is then
blended into one full-size map with the same Gaussian weights as the probabilities. Where
windows overlap this is the weighted mean of the windows' variances.

Volumes per pass (the seed report's volume variation coefficient, std/mean of the predicted
volume over TTA samples): each pass's window-wise argmax is counted with the blend weights,
so a pass's volume is its hard-label voxel count with overlapping windows averaged. Label
sets: foreground (all labels > 0, e.g. liver = 1 and tumour 2) and each label alone.

Region-based models (one sigmoid per region): the foreground probability is the largest region
probability, a pass's labels are its regions painted in ``regions_class_order`` (as the mask is),
and the entropy is the sum of the regions' binary entropies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from autoseg.datasets.labels import LabelDefinition
from autoseg.inference.sliding_window import Window


def volume_names(labels: LabelDefinition) -> dict[int, str]:
    """Names of the collector's volume columns 1..: each class's label name, or (regions) the name of
    the value painted for each region."""
    if labels.has_regions:
        assert labels.regions_class_order is not None
        return {k + 1: labels.mask_names[v] for k, v in enumerate(labels.regions_class_order)}
    return {k: n for k, n in enumerate(labels.output_names) if k > 0}


class UncertaintyCollector:
    """The :class:`~autoseg.inference.sliding_window.PassHook` behind ``--uncertainty``.

    After prediction: ``variance`` (Z, Y, X) float tensor on the results device (crop it
    with ``valid`` like the probabilities) and ``pass_volumes_vox`` (n_passes, K) voxel counts:
    column 0 = foreground, column k = label k.
    """

    def __init__(self, num_classes: int, regions: bool = False):
        self.regions = regions  # (B, R, ...) sigmoid outputs: see the module doc
        self.num_classes = num_classes + 1 if regions else num_classes
        self.variance: torch.Tensor | None = None
        self.pass_volumes_vox: torch.Tensor | None = None
        self.valid: Window | None = None

    def begin(self, shape: Sequence[int], valid: Window, n_passes: int, device: torch.device, dtype: torch.dtype) -> None:
        self.variance = torch.zeros(list(shape), dtype=dtype, device=device)
        self.pass_volumes_vox = torch.zeros(n_passes, self.num_classes, dtype=torch.float64)
        self.valid = valid
        self._valid_1d = []
        for a, n in enumerate(shape):
            m = torch.zeros(int(n), dtype=torch.float32, device=device)
            m[valid[a]] = 1
            self._valid_1d.append(m)

    def start_batch(self) -> None:
        self._n = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
        self._labels: list[torch.Tensor] = []

    def add_pass(self, probs: torch.Tensor) -> None:
        """Welford update with one pass's (B, K, *window) probabilities; keep its argmax (regions: painted)."""
        if self.regions:
            painted = torch.zeros_like(probs[:, 0], dtype=torch.uint8)
            for r in range(probs.shape[1]):
                painted[probs[:, r] > 0.5] = r + 1
            probs = torch.cat([1 - probs.max(1, keepdim=True).values, probs], 1)  # channel 0: not foreground
        self._n += 1
        if self._mean is None:
            self._mean = probs.clone()
            self._m2 = torch.zeros_like(probs)
        else:
            assert self._m2 is not None
            delta = probs - self._mean
            self._mean += delta / self._n
            self._m2 += delta * (probs - self._mean)
        self._labels.append(painted if self.regions else probs.argmax(1).to(torch.uint8))

    def _valid_mask(self, win: Window) -> torch.Tensor:
        out = None
        for a in range(3):
            f = self._valid_1d[a][win[a]]
            shape = [1, 1, 1]
            shape[a] = f.shape[0]
            out = f.reshape(shape) if out is None else out * f.reshape(shape)
        assert out is not None
        return out

    def end_batch(self, windows: Sequence[Window], weights: torch.Tensor) -> None:
        assert self.variance is not None and self.pass_volumes_vox is not None and self._m2 is not None
        var_fg = self._m2[:, 0] / self._n  # var(1 - p_bg) == var(p_bg)
        for b, win in enumerate(windows):
            self.variance[win] += (var_fg[b] * weights[b]).to(self.variance.dtype)
            w = weights[b] * self._valid_mask(win)
            flat_w = w.reshape(-1).double()
            counts = torch.stack([torch.bincount(labels[b].reshape(-1).long(), flat_w, minlength=self.num_classes)
                                  for labels in self._labels]).cpu()  # (n_passes, K)
            counts[:, 0] = counts[:, 1:].sum(1)  # column 0: foreground instead of background
            self.pass_volumes_vox += counts


def entropy_map(probs: torch.Tensor, slab_voxels: int = 1 << 24, binary: bool = False) -> torch.Tensor:
    """Predictive entropy (nats) of (K, Z, Y, X) probabilities, as float32 (Z, Y, X); 0 ln 0 = 0.
    ``binary`` (region-based models: each channel its own sigmoid): the sum of the channels' binary entropies."""
    out = torch.empty(probs.shape[1:], dtype=torch.float32)
    per_z = max(1, int(np.prod(probs.shape[2:], dtype=np.int64)))
    step = max(1, slab_voxels // per_z)
    for z0 in range(0, probs.shape[1], step):
        p = probs[:, z0:z0 + step].float()
        h = torch.special.xlogy(p, p) + (torch.special.xlogy(1 - p, 1 - p) if binary else 0)
        out[z0:z0 + step] = -h.sum(0)
    return out


@dataclass
class UncertaintySummary:
    """Per-case uncertainty numbers (``<case>_uncertainty.json``).

    ``mean_variance_in_foreground`` / ``max_...``: over voxels predicted as any label > 0;
    NaN when nothing is predicted. ``volume_ml_per_pass``: per label set (``foreground``
    and each label name), the predicted volume of every pass in mL; ``volume_variation``
    the coefficient std/mean of those volumes (NaN when the mean is 0).
    """

    case_id: str
    n_passes: int
    n_foreground_voxels: int
    mean_variance_in_foreground: float
    max_variance_in_foreground: float
    mean_entropy_in_foreground: float
    max_entropy_in_foreground: float
    volume_variation: dict[str, float] = field(default_factory=dict)
    volume_ml_per_pass: dict[str, list[float]] = field(default_factory=dict)


def _mean_max(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    if not mask.any():
        return math.nan, math.nan
    v = values[mask]
    return float(v.mean(dtype=np.float64)), float(v.max())


def summarize(case_id: str, seg: np.ndarray, variance: np.ndarray, entropy: np.ndarray, pass_volumes_vox: np.ndarray,
              voxel_ml: float, label_names: dict[int, str]) -> UncertaintySummary:
    """Summary from the exported maps (all (Z, Y, X), input grid) and the per-pass volumes.

    ``pass_volumes_vox`` is (n_passes, K) in the preprocessed grid whose voxel volume is
    ``voxel_ml``; ``label_names`` maps label value -> name (background excluded).
    """
    fg = seg > 0
    mv, xv = _mean_max(variance, fg)
    me, xe = _mean_max(entropy, fg)
    vols = np.asarray(pass_volumes_vox, dtype=np.float64) * voxel_ml
    names = ["foreground"] + [label_names.get(k, f"label_{k}") for k in range(1, vols.shape[1])]
    per_pass = {n: [round(float(v), 4) for v in vols[:, j]] for j, n in enumerate(names)}
    variation = {}
    for j, n in enumerate(names):
        m = vols[:, j].mean()
        variation[n] = float(vols[:, j].std() / m) if m > 0 else math.nan
    return UncertaintySummary(case_id=case_id, n_passes=int(vols.shape[0]), n_foreground_voxels=int(fg.sum()),
                              mean_variance_in_foreground=mv, max_variance_in_foreground=xv,
                              mean_entropy_in_foreground=me, max_entropy_in_foreground=xe,
                              volume_variation=variation, volume_ml_per_pass=per_pass)
