"""CPU time model of one training iteration: the planned U-Net's convolution FLOPs and patch voxels.

FLOPs (2 per multiply-add) of the plain U-Net's forward pass for one sample, counted from the
topology alone (the network is :class:`autoseg.networks.unet.PlainUNet`):

* encoder stage ``s`` at ``v_s`` voxels (the patch divided by the cumulative strides): the first
  convolution ``C_in -> F_s`` (strided; ``C_in`` = input channels or ``F_{s-1}``), then
  ``n_conv - 1`` convolutions ``F_s -> F_s``, each ``2 * v_s * prod(kernel_s) * C_in * C_out``;
* decoder stage from ``below`` to ``skip``: the transposed convolution (kernel = stride, so one tap
  per output voxel) ``2 * v_skip * F_below * F_skip``, the first block conv on the concatenation
  ``2 F_skip -> F_skip``, the other ``F_skip -> F_skip``, and a 1x1 head ``F_skip -> classes``
  (every decoder stage with deep supervision, as training runs, else the last one only).

Training (forward + backward) = 3 x forward: the backward pass computes the gradient with
respect to the input and to the weights, each costing about one forward pass.

Seconds per iteration = ``S_PER_GFLOP x GFLOP + S_PER_MVOX x Mvoxels + S_OVERHEAD`` with GFLOP the
training FLOPs and Mvoxels the patch voxels of the whole batch (millions). The voxel term is the
work that scales with the data rather than the convolutions: augmentation (a full 3D rotation
samples a patch ~3x larger), normalisation, activations, the loss. Without it, a 3D patch of
narrow features is under-predicted by a third (docs/planner.md). The constants
were fitted by ``benchmarks/cpu_cost_model.py`` (real training iterations with the trainer's
network, loss, SGD, autocast and background augmentation, 1 loader worker) on the 2-core
development machine (AMD EPYC, AVX2 only: no native bfloat16, so autocast stays float32), as
CPU seconds / 2 cores: the time of an iteration on an idle machine. On a machine shared with
other jobs the wall time is longer in proportion to the load. A CPU with native bfloat16
(avx512_bf16/AMX) should run the same plan faster (not measured here).

Example::

    topo, patch, _ = make_topology([2.0, 2.0, 2.0], [64, 64, 64], base_features=16)
    train_gflop(topo, patch, 1, 3) * 2          # GFLOPs of one iteration at batch 2
    seconds_per_iteration(topo, patch, 1, 3, 2)  # expected s/iteration on the reference CPU
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autoseg.planners.plans import NetworkTopology

# fitted by benchmarks/cpu_cost_model.py on the 2-core development machine (see docs/planner.md):
# CPU time of trainer + loader worker / 2 cores, float32
S_PER_GFLOP = 0.0130
S_PER_MVOX = 1.286
S_OVERHEAD = 0.090
TRAIN_TO_FORWARD = 3.0
COST_MODEL = ("seconds/iteration = S_PER_GFLOP x batch x 3 x forward conv GFLOPs of the plain U-Net (deep supervision "
              "heads included) + S_PER_MVOX x batch x patch voxels / 1e6 + S_OVERHEAD; constants fitted by "
              "benchmarks/cpu_cost_model.py on a 2-core CPU (float32)")


def _stage_voxels(topo: NetworkTopology, patch_size: Sequence[int]) -> list[float]:
    """Voxels of each encoder stage's feature maps (the patch divided by the cumulative strides)."""
    size = np.asarray(patch_size, dtype=np.float64)
    out = []
    for s in range(topo.n_stages):
        size = size / np.asarray(topo.strides[s], dtype=np.float64)
        out.append(float(np.prod(size)))
    return out


def forward_flops(topo: NetworkTopology, patch_size: Sequence[int], in_channels: int, num_classes: int,
                  deep_supervision: bool = True) -> float:
    """FLOPs (2 per multiply-add) of the convolutions in one sample's forward pass (see module doc)."""
    vox = _stage_voxels(topo, patch_size)
    feats = topo.features_per_stage
    kvol = [float(np.prod(k)) for k in topo.kernel_sizes]
    macs = 0.0
    c_in = in_channels
    for s in range(topo.n_stages):
        n = topo.n_conv_per_stage_encoder[s]
        macs += vox[s] * kvol[s] * feats[s] * (c_in + (n - 1) * feats[s])
        c_in = feats[s]
    for d in range(topo.n_stages - 1):
        below, skip = topo.n_stages - 1 - d, topo.n_stages - 2 - d
        f, v, n = feats[skip], vox[skip], topo.n_conv_per_stage_decoder[d]
        macs += v * feats[below] * f  # transposed conv, kernel = stride
        macs += v * kvol[skip] * f * (2 * f + (n - 1) * f)
        if deep_supervision or d == topo.n_stages - 2:
            macs += v * f * num_classes
    return 2.0 * macs


def train_gflop(topo: NetworkTopology, patch_size: Sequence[int], in_channels: int, num_classes: int) -> float:
    """GFLOPs of forward + backward for one sample, with deep supervision (as training runs)."""
    return TRAIN_TO_FORWARD * forward_flops(topo, patch_size, in_channels, num_classes, True) / 1e9


def seconds_per_iteration(topo: NetworkTopology, patch_size: Sequence[int], in_channels: int, num_classes: int,
                          batch_size: int) -> float:
    """Expected seconds of one training iteration on the reference CPU (constants: module doc)."""
    mvox = batch_size * float(np.prod(patch_size, dtype=np.float64)) / 1e6
    return S_PER_GFLOP * batch_size * train_gflop(topo, patch_size, in_channels, num_classes) + S_PER_MVOX * mvox + S_OVERHEAD
