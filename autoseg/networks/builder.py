"""Network factory: a kind name and the plan's topology in, an ``nn.Module`` out.

Kinds are an explicit table (no lookup of classes by name through imports):

* ``"unet"``   :class:`~autoseg.networks.unet.PlainUNet` (nnU-Net's default),
* ``"resenc"`` :class:`~autoseg.networks.resenc.ResEncUNet` (residual encoder),
* ``"vnet"``   :class:`~autoseg.networks.vnet.VNet` (Milletari 2016, 5^3 kernels, PReLU).

All three share one contract: input (B, in_channels, *spatial), each spatial size divisible by
prod(strides) on its axis; output a list of logits (B, num_classes, *spatial_i), highest
resolution first, one per decoder stage (``n_stages - 1``) while ``net.deep_supervision`` is
True, else one full-resolution tensor.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from autoseg.errors import AutosegError
from autoseg.networks.resenc import ResEncUNet
from autoseg.networks.unet import PlainUNet
from autoseg.networks.vnet import VNet
from autoseg.planners.plans import NetworkTopology

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "unet": PlainUNet,
    "resenc": ResEncUNet,
    "vnet": VNet,
}


def build_network(
    kind: str, topology: NetworkTopology, in_channels: int, num_classes: int, deep_supervision: bool = True
) -> nn.Module:
    """Build network ``kind`` for ``topology`` (2D or 3D, from the kernel list lengths).

    Example: ``build_network("unet", plan.topology, plans.num_input_channels, plans.num_classes)``.
    Raises AutosegError for an unknown kind or an inconsistent topology.
    """
    if kind not in NETWORKS:
        raise AutosegError(f"unknown network {kind!r}: choose one of {sorted(NETWORKS)}")
    if in_channels < 1 or num_classes < 2:
        raise AutosegError(
            f"network {kind!r}: needs in_channels >= 1 and num_classes >= 2 (background included), "
            f"got {in_channels} and {num_classes}; check dataset.json channel_names and labels"
        )
    return NETWORKS[kind](topology, in_channels, num_classes, deep_supervision=deep_supervision)


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
