"""V-Net (Milletari et al. 2016), shaped like MONAI's ``VNet`` but sized by the plan's topology.

How it differs from the plain U-Net (:mod:`autoseg.networks.unet`):

* every stage is residual: its input is added to the output of its last conv, then activated;
* 5x5x5 convolutions (5x5 in 2D) instead of 3x3x3, except along any axis where the plan's kernel
  is 1 (anisotropic first stages), which keeps kernel 1 there;
* PReLU (one slope per channel) instead of LeakyReLU;
* downsampling is its own conv with kernel = stride (not the first conv of the stage), followed by
  the stage's convs; convs per encoder stage 1, 2, 3, 3, ... ;
* channel dropout (p = 0.5 by default) in the deepest ``n_dropout_stages`` encoder stages and
  the same number of deepest decoder stages.

Kept from our U-Net rather than from the paper: channel counts come from
``topology.features_per_stage``; norms are InstanceNorm (MONAI uses BatchNorm, which is poor at
batch size 2; ``norm="batch"`` restores it); decoder stage ``j`` works at ``features[j]``
channels (the concat of upsampled + skip, ``2 * features[j]``, is projected back by the first conv
and by a 1x1 conv on the residual path; the paper keeps ``2 * features[j]``, which with nnU-Net's
320-channel deep stages and 5^3 kernels would cost ~50 M parameters per conv); convs per decoder
stage follow MONAI: 1 at the two highest resolutions, 2 below; a 1x1 head on every decoder stage
(same deep-supervision contract as the U-Net) instead of the paper's single 5^3 + 1x1 output.

Cost note: with 5^3 kernels the parameter count is ~4.6x that of a 3^3 U-Net of the same widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoseg.networks.blocks import (
    channel_dropout,
    check_input_shape,
    conv,
    init_he,
    norm,
    total_strides,
    transposed_conv,
    validate_topology,
)
from autoseg.planners.plans import NetworkTopology


def vnet_kernel(plan_kernel: Sequence[int], size: int = 5) -> list[int]:
    """``size`` along axes where the plan's kernel is > 1, else 1: ``vnet_kernel([1, 3, 3]) == [1, 5, 5]``."""
    return [size if k > 1 else 1 for k in plan_kernel]


def encoder_convs(n_stages: int) -> list[int]:
    """Convs per encoder stage: 1, 2, 3, 3, ... (``encoder_convs(5) == [1, 2, 3, 3, 3]``)."""
    return [min(i + 1, 3) for i in range(n_stages)]


def decoder_convs(n_levels: int) -> list[int]:
    """Convs per decoder stage by resolution level (0 = full resolution): 1, 1, 2, 2, ..."""
    return [1 if j < 2 else 2 for j in range(n_levels)]


class _ConvNormPReLU(nn.Sequential):
    """conv-norm-PReLU; ``down=True``: kernel = stride, no padding (V-Net's downsampling conv)."""

    def __init__(self, dim: int, in_ch: int, out_ch: int, kernel: Sequence[int], norm_kind: str, down: bool = False):
        stride = kernel if down else 1
        layer = conv(dim, in_ch, out_ch, kernel, stride, same_padding=not down)
        super().__init__(layer, norm(dim, out_ch, norm_kind), nn.PReLU(out_ch))


class _ResidualConvs(nn.Module):
    """``n`` x (conv-norm-PReLU) from ``in_ch`` to ``out_ch``; adds the (projected) input, then PReLU."""

    def __init__(self, dim: int, n: int, in_ch: int, out_ch: int, kernel: Sequence[int], norm_kind: str):
        super().__init__()
        layers = [_ConvNormPReLU(dim, in_ch if i == 0 else out_ch, out_ch, kernel, norm_kind) for i in range(n)]
        self.convs = nn.Sequential(*layers)
        self.skip = nn.Identity() if in_ch == out_ch else conv(dim, in_ch, out_ch, [1] * dim)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.skip(x))


class VNet(nn.Module):
    """V-Net; see the module docstring. ``net.deep_supervision`` is settable after construction."""

    def __init__(self, topology: NetworkTopology, in_channels: int, num_classes: int, deep_supervision: bool = True,
                 dropout_p: float = 0.5, n_dropout_stages: int = 2, norm_kind: str = "instance"):
        super().__init__()
        validate_topology(topology)
        self.deep_supervision = deep_supervision
        self.divisors = total_strides(topology)
        dim, n, feats = topology.dim, topology.n_stages, topology.features_per_stage
        kernels = [vnet_kernel(k) for k in topology.kernel_sizes]
        n_enc, n_dec = encoder_convs(n), decoder_convs(n - 1)

        def p_drop(stage: int) -> float:
            # Stage indices count from the input (0) to the bottleneck (n - 1).
            return dropout_p if stage >= n - n_dropout_stages else 0.0

        self.down = nn.ModuleList()
        self.enc_drop = nn.ModuleList()
        self.enc = nn.ModuleList()
        ch = in_channels
        for i in range(n):
            if i == 0:
                self.down.append(nn.Identity())
            else:
                self.down.append(_ConvNormPReLU(dim, ch, feats[i], topology.strides[i], norm_kind, down=True))
                ch = feats[i]
            self.enc_drop.append(channel_dropout(dim, p_drop(i)))
            self.enc.append(_ResidualConvs(dim, n_enc[i], ch, feats[i], kernels[i], norm_kind))
            ch = feats[i]

        self.dec_drop = nn.ModuleList()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        self.heads = nn.ModuleList()
        for s in range(n - 1):  # s = 0 is the deepest decoder stage
            below, level = n - 1 - s, n - 2 - s
            self.dec_drop.append(channel_dropout(dim, p_drop(below)))
            self.up.append(
                nn.Sequential(
                    transposed_conv(dim, ch, feats[level], topology.strides[below]),
                    norm(dim, feats[level], norm_kind),
                    nn.PReLU(feats[level]),
                )
            )
            self.dec.append(_ResidualConvs(dim, n_dec[level], 2 * feats[level], feats[level], kernels[level], norm_kind))
            self.heads.append(conv(dim, feats[level], num_classes, [1] * dim))
            ch = feats[level]
        self.apply(init_he)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        check_input_shape(x, self.divisors)
        skips = []
        for down, drop, stage in zip(self.down, self.enc_drop, self.enc):
            x = stage(drop(down(x)))
            skips.append(x)
        outputs: list[torch.Tensor] = []
        n_dec = len(self.up)
        for s in range(n_dec):
            x = self.up[s](self.dec_drop[s](x))
            x = self.dec[s](torch.cat((x, skips[-(s + 2)]), dim=1))
            if self.deep_supervision or s == n_dec - 1:
                outputs.append(self.heads[s](x))
        return outputs[::-1] if self.deep_supervision else outputs[-1]
