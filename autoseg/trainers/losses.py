"""Segmentation losses, their deep-supervision wrapper and the deep-supervision targets.

Every loss takes ``logits`` (B, K, *spatial) float and ``target`` (B, 1, *spatial) integer
(long or int8, the case store's dtype) and returns a scalar tensor. Targets must lie in
[0, K) except voxels equal to ``ignore_index`` (if given), which contribute nothing; choose
``ignore_index`` as -1 (the case store's "outside the nonzero mask" value) or any value >= K.
A batch in which every voxel is ignored gives a loss of 0 (with a gradient graph).

Batch Dice under DDP: with ``batch_dice`` the soft counts are summed over the batch *and over all
ranks* (a differentiable all_gather, as nnU-Net does), so a plan batch of 2 split as 1 per GPU
over 2 GPUs trains the same Dice as batch 2 on one GPU, not per-sample Dice. :func:`build_loss`
turns this on when a process group of more than one process is running.

Sign convention: Dice losses return ``1 - dice`` (0 for a perfect prediction), where nnU-Net
returns ``-dice``; the gradients are identical, only the logged value is shifted by one.

Deep-supervision scales from the topology
(:func:`autoseg.trainers.augmentation.deep_supervision_scales`)::

    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]       # topology.strides, 4 stages
    cumprod = [[1, 1, 1], [1, 2, 2], [2, 4, 4], [4, 8, 8]]       # resolution of each stage
    scales  = [[1, 1, 1], [1, .5, .5], [.5, .25, .25]]           # 1 / cumprod, bottleneck dropped

one scale per decoder head (``n_stages - 1``), highest resolution first, matching the network's
output list; :func:`downsample_targets` turns one target into that list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoseg.errors import AutosegError
from autoseg.trainers.distributed import all_gather_with_grad, is_distributed
from autoseg.trainers.region_loss import RegionDiceBCELoss


def _prepare(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target as long (B, *spatial) with ignored voxels set to 0, and the valid mask (B, *spatial) or None."""
    if target.ndim != logits.ndim or target.shape[1] != 1 or target.shape[2:] != logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} must be (B, 1, *spatial) for logits {tuple(logits.shape)}")
    t = target[:, 0].long()
    if ignore_index is None:
        return t, None
    valid = t != ignore_index
    return torch.where(valid, t, torch.zeros_like(t)), valid


def _one_hot(t: torch.Tensor, num_classes: int, valid: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """(B, *spatial) long -> (B, K, *spatial) one-hot, zero where not valid."""
    y = F.one_hot(t, num_classes).movedim(-1, 1).to(dtype)
    return y if valid is None else y * valid.unsqueeze(1).to(dtype)


def _sum_axes(x: torch.Tensor, batch: bool) -> list[int]:
    return ([0] if batch else []) + list(range(2, x.ndim))


def _soft_counts(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None, batch: bool, ddp: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft TP, sum of probabilities and sum of the one-hot target per class; 2TP + FP + FN = sum_p + sum_y.

    Softmax probabilities against the one-hot target, ignored voxels zero in both. Shapes (B, K),
    or (K,) when summed over the ``batch`` too; with ``batch`` and ``ddp`` also summed over every
    rank of the process group (differentiable, see :func:`autoseg.trainers.distributed.all_gather_with_grad`).
    """
    t, valid = _prepare(logits, target, ignore_index)
    p = torch.softmax(logits, 1)
    if valid is not None:
        p = p * valid.unsqueeze(1).to(p.dtype)
    y = _one_hot(t, logits.shape[1], valid, p.dtype)
    axes = _sum_axes(p, batch)
    counts = torch.stack([(p * y).sum(axes), p.sum(axes), y.sum(axes)])
    if batch and ddp:
        counts = all_gather_with_grad(counts).sum(0)
    return counts[0], counts[1], counts[2]


def _check_ignore_index(ignore_index: int | None, num_classes: int | None = None) -> None:
    if ignore_index is not None and num_classes is not None and 0 <= ignore_index < num_classes:
        raise AutosegError(f"ignore_index {ignore_index} is a real class (0..{num_classes - 1}); use -1 or >= {num_classes}")


class _DiceBase(nn.Module):
    """The Dice losses' settings and their soft counts (foreground classes only unless ``do_bg``)."""

    def __init__(self, batch_dice: bool, do_bg: bool, smooth: float, ignore_index: int | None, ddp: bool):
        super().__init__()
        self.batch_dice, self.do_bg, self.smooth, self.ignore_index = batch_dice, do_bg, smooth, ignore_index
        self.ddp = ddp

    def counts(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tp, sum_p, sum_y: (B, K') or (K',) (see :func:`_soft_counts`)."""
        tp, sum_p, sum_y = _soft_counts(logits, target, self.ignore_index, self.batch_dice, self.ddp)
        if not self.do_bg:
            tp, sum_p, sum_y = tp[..., 1:], sum_p[..., 1:], sum_y[..., 1:]
        return tp, sum_p, sum_y


class SoftDiceLoss(_DiceBase):
    """``1 - mean_k (2 TP_k + smooth) / (2 TP_k + FP_k + FN_k + smooth)`` on softmax probabilities.

    TP/FP/FN are soft (sums of p, 1 - p against the one-hot target) over the spatial axes, and
    over the batch axis too when ``batch_dice`` (nnU-Net's choice for 3d_fullres; with ``ddp``,
    over the whole batch of all ranks). The mean is
    over foreground classes only unless ``do_bg``. Edge case: a class absent from the reference
    (in a sample, without batch dice) scores ~0 unless its predicted probability mass is ~0.
    """

    def __init__(self, batch_dice: bool, do_bg: bool = False, smooth: float = 1e-5, ignore_index: int | None = None,
                 ddp: bool = False):
        super().__init__(batch_dice, do_bg, smooth, ignore_index, ddp)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, sum_p, sum_y = self.counts(logits, target)
        dc = (2 * tp + self.smooth) / (sum_p + sum_y + self.smooth).clamp_min(1e-8)
        return 1 - dc.mean()


def _cross_entropy(
    logits: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None, weight: torch.Tensor | None
) -> torch.Tensor:
    """Weighted-mean CE over valid voxels: sum(w[t] * nll * valid) / sum(w[t] * valid) (0 if nothing valid)."""
    per_voxel = F.cross_entropy(logits, t, weight=weight, reduction="none")
    w_t = weight[t] if weight is not None else torch.ones_like(per_voxel)
    if valid is not None:
        w_t = w_t * valid.to(w_t.dtype)
        per_voxel = per_voxel * valid.to(per_voxel.dtype)
    return per_voxel.sum() / w_t.sum().clamp_min(1e-8)


def _as_weight(values: Sequence[float] | None, like: torch.Tensor) -> torch.Tensor | None:
    if values is None:
        return None
    if len(values) != like.shape[1]:
        raise AutosegError(f"class weights {list(values)} need one entry per class ({like.shape[1]}), background first")
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


class DiceCELoss(nn.Module):
    """Soft Dice (foreground classes) + cross-entropy, 1:1 — nnU-Net's default loss (``dice_ce``).

    ``class_weights`` (optional, one per class) weight the CE term only (weighted mean).
    """

    def __init__(
        self,
        batch_dice: bool,
        smooth: float = 1e-5,
        ignore_index: int | None = None,
        class_weights: Sequence[float] | None = None,
        weight_dice: float = 1.0,
        weight_ce: float = 1.0,
        ddp: bool = False,
    ):
        super().__init__()
        self.dice = SoftDiceLoss(batch_dice, do_bg=False, smooth=smooth, ignore_index=ignore_index, ddp=ddp)
        self.ignore_index, self.class_weights = ignore_index, class_weights
        self.weight_dice, self.weight_ce = weight_dice, weight_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t, valid = _prepare(logits, target, self.ignore_index)
        ce = _cross_entropy(logits, t, valid, _as_weight(self.class_weights, logits))
        return self.weight_dice * self.dice(logits, target) + self.weight_ce * ce


class GeneralizedDiceLoss(_DiceBase):
    """Sudre et al. 2017: ``1 - (2 sum_k w_k TP_k + s) / (sum_k w_k (sum_p_k + sum_y_k) + s)``.

    ``w_k = 1 / (sum_y_k)^2``, normalised to sum 1 over classes (scale-free, so the small ``smooth``
    stays negligible even when 1/N^2 is ~1e-12). Edge case: a class absent from the reference
    would get an infinite weight; it gets the largest finite weight instead (as MONAI does),
    so predicting it is still penalised without swamping the others. Sums are per sample (then
    averaged) unless ``batch_dice`` (with ``ddp``: over all ranks' batches); background is
    included unless ``do_bg=False``.
    """

    def __init__(self, batch_dice: bool = False, do_bg: bool = True, smooth: float = 1e-5, ignore_index: int | None = None,
                 ddp: bool = False):
        super().__init__(batch_dice, do_bg, smooth, ignore_index, ddp)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, sum_p, sum_y = self.counts(logits, target)  # (B, K') or (K',)
        w = 1.0 / sum_y.detach() ** 2
        finite = torch.isfinite(w)
        w = torch.where(finite, w, torch.zeros_like(w))
        w_max = w.max(dim=-1, keepdim=True).values
        w = torch.where(finite, w, w_max.expand_as(w))
        w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        num = 2 * (w * tp).sum(-1) + self.smooth
        den = (w * (sum_p + sum_y)).sum(-1) + self.smooth
        return 1 - (num / den).mean()


class FocalLoss(nn.Module):
    """Lin et al. 2017, softmax form: mean over valid voxels of ``-alpha_t (1 - p_t)^gamma log p_t``.

    ``alpha``: one weight per class (background first) or None (all 1). Note the plain mean: with
    ``gamma = 0`` and no alpha this equals cross-entropy; with alpha it differs from PyTorch's
    weighted CE, which divides by ``sum alpha_t`` rather than the voxel count.
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None, ignore_index: int | None = None):
        super().__init__()
        self.gamma, self.alpha, self.ignore_index = gamma, alpha, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t, valid = _prepare(logits, target, self.ignore_index)
        log_pt = torch.log_softmax(logits, 1).gather(1, t.unsqueeze(1))[:, 0]
        loss = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        alpha = _as_weight(self.alpha, logits)
        if alpha is not None:
            loss = loss * alpha[t]
        if valid is None:
            return loss.mean()
        v = valid.to(loss.dtype)
        return (loss * v).sum() / v.sum().clamp_min(1.0)


class GDLFocalLoss(nn.Module):
    """``lambda_gdl * GDL + lambda_focal * Focal(alpha=class_weights)`` (MONAI's GeneralizedDiceFocalLoss).

    The liver V-Net report used class weights 0, 1, 2 (background, liver, tumour): background
    voxels then add nothing to the focal term and only the GDL sees them.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        gamma: float = 2.0,
        lambda_gdl: float = 1.0,
        lambda_focal: float = 1.0,
        batch_dice: bool = False,
        ignore_index: int | None = None,
        ddp: bool = False,
    ):
        super().__init__()
        self.gdl = GeneralizedDiceLoss(batch_dice=batch_dice, ignore_index=ignore_index, ddp=ddp)
        self.focal = FocalLoss(gamma=gamma, alpha=class_weights, ignore_index=ignore_index)
        self.lambda_gdl, self.lambda_focal = lambda_gdl, lambda_focal

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_gdl * self.gdl(logits, target) + self.lambda_focal * self.focal(logits, target)


class BalancedCELoss(nn.Module):
    """CE with inverse-frequency class weights from the batch's own target (the 2D report's loss).

    ``w_k = (1 / n_k) / sum_j (1 / n_j)`` over classes present in the batch (absent classes: 0).
    The weighted mean then equals the mean over present classes of each class's mean CE.
    """

    def __init__(self, ignore_index: int | None = None):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t, valid = _prepare(logits, target, self.ignore_index)
        counts = _one_hot(t, logits.shape[1], valid, logits.dtype).sum(_sum_axes(logits, True))
        inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), torch.zeros_like(counts))
        weight = inv / inv.sum().clamp_min(1e-30)
        return _cross_entropy(logits, t, valid, weight)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the network's outputs, nnU-Net's scheme.

    Weights ``1 / 2^i`` for output ``i`` (0 = full resolution), the lowest resolution's weight
    set to 0 (when there is more than one output), normalised to sum 1; e.g. for 4 outputs
    ``[8/14, 4/14, 2/14, 0]``. The weight-0 output is still evaluated (times 0), so its head gets a
    zero gradient rather than none: DistributedDataParallel then needs no ``find_unused_parameters``.
    ``forward`` also accepts a single tensor (deep supervision off) with a tensor or a list of
    targets (the first is used).
    """

    def __init__(self, loss: nn.Module, n_outputs: int):
        super().__init__()
        if n_outputs < 1:
            raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
        self.loss = loss
        w = np.array([1 / 2**i for i in range(n_outputs)])
        if n_outputs > 1:
            w[-1] = 0
        self.weights = (w / w.sum()).tolist()

    def forward(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, targets if isinstance(targets, torch.Tensor) else targets[0])
        if isinstance(targets, torch.Tensor):
            targets = [targets]
        if len(outputs) != len(self.weights) or len(targets) != len(self.weights):
            raise ValueError(
                f"deep supervision expects {len(self.weights)} outputs and targets, got {len(outputs)} and {len(targets)}"
            )
        terms = [w * self.loss(o, t) for w, o, t in zip(self.weights, outputs, targets)]
        return torch.stack(terms).sum()


def downsample_targets(target: torch.Tensor, scales: Sequence[Sequence[float]]) -> list[torch.Tensor]:
    """One target per scale, picking strided voxels (nearest neighbour, no pooling of labels).

    ``target``: (B, 1, *spatial) integer; scale ``[1, .5, .5]`` keeps voxels ``[:, :, :, ::2, ::2]``
    exactly when sizes are divisible (F.interpolate "nearest" samples source index floor(i / scale)).
    The dtype and ignore values (e.g. -1) are preserved. Scale all-ones returns ``target`` itself.
    """
    out = []
    spatial = target.shape[2:]
    for scale in scales:
        if len(scale) != len(spatial):
            raise ValueError(f"scale {list(scale)} has {len(scale)} axes, target has {len(spatial)} spatial axes")
        if all(s == 1 for s in scale):
            out.append(target)
            continue
        size = [int(round(n * s)) for n, s in zip(spatial, scale)]
        down = F.interpolate(target.float(), size=size, mode="nearest")
        out.append(down.to(target.dtype))
    return out


LOSS_NAMES = ("dice_ce", "soft_dice", "gdl", "focal", "gdl_focal", "balanced_ce")
_USES_CLASS_WEIGHTS = ("dice_ce", "focal", "gdl_focal")


def build_loss(
    name: str,
    num_classes: int,
    batch_dice: bool,
    class_weights: list[float] | None = None,
    n_ds_outputs: int = 1,
    ignore_index: int | None = None,
    ddp: bool | None = None,
    regions: list[list[int]] | None = None,
) -> DeepSupervisionLoss:
    """Loss ``name`` wrapped in :class:`DeepSupervisionLoss` (so it takes a tensor or a list of outputs).

    ``class_weights`` (background first, ``num_classes`` entries) are the CE weights for ``dice_ce``,
    alpha for ``focal`` and ``gdl_focal``; other losses reject them rather than ignore them.
    ``n_ds_outputs``: the network's number of outputs (``n_stages - 1`` with deep supervision, else 1).
    ``ddp``: gather batch-Dice counts over all ranks; None (default) = whenever a process group of
    more than one process is running now (every rank must then compute the loss equally often).
    ``regions`` (a region-based dataset: each region's classes): ``dice_ce`` becomes soft Dice + BCE
    per region on ``len(regions)`` sigmoid outputs (:mod:`autoseg.trainers.region_loss`).
    """
    if name not in LOSS_NAMES:
        raise AutosegError(f"unknown loss {name!r}: choose one of {', '.join(LOSS_NAMES)}")
    if class_weights is not None:
        if name not in _USES_CLASS_WEIGHTS:
            raise AutosegError(f"loss {name!r} does not use class weights; remove them or use {', '.join(_USES_CLASS_WEIGHTS)}")
        if len(class_weights) != num_classes:
            raise AutosegError(
                f"class weights {class_weights} need {num_classes} entries (one per label, background first)"
            )
    ddp = is_distributed() if ddp is None else ddp
    if regions is not None:
        if name != "dice_ce" or class_weights is not None:
            raise AutosegError(f"loss {name!r}{' with class weights' if class_weights else ''}: a region-based dataset trains with "
                               f"dice_ce (Dice + binary cross-entropy per region); drop --loss/--class-weights")
        return DeepSupervisionLoss(RegionDiceBCELoss(regions, batch_dice, ignore_index, ddp=ddp), n_ds_outputs)
    _check_ignore_index(ignore_index, num_classes)
    if name == "dice_ce":
        loss: nn.Module = DiceCELoss(batch_dice, ignore_index=ignore_index, class_weights=class_weights, ddp=ddp)
    elif name == "soft_dice":
        loss = SoftDiceLoss(batch_dice, ignore_index=ignore_index, ddp=ddp)
    elif name == "gdl":
        loss = GeneralizedDiceLoss(batch_dice, ignore_index=ignore_index, ddp=ddp)
    elif name == "focal":
        loss = FocalLoss(alpha=class_weights, ignore_index=ignore_index)
    elif name == "gdl_focal":
        loss = GDLFocalLoss(class_weights, batch_dice=batch_dice, ignore_index=ignore_index, ddp=ddp)
    else:
        loss = BalancedCELoss(ignore_index=ignore_index)
    return DeepSupervisionLoss(loss, n_ds_outputs)
