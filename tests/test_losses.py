"""Losses against hand-computed values on tiny tensors; deep supervision weights and targets."""

from __future__ import annotations

import numpy as np
import pytest

from autoseg.trainers.augmentation import deep_supervision_scales
import torch
import torch.nn.functional as F

from autoseg.errors import AutosegError
from autoseg.networks import build_network
from autoseg.planners.plans import NetworkTopology
from autoseg.trainers.losses import (
    BalancedCELoss,
    DeepSupervisionLoss,
    DiceCELoss,
    FocalLoss,
    GDLFocalLoss,
    GeneralizedDiceLoss,
    SoftDiceLoss,
    build_loss,
    downsample_targets,
)

BIG = 50.0  # logits of +-BIG give probabilities 1 and 0 to float precision


def hard_logits(pred: np.ndarray, k: int) -> torch.Tensor:
    """(B, *spatial) predicted labels -> (B, K, *spatial) logits that softmax to one-hot."""
    onehot = np.moveaxis(np.eye(k)[pred], -1, 1)
    return torch.tensor(BIG * (2 * onehot - 1), dtype=torch.float32)


def as_target(labels: np.ndarray, dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.tensor(labels)[:, None].to(dtype)


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture
def tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits (2, 3, 2, 2) and a target containing every class in each sample."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, generator=g)
    target = as_target(np.array([[[0, 1], [2, 1]], [[2, 2], [0, 1]]]))
    return logits, target


def test_perfect_prediction_gives_zero_dice_losses() -> None:
    labels = np.array([[[0, 1], [2, 1]], [[2, 2], [0, 1]]])
    logits, target = hard_logits(labels, 3), as_target(labels)
    for loss in (SoftDiceLoss(batch_dice=False), SoftDiceLoss(batch_dice=True, do_bg=True), DiceCELoss(True), GeneralizedDiceLoss()):
        assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-5)


def test_soft_dice_partial_overlap_by_hand() -> None:
    # sample 0: reference fg at 2 voxels, prediction hits 1 of them: TP=1, FP=0, FN=1 -> dice 2/3
    # sample 1: reference fg at 1 voxel, prediction has it plus 1 more: TP=1, FP=1, FN=0 -> dice 2/3
    # batch dice: TP=2, FP=1, FN=1 -> 4/6; per-sample dice with different numbers checked below
    ref = np.array([[0, 1, 1, 0], [0, 0, 1, 0]])
    pred = np.array([[0, 1, 0, 0], [1, 0, 1, 0]])
    logits, target = hard_logits(pred, 2), as_target(ref)
    assert SoftDiceLoss(batch_dice=False)(logits, target).item() == pytest.approx(1 - 2 / 3, abs=1e-5)
    assert SoftDiceLoss(batch_dice=True)(logits, target).item() == pytest.approx(1 - 4 / 6, abs=1e-5)
    # background included (do_bg): bg sample 0: TP=2, FP=1, FN=0 -> 4/5; sample 1: TP=2, FP=0, FN=1 -> 4/5
    expected = 1 - np.mean([2 / 3, 4 / 5, 2 / 3, 4 / 5])
    assert SoftDiceLoss(batch_dice=False, do_bg=True)(logits, target).item() == pytest.approx(expected, abs=1e-5)
    # unequal samples: batch dice pools counts instead of averaging ratios
    ref2 = np.array([[1, 1, 1, 1], [1, 0, 0, 0]])
    pred2 = np.array([[1, 1, 1, 1], [0, 1, 0, 0]])  # dice 1 and 0; pooled TP=4, FP=1, FN=1 -> 8/10
    lg2, t2 = hard_logits(pred2, 2), as_target(ref2)
    assert SoftDiceLoss(batch_dice=False)(lg2, t2).item() == pytest.approx(0.5, abs=1e-5)
    assert SoftDiceLoss(batch_dice=True)(lg2, t2).item() == pytest.approx(0.2, abs=1e-5)


def test_soft_dice_soft_probabilities_match_numpy(tiny) -> None:
    logits, target = tiny
    p = softmax_np(logits.numpy())
    y = np.moveaxis(np.eye(3)[target[:, 0].numpy()], -1, 1)
    tp, sp, sy = (p * y).sum((2, 3)), p.sum((2, 3)), y.sum((2, 3))
    dc = (2 * tp + 1e-5) / (sp + sy + 1e-5)
    assert SoftDiceLoss(batch_dice=False)(logits, target).item() == pytest.approx(1 - dc[:, 1:].mean(), rel=1e-5)


def test_dice_ce_is_dice_plus_ce_and_class_weights_weight_ce(tiny) -> None:
    logits, target = tiny
    t = target[:, 0].numpy()
    logp = np.log(softmax_np(logits.numpy()))
    nll = -np.take_along_axis(logp, t[:, None], 1)[:, 0]
    dice = SoftDiceLoss(batch_dice=True)(logits, target).item()
    assert DiceCELoss(True)(logits, target).item() == pytest.approx(dice + nll.mean(), rel=1e-5)
    w = np.array([0.0, 1.0, 2.0])
    weighted_ce = (w[t] * nll).sum() / w[t].sum()
    got = DiceCELoss(True, class_weights=[0.0, 1.0, 2.0])(logits, target).item()
    assert got == pytest.approx(dice + weighted_ce, rel=1e-5)
    assert weighted_ce != pytest.approx(nll.mean(), rel=1e-3)  # the weights did change the value


@pytest.mark.parametrize("ignore_index,dtype", [(-1, torch.int8), (3, torch.long)])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_ignore_index_equals_dropping_the_voxels(ignore_index: int, dtype: torch.dtype, batch_dice: bool) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 2, 3, generator=g)
    labels = np.array([[[0, 1, 2], [1, -1, 2]], [[-1, -1, 0], [2, 1, 1]]])
    labels = np.where(labels == -1, ignore_index, labels)
    target = as_target(labels, dtype)
    loss = DiceCELoss(batch_dice, ignore_index=ignore_index)(logits, target).item()
    # reference: keep only valid voxels, as (B, K, N_valid) with 1 spatial axis
    keep = labels != ignore_index
    if batch_dice:
        lg = logits.movedim(1, -1)[torch.tensor(keep)].T[None]  # (1, K, N) pooled over the batch
        tg = torch.tensor(labels[keep])[None, None]
        ref = DiceCELoss(True)(lg, tg).item()
    else:
        # per sample dice, CE averaged over all valid voxels of the batch
        dices, nll = [], []
        for b in range(2):
            lg = logits[b].reshape(3, -1)[:, torch.tensor(keep[b].ravel())][None]
            tg = torch.tensor(labels[b][keep[b]])[None, None]
            dices.append(1 - SoftDiceLoss(False)(lg, tg).item())
            nll.append(F.cross_entropy(lg, tg[:, 0], reduction="none")[0])
        ref = 1 - np.mean(dices) + torch.cat(nll).mean().item()
    assert loss == pytest.approx(ref, rel=1e-5)


def test_everything_ignored_gives_zero_with_gradient() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 1, 2, 2), -1, dtype=torch.int8)
    for loss in (DiceCELoss(True, ignore_index=-1), FocalLoss(ignore_index=-1), BalancedCELoss(ignore_index=-1)):
        value = loss(logits, target)
        value.backward()
        assert value.item() == pytest.approx(0.0, abs=1e-6)
        assert torch.isfinite(logits.grad).all()


def test_focal_gamma_zero_equals_ce_and_formula(tiny) -> None:
    logits, target = tiny
    ce = F.cross_entropy(logits, target[:, 0]).item()
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(ce, rel=1e-6)
    p = softmax_np(logits.numpy())
    t = target[:, 0].numpy()
    pt = np.take_along_axis(p, t[:, None], 1)[:, 0]
    alpha = np.array([0.25, 1.0, 2.0])
    expected = np.mean(-alpha[t] * (1 - pt) ** 2 * np.log(pt))
    assert FocalLoss(gamma=2.0, alpha=[0.25, 1.0, 2.0])(logits, target).item() == pytest.approx(expected, rel=1e-5)
    # focusing: confident right voxels are down-weighted, so focal < CE
    assert FocalLoss(gamma=2.0)(logits, target).item() < ce


def test_generalized_dice_by_hand() -> None:
    # class 0: TP=2, sum_p=2, sum_y=3 (w=1/9); class 1: TP=1, sum_p=2, sum_y=1 (w=1)
    # normalised w = (0.1, 0.9): 1 - 2*(0.2+0.9) / (0.1*5 + 0.9*3) = 1 - 2.2/3.2
    ref, pred = np.array([[0, 0, 0, 1]]), np.array([[0, 0, 1, 1]])
    logits, target = hard_logits(pred, 2), as_target(ref)
    assert GeneralizedDiceLoss()(logits, target).item() == pytest.approx(1 - 2.2 / 3.2, abs=1e-5)
    # class 2 absent from the reference and wrongly predicted at voxel 0: it takes the max weight (1)
    # w = (1/9, 1, 1) / (19/9); TP = (1, 1, 0), sum_p = (1, 2, 1), sum_y = (3, 1, 0)
    logits3 = hard_logits(np.array([[2, 0, 1, 1]]), 3)
    w = np.array([1 / 9, 1, 1]) / (19 / 9)
    expected = 1 - 2 * (w * [1, 1, 0]).sum() / (w * [4, 3, 1]).sum()
    assert GeneralizedDiceLoss()(logits3, target).item() == pytest.approx(expected, abs=1e-5)
    # large classes (w = 1/N^2 ~ 2.5e-9): the weights are normalised, so smooth stays negligible.
    # 20000 voxels per class, half of class 1 predicted as 0: 1 - 2 * (20000 + 10000) / (50000 + 30000)
    ref_big = np.repeat([0, 1], 20000)[None]
    pred_big = np.repeat([0, 0, 1], [20000, 10000, 10000])[None]
    got = GeneralizedDiceLoss()(hard_logits(pred_big, 2), as_target(ref_big)).item()
    assert got == pytest.approx(0.25, abs=1e-4)


def test_gdl_focal_combines_with_lambdas(tiny) -> None:
    logits, target = tiny
    gdl = GeneralizedDiceLoss()(logits, target).item()
    focal = FocalLoss(alpha=[0.0, 1.0, 2.0])(logits, target).item()
    got = GDLFocalLoss([0.0, 1.0, 2.0], lambda_gdl=0.5, lambda_focal=2.0)(logits, target).item()
    assert got == pytest.approx(0.5 * gdl + 2.0 * focal, rel=1e-6)


def test_balanced_ce_is_mean_of_per_class_mean_ce() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 2, 2, generator=g)
    labels = np.array([[[0, 0], [0, 1]], [[0, 0], [0, 1]]])  # class 2 absent, class 0 six times
    nll = -np.take_along_axis(np.log(softmax_np(logits.numpy())), labels[:, None], 1)[:, 0]
    expected = np.mean([nll[labels == 0].mean(), nll[labels == 1].mean()])
    assert BalancedCELoss()(logits, as_target(labels)).item() == pytest.approx(expected, rel=1e-5)


class _MeanOfOutput(torch.nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits.mean()


def test_deep_supervision_weights() -> None:
    ds = DeepSupervisionLoss(_MeanOfOutput(), 4)
    assert ds.weights == pytest.approx([8 / 14, 4 / 14, 2 / 14, 0.0])
    outs = [torch.full((1, 2, 2), v) for v in (1.0, 2.0, 3.0, 100.0)]
    assert ds(outs, [torch.zeros(1, 1, 2)] * 4).item() == pytest.approx((8 * 1 + 4 * 2 + 2 * 3) / 14)
    assert DeepSupervisionLoss(_MeanOfOutput(), 2).weights == [1.0, 0.0]
    single = DeepSupervisionLoss(_MeanOfOutput(), 1)
    assert single.weights == [1.0]
    assert single(torch.full((1, 2, 2), 7.0), torch.zeros(1, 1, 2)).item() == 7.0
    with pytest.raises(ValueError, match="expects 4 outputs"):
        ds(outs[:3], [torch.zeros(1, 1, 2)] * 3)


def test_downsample_targets_picks_strided_voxels() -> None:
    t = torch.arange(2 * 4 * 8 * 8).reshape(2, 1, 4, 8, 8).remainder(5).sub(1).to(torch.int8)  # has -1s
    scales = deep_supervision_scales([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], 3)
    assert scales == [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]]
    out = downsample_targets(t, scales)
    assert out[0] is t
    assert torch.equal(out[1], t[:, :, :, ::2, ::2]) and out[1].dtype == torch.int8
    assert torch.equal(out[2], t[:, :, ::2, ::4, ::4])


@pytest.mark.parametrize("kind", ["unet", "vnet"])
def test_build_loss_with_network_deep_supervision_end_to_end(kind: str) -> None:
    kernels = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    topo = NetworkTopology(4, [4, 8, 8, 8], kernels, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], [1] * 4, [1] * 3)
    torch.manual_seed(0)
    net = build_network(kind, topo, 1, 3)
    x = torch.randn(2, 1, 4, 16, 16)
    target = torch.randint(-1, 3, (2, 1, 4, 16, 16), dtype=torch.int8)
    targets = downsample_targets(target, deep_supervision_scales(topo.strides, topo.n_stages - 1))
    outs = net(x)
    assert [o.shape[2:] for o in outs] == [t.shape[2:] for t in targets] == [(4, 16, 16), (4, 8, 8), (2, 4, 4)]
    loss_fn = build_loss("dice_ce", 3, batch_dice=True, n_ds_outputs=len(outs), ignore_index=-1)
    loss = loss_fn(outs, targets)
    inner = DiceCELoss(True, ignore_index=-1)  # weights 2/3, 1/3, 0
    assert loss.item() == pytest.approx((2 * inner(outs[0], targets[0]) + inner(outs[1], targets[1])).item() / 3, rel=1e-5)
    loss.backward()
    # every parameter takes part (DDP-safe); the lowest-resolution head (weight 0) gets exactly zero
    grads = dict(net.named_parameters())
    assert all(p.grad is not None for p in grads.values())
    zero = [n for n, p in grads.items() if torch.count_nonzero(p.grad) == 0]
    assert len(zero) == 2 and all(n.endswith(("heads.0.weight", "heads.0.bias")) for n in zero)


def test_build_loss_names_and_errors(tiny) -> None:
    logits, target = tiny
    for name in ("dice_ce", "soft_dice", "gdl", "focal", "gdl_focal", "balanced_ce"):
        value = build_loss(name, 3, batch_dice=False)(logits, target)
        assert value.ndim == 0 and torch.isfinite(value)
    gf = build_loss("gdl_focal", 3, False, class_weights=[0.0, 1.0, 2.0])
    assert gf(logits, target).item() == pytest.approx(GDLFocalLoss([0.0, 1.0, 2.0])(logits, target).item())
    with pytest.raises(AutosegError, match="unknown loss 'dice'.*dice_ce, soft_dice, gdl"):
        build_loss("dice", 3, True)
    with pytest.raises(AutosegError, match="does not use class weights"):
        build_loss("gdl", 3, True, class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(AutosegError, match="need 3 entries"):
        build_loss("focal", 3, True, class_weights=[1.0, 1.0])
    with pytest.raises(AutosegError, match="ignore_index 1 is a real class"):
        build_loss("dice_ce", 3, True, ignore_index=1)
