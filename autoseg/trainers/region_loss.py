"""Region-based training's loss (nnU-Net's ``DC_and_BCE_loss``): soft Dice + binary cross-entropy
per region, on one sigmoid output per region.

The target stays the class map the rest of the pipeline uses (``(B, 1, *spatial)`` integer, see
:mod:`autoseg.datasets.labels`); it is turned into region masks here, so sampling, augmentation and
the deep-supervision targets need no special case (nearest downsampling commutes with the
conversion). Voxels equal to ``ignore_index`` count in neither term. Example: regions
``[[1, 2], [2]]`` (liver incl. tumour, tumour) on target ``[0, 1, 2]`` give masks
``[[0, 1, 1], [0, 0, 1]]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.trainers.distributed import all_gather_with_grad


def region_targets(target: torch.Tensor, region_classes: Sequence[Sequence[int]],
                   ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, 1, *spatial) classes -> float (B, R, *spatial) region masks and the valid mask (B, 1, *spatial) or None."""
    t = target.long()
    masks = torch.cat([torch.isin(t, torch.as_tensor(list(r), device=t.device)) for r in region_classes], 1)
    valid = None if ignore_index is None else (t != ignore_index)
    return masks.float(), valid


def region_confusion_counts(logits: torch.Tensor, target: torch.Tensor, region_classes: Sequence[Sequence[int]],
                            ignore_index: int | None) -> list[list[float]]:
    """(R, 3) tp, fp, fn per region of ``sigmoid(logits) > 0.5`` (logit > 0), ignored voxels left out."""
    y, valid = region_targets(target, region_classes, ignore_index)
    p = logits > 0
    y = y > 0.5
    if valid is not None:
        p, y = p & valid, y & valid
    return [[float((p[:, r] & y[:, r]).sum()), float((p[:, r] & ~y[:, r]).sum()), float((~p[:, r] & y[:, r]).sum())]
            for r in range(len(region_classes))]


class RegionDiceBCELoss(nn.Module):
    """``BCE + (1 - mean_r soft Dice_r)`` over R sigmoid outputs (every region counts; none is background).

    BCE is the mean over valid voxels and regions; soft Dice sums over the spatial axes (and the
    batch with ``batch_dice``; with ``ddp`` over every rank's batch too), smooth 1e-5 as nnU-Net.
    Edge case: a batch with every voxel ignored gives a loss of 0 (with a gradient graph).
    """

    def __init__(self, region_classes: Sequence[Sequence[int]], batch_dice: bool, ignore_index: int | None = None,
                 smooth: float = 1e-5, ddp: bool = False):
        super().__init__()
        self.region_classes = [list(r) for r in region_classes]
        self.batch_dice, self.ignore_index, self.smooth, self.ddp = batch_dice, ignore_index, smooth, ddp

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(self.region_classes):
            raise ValueError(f"{logits.shape[1]} outputs for {len(self.region_classes)} regions")
        y, valid = region_targets(target, self.region_classes, self.ignore_index)
        w = torch.ones_like(y[:, :1]) if valid is None else valid.to(y.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        bce = (bce * w).sum() / (w.sum() * y.shape[1]).clamp_min(1e-8)
        p = torch.sigmoid(logits) * w
        y = y * w
        axes = ([0] if self.batch_dice else []) + list(range(2, logits.ndim))
        counts = torch.stack([(p * y).sum(axes), p.sum(axes), y.sum(axes)])
        if self.batch_dice and self.ddp:
            counts = all_gather_with_grad(counts).sum(0)
        dice = (2 * counts[0] + self.smooth) / (counts[1] + counts[2] + self.smooth).clamp_min(1e-8)
        return bce + (1 - dice.mean())
