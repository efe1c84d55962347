"""Building blocks shared by the networks, for 2D and 3D alike.

Tensors are (B, C, *spatial) with spatial = (Y, X) in 2D or (Z, Y, X) in 3D, in the plan's
transposed axis order. ``dim`` (2 or 3) picks ``nn.Conv2d``/``nn.Conv3d`` etc.; every
kernel/stride argument is a per-axis list of length ``dim`` (taken from
:class:`~autoseg.planners.plans.NetworkTopology`), never a hard-coded size.

Padding is ``k // 2`` per axis, so a stride-1 conv keeps the size and a stride-``s`` conv
maps ``L`` to ``L / s`` whenever ``L`` is divisible by ``s`` (odd kernels; kernel 1 too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from autoseg.errors import AutosegError
from autoseg.planners.plans import NetworkTopology

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_TRANSP_CONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


def conv(
    dim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int] | int = 1, same_padding: bool = True
) -> nn.Module:
    """Conv with bias; ``k // 2`` padding per axis, or none (``same_padding=False``: kernel = stride downsampling)."""
    padding = tuple(k // 2 for k in kernel) if same_padding else 0
    return _CONV[dim](in_ch, out_ch, tuple(kernel), stride=_tuple(stride, dim), padding=padding)


def transposed_conv(dim: int, in_ch: int, out_ch: int, stride: Sequence[int]) -> nn.Module:
    """Upsampling by ``stride`` per axis (kernel = stride): (L) -> (L * s) exactly."""
    return _TRANSP_CONV[dim](in_ch, out_ch, tuple(stride), stride=tuple(stride))


def norm(dim: int, channels: int, kind: str = "instance") -> nn.Module:
    """InstanceNorm (affine, eps 1e-5; nnU-Net's default, fine for batch size 2) or BatchNorm."""
    if kind == "instance":
        return _INSTANCE_NORM[dim](channels, eps=1e-5, affine=True)
    if kind == "batch":
        return _BATCH_NORM[dim](channels, eps=1e-5)
    raise AutosegError(f"unknown normalisation {kind!r}: use 'instance' or 'batch'")


def channel_dropout(dim: int, p: float) -> nn.Module:
    """Drops whole feature maps (Dropout2d/3d); identity when ``p == 0``."""
    return _DROPOUT[dim](p) if p > 0 else nn.Identity()


def _tuple(v: Sequence[int] | int, dim: int) -> tuple[int, ...]:
    return (v,) * dim if isinstance(v, int) else tuple(v)


class ConvNormAct(nn.Module):
    """conv -> InstanceNorm -> LeakyReLU(0.01): the plain U-Net's unit."""

    def __init__(self, dim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int] | int = 1):
        super().__init__()
        self.conv = conv(dim, in_ch, out_ch, kernel, stride)
        self.norm = norm(dim, out_ch)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class StackedConvBlocks(nn.Sequential):
    """``n`` ConvNormAct units; only the first one is strided (strided-conv downsampling)."""

    def __init__(self, dim: int, n: int, in_ch: int, out_ch: int, kernel: Sequence[int], first_stride: Sequence[int] | int = 1):
        units = [ConvNormAct(dim, in_ch, out_ch, kernel, first_stride)]
        units += [ConvNormAct(dim, out_ch, out_ch, kernel) for _ in range(n - 1)]
        super().__init__(*units)


class BasicResidualBlock(nn.Module):
    """conv-norm-act-conv-norm, plus the input (1x1 strided conv + norm when the shape changes), then act.

    Example: ``BasicResidualBlock(3, 32, 64, [3, 3, 3], [1, 2, 2])`` maps (B, 32, 8, 64, 64) to
    (B, 64, 8, 32, 32); the skip path is then a 1x1x1 conv with stride (1, 2, 2).
    """

    def __init__(self, dim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int] | int = 1):
        super().__init__()
        stride_t = _tuple(stride, dim)
        self.conv1 = conv(dim, in_ch, out_ch, kernel, stride_t)
        self.norm1 = norm(dim, out_ch)
        self.act1 = nn.LeakyReLU(0.01, inplace=True)
        self.conv2 = conv(dim, out_ch, out_ch, kernel)
        self.norm2 = norm(dim, out_ch)
        self.act2 = nn.LeakyReLU(0.01, inplace=True)
        if in_ch != out_ch or any(s != 1 for s in stride_t):
            self.skip: nn.Module = nn.Sequential(conv(dim, in_ch, out_ch, [1] * dim, stride_t), norm(dim, out_ch))
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(out + self.skip(x))


def init_he(module: nn.Module) -> None:
    """He (kaiming normal, a=1e-2) init for conv / transposed-conv weights, zero biases.

    Use as ``net.apply(init_he)``; norms and PReLUs keep their PyTorch defaults.
    """
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def validate_topology(topology: NetworkTopology) -> None:
    """Raise AutosegError if the topology's lists disagree with each other.

    The edge case that bites: ``strides[0]`` must be all ones, otherwise the highest-resolution
    output would not be at the input's resolution.
    """
    n = topology.n_stages
    where = "plans.json network topology"
    fix = "re-run planning or fix the topology in plans.json"
    if n < 2:
        raise AutosegError(f"{where}: n_stages is {n}, a U-Net needs at least 2; {fix}")
    for name in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage_encoder"):
        if len(getattr(topology, name)) != n:
            raise AutosegError(f"{where}: {name} has {len(getattr(topology, name))} entries but n_stages is {n}; {fix}")
    if len(topology.n_conv_per_stage_decoder) < n - 1:
        raise AutosegError(
            f"{where}: n_conv_per_stage_decoder has {len(topology.n_conv_per_stage_decoder)} entries, needs {n - 1}; {fix}"
        )
    dim = topology.dim
    if dim not in (2, 3):
        raise AutosegError(f"{where}: kernels have {dim} axes, only 2D and 3D are supported; {fix}")
    if any(len(k) != dim for k in topology.kernel_sizes) or any(len(s) != dim for s in topology.strides):
        raise AutosegError(f"{where}: kernel_sizes/strides mix lists of different lengths; {fix}")
    if any(s != 1 for s in topology.strides[0]):
        raise AutosegError(f"{where}: strides[0] is {topology.strides[0]}, must be all ones; {fix}")
    if any(k % 2 == 0 for ks in topology.kernel_sizes for k in ks):
        raise AutosegError(f"{where}: kernel sizes must be odd, got {topology.kernel_sizes}; {fix}")


def total_strides(topology: NetworkTopology) -> list[int]:
    """prod(strides) per axis: every spatial input size must be divisible by these."""
    return [math.prod(s[a] for s in topology.strides) for a in range(topology.dim)]


def check_input_shape(x: torch.Tensor, divisors: Sequence[int]) -> None:
    """Raise ValueError unless ``x`` is (B, C, *spatial) with each spatial size divisible as required."""
    spatial = tuple(x.shape[2:])
    if len(spatial) != len(divisors) or any(s % d for s, d in zip(spatial, divisors)):
        raise ValueError(
            f"network input spatial shape {spatial} must have {len(divisors)} axes, each divisible by {list(divisors)}"
        )
