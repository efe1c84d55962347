"""Residual-encoder U-Net (the idea of nnU-Net's ResEncUNet presets).

Encoder: a stem (one conv-norm-act at ``features_per_stage[0]``, stride 1), then per stage a
stack of :class:`~autoseg.networks.blocks.BasicResidualBlock`; the first block of stage ``i`` is
strided by ``strides[i]``. Blocks per stage follow the preset 1, 3, 4, 6, 6, 6, ... truncated
to ``n_stages`` (``topology.n_conv_per_stage_encoder`` is not used here). The decoder is the
plain U-Net's (:class:`~autoseg.networks.unet.UNetDecoder`, ``n_conv_per_stage_decoder``), so the
output contract is identical to :class:`~autoseg.networks.unet.PlainUNet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoseg.errors import AutosegError
from autoseg.networks.blocks import (
    BasicResidualBlock,
    ConvNormAct,
    check_input_shape,
    init_he,
    total_strides,
    validate_topology,
)
from autoseg.networks.unet import UNetDecoder
from autoseg.planners.plans import NetworkTopology

DEFAULT_BLOCKS_PER_STAGE = (1, 3, 4, 6)


def blocks_per_stage(n_stages: int, preset: Sequence[int] = DEFAULT_BLOCKS_PER_STAGE) -> list[int]:
    """The preset truncated to ``n_stages``, its last entry repeated: ``blocks_per_stage(6) == [1, 3, 4, 6, 6, 6]``."""
    return [preset[min(i, len(preset) - 1)] for i in range(n_stages)]


class ResEncUNet(nn.Module):
    """U-Net with a residual encoder; see the module docstring. ``net.deep_supervision`` is settable."""

    def __init__(self, topology: NetworkTopology, in_channels: int, num_classes: int, deep_supervision: bool = True,
                 n_blocks_per_stage: Sequence[int] | None = None):
        super().__init__()
        validate_topology(topology)
        n_blocks = list(n_blocks_per_stage) if n_blocks_per_stage is not None else blocks_per_stage(topology.n_stages)
        if len(n_blocks) != topology.n_stages or min(n_blocks) < 1:
            raise AutosegError(
                f"resenc: n_blocks_per_stage {n_blocks} must have {topology.n_stages} entries >= 1 (one per stage)"
            )
        self.deep_supervision = deep_supervision
        self.divisors = total_strides(topology)
        dim, feats = topology.dim, topology.features_per_stage
        self.stem = ConvNormAct(dim, in_channels, feats[0], topology.kernel_sizes[0])
        self.encoder = nn.ModuleList()
        ch = feats[0]
        for i in range(topology.n_stages):
            kernel, stride = topology.kernel_sizes[i], topology.strides[i]
            blocks = [BasicResidualBlock(dim, ch, feats[i], kernel, stride)]
            blocks += [BasicResidualBlock(dim, feats[i], feats[i], kernel) for _ in range(n_blocks[i] - 1)]
            self.encoder.append(nn.Sequential(*blocks))
            ch = feats[i]
        self.decoder = UNetDecoder(topology, num_classes)
        self.apply(init_he)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        check_input_shape(x, self.divisors)
        x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips, self.deep_supervision)
