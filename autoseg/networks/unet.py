"""Plain U-Net (nnU-Net's PlainConvUNet) and the decoder it shares with the residual-encoder U-Net.

Shape contract (all networks in :mod:`autoseg.networks`): input (B, C_in, *spatial) with every
spatial size divisible by prod(strides) along its axis; output (B, num_classes, *spatial) logits.
With ``net.deep_supervision = True`` the output is a list, one tensor per decoder stage, highest
resolution first: sizes ``spatial``, ``spatial / cumprod(strides)[1]``, ... (``n_stages - 1``
tensors; the bottleneck has no head). Set ``net.deep_supervision = False`` for inference: then a
single full-resolution tensor is returned and the lower-resolution heads are not computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoseg.networks.blocks import (
    StackedConvBlocks,
    check_input_shape,
    conv,
    init_he,
    total_strides,
    transposed_conv,
    validate_topology,
)
from autoseg.planners.plans import NetworkTopology


class UNetDecoder(nn.Module):
    """Transposed conv up to the skip's resolution, concat skip, ``n_conv_decoder`` conv blocks, 1x1 head.

    Decoder stage ``s`` (s = 0 is the deepest) upsamples from encoder stage ``n - 1 - s`` to
    stage ``n - 2 - s`` with kernel = stride = ``strides[n - 1 - s]``; its conv blocks use
    ``kernel_sizes[n - 2 - s]`` and ``n_conv_per_stage_decoder[s]`` repeats.
    """

    def __init__(self, topology: NetworkTopology, num_classes: int):
        super().__init__()
        dim, n = topology.dim, topology.n_stages
        feats = topology.features_per_stage
        self.up = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.heads = nn.ModuleList()
        for s in range(n - 1):
            below, skip = n - 1 - s, n - 2 - s
            self.up.append(transposed_conv(dim, feats[below], feats[skip], topology.strides[below]))
            self.blocks.append(
                StackedConvBlocks(
                    dim, topology.n_conv_per_stage_decoder[s], 2 * feats[skip], feats[skip], topology.kernel_sizes[skip]
                )
            )
            self.heads.append(conv(dim, feats[skip], num_classes, [1] * dim))

    def forward(self, skips: Sequence[torch.Tensor], deep_supervision: bool) -> list[torch.Tensor] | torch.Tensor:
        """``skips``: encoder outputs, highest resolution first (the last one is the bottleneck)."""
        x = skips[-1]
        outputs: list[torch.Tensor] = []
        n_dec = len(self.up)
        for s in range(n_dec):
            x = self.up[s](x)
            x = self.blocks[s](torch.cat((x, skips[-(s + 2)]), dim=1))
            if deep_supervision or s == n_dec - 1:
                outputs.append(self.heads[s](x))
        if deep_supervision:
            return outputs[::-1]
        return outputs[-1]


class PlainUNet(nn.Module):
    """nnU-Net's plain U-Net: per stage ``n_conv`` x (conv-InstanceNorm-LeakyReLU), strided first conv."""

    def __init__(self, topology: NetworkTopology, in_channels: int, num_classes: int, deep_supervision: bool = True):
        super().__init__()
        validate_topology(topology)
        self.deep_supervision = deep_supervision
        self.divisors = total_strides(topology)
        dim, feats = topology.dim, topology.features_per_stage
        self.encoder = nn.ModuleList()
        ch = in_channels
        for i in range(topology.n_stages):
            self.encoder.append(
                StackedConvBlocks(
                    dim, topology.n_conv_per_stage_encoder[i], ch, feats[i], topology.kernel_sizes[i], topology.strides[i]
                )
            )
            ch = feats[i]
        self.decoder = UNetDecoder(topology, num_classes)
        self.apply(init_he)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        check_input_shape(x, self.divisors)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips, self.deep_supervision)
