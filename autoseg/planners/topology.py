"""U-Net topology from spacing and patch size, and the memory model that sizes it.

The rules are nnU-Net v2's (``get_pool_and_conv_props``), re-derived:

* Pool an axis while its feature map stays >= 2 * ``min_edge`` (4) voxels and its current
  spacing is within a factor 2 of the finest pooled axis; when only one axis is left it
  needs >= 3 * ``min_edge``. Each pooling doubles that axis' spacing.
* A kernel becomes 3 along an axis once its spacing is within a factor 2 of the finest
  (kernels of 1 along a thick-slice axis in the first stages); the bottleneck is all 3.
* The patch is rounded up to a multiple of ``2 ** pools`` per axis.

Memory model: the sum over every convolution output (encoder, decoder, transposed convs and
the final segmentation head) of its feature map voxels times channels — a proxy for activation
memory that nnU-Net calibrated: 560e6 "voxel-features" at batch size 2 fit 8 GB for 3D
(85e6 at batch size 12 for 2D). The planner scales these references linearly with the
``--gpu-memory`` budget.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from autoseg.planners.plans import NetworkTopology

REFERENCE_3D = 560_000_000
REFERENCE_2D = 85_000_000
REFERENCE_GB = 8.0
REFERENCE_BS_3D = 2
REFERENCE_BS_2D = 12
BASE_FEATURES = 32
MAX_FEATURES_3D = 320
MAX_FEATURES_2D = 512
MIN_EDGE = 4
CONVS_PER_STAGE = 2


def pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[int], min_edge: int = MIN_EDGE,
                        max_pool: int = 999999) -> tuple[list[int], list[list[int]], list[list[int]], list[int], list[int]]:
    """Returns (pools per axis, strides per stage, kernels per stage, padded patch, divisor per axis)."""
    dim = len(spacing)
    cur_sp = [float(s) for s in spacing]
    cur_sz = [float(s) for s in patch_size]
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if cur_sz[i] >= 2 * min_edge]
        if not valid:
            break
        finest = min(cur_sp[i] for i in valid)
        valid = [i for i in valid if cur_sp[i] / finest < 2 and pools[i] < max_pool]
        if len(valid) == 1 and cur_sz[valid[0]] < 3 * min_edge:
            break
        if not valid:
            break
        for d in range(dim):
            if kernel[d] != 3 and cur_sp[d] / min(cur_sp) < 2:
                kernel[d] = 3
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            pools[v] += 1
            cur_sp[v] *= 2
            cur_sz[v] = math.ceil(cur_sz[v] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    divisor = [2 ** p for p in pools]
    padded = [int(s + d - s % d) if s % d else int(s) for s, d in zip(patch_size, divisor)]
    kernels.append([3] * dim)
    return pools, strides, kernels, padded, divisor


def make_topology(spacing: Sequence[float], patch_size: Sequence[int],
                  base_features: int = BASE_FEATURES) -> tuple[NetworkTopology, list[int], list[int]]:
    """Topology for a patch; returns (topology, padded patch, divisor per axis).

    ``base_features``: features of the first stage (nnU-Net: 32); the cap on the deepest stages
    (320 in 3D, 512 in 2D at 32) scales with it, so halving it quarters every conv's cost.
    """
    max_f = (MAX_FEATURES_3D if len(spacing) == 3 else MAX_FEATURES_2D) * base_features // BASE_FEATURES
    _, strides, kernels, patch, divisor = pool_and_conv_props(spacing, patch_size)
    n = len(strides)
    topo = NetworkTopology(n_stages=n, features_per_stage=[min(base_features * 2 ** i, max_f) for i in range(n)],
                           kernel_sizes=kernels, strides=strides, n_conv_per_stage_encoder=[CONVS_PER_STAGE] * n,
                           n_conv_per_stage_decoder=[CONVS_PER_STAGE] * (n - 1))
    return topo, patch, divisor


def feature_map_voxels(topo: NetworkTopology, patch_size: Sequence[int], num_classes: int, deep_supervision: bool = True) -> int:
    """The memory model: voxels x channels of every conv output of the plain U-Net for one sample."""
    total = 0
    size = [int(s) for s in patch_size]
    sizes = []
    for s in range(topo.n_stages):
        size = [a // b for a, b in zip(size, topo.strides[s])]
        sizes.append(size)
        total += topo.n_conv_per_stage_encoder[s] * topo.features_per_stage[s] * int(np.prod(size, dtype=np.int64))
    for d in range(topo.n_stages - 1):
        skip = sizes[-(d + 2)]
        vox = int(np.prod(skip, dtype=np.int64))
        feats = topo.features_per_stage[-(d + 2)]
        total += topo.n_conv_per_stage_decoder[d] * feats * vox  # decoder convs
        total += feats * vox  # transposed conv output
        if deep_supervision or d == topo.n_stages - 2:
            total += num_classes * vox
    return total
