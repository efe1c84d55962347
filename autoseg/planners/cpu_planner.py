"""``--target cpu``: size each configuration to a training iteration of about a second on 2 CPU cores.

The GPU planner sizes a patch to a memory budget; on a CPU the binding limit is time. Here
:mod:`autoseg.planners.cost_model` predicts the seconds of one training iteration from the planned
U-Net's convolution FLOPs, and one configuration (spacing and median case shape in transposed
order, as for :func:`autoseg.planners.planner.plan_configuration`) is planned by:

1. **Context floor.** The patch must cover at least ``CONTEXT_FRACTION`` (half) of the median case
   along every axis (the whole axis when the case is smaller), so the organ and its surroundings
   fit in one patch. Example: median case 56 x 160 x 160 voxels -> floor 28 x 80 x 80.
2. **Width, then spacing.** Try the network widths ``BASE_FEATURES`` = 32, 16, 8 (features of the
   first stage; deeper stages double, capped at 10x the base in 3D, 16x in 2D) at the target
   spacing; take the widest whose floor patch (rounded up to the pooling divisor) fits
   ``TARGET_S_PER_ITER`` at batch 2. If none fits, coarsen the spacing by 3 % steps (axes more than
   2x finer than the coarsest first, as for 3d_lowres) and retry; the median case shrinks, so
   does the floor. Spacing is the last resort because it loses small structures.
3. **Patch.** From nnU-Net's initial patch (256^3 voxels, 2048^2 in 2D, shaped by the spacing and
   capped by the median case) shrink the axis largest relative to the median case by one pooling
   step until the iteration fits the target, never below the floor.
4. **Batch.** As many samples as the target allows, at least 2, capped (like the GPU planner) so
   a batch covers at most 5 % of the dataset's voxels.

5. **Orientation** (:func:`keep_orientation`). A short CPU schedule cannot afford to learn the
   liver from the spleen by shape alone, so CPU plans keep the anatomy's sides: preprocessing flips
   every axis stored against its physical direction (``canonical_orientation``; the patient's right
   is then on the same side of every array), and training and mirroring TTA flip every patch axis
   except the left-right one (``mirror_axes``; axial images: the array's X). Rotation stays within
   +-30 degrees. GPU plans mirror every axis, as nnU-Net does.

The plan records ``expected_s_per_iter_cpu`` and ``train_gflop_per_iter``. Edge case: when even
the coarsest spacing tried (``MAX_COARSENING`` = 8x) at width 8 does not fit, that plan is kept
and its expected s/iteration is above the target.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from autoseg.planners import cost_model as C
from autoseg.planners import topology as T
from autoseg.planners.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, ResamplingSettings

TARGET_S_PER_ITER = 1.0
CONTEXT_FRACTION = 0.5
BASE_FEATURES = (32, 16, 8)
SPACING_STEP = 1.03
MAX_COARSENING = 8.0
MIN_BATCH_SIZE = 2
MAX_DATASET_COVERED = 0.05
LEFT_RIGHT_AXIS_ZYX = 2  # axial images: the array's X axis runs along the patient's left-right


def coarser(spacing: np.ndarray) -> np.ndarray:
    """One 3 % coarsening step: axes more than 2x finer than the coarsest first, else all axes."""
    out = np.array(spacing, dtype=float)
    ratio = out.max() / out
    if np.any(ratio > 2):
        out[ratio > 2] *= SPACING_STEP
    else:
        out *= SPACING_STEP
    return out


def context_floor(median_shape: Sequence[float]) -> list[int]:
    """Smallest patch allowed: ``CONTEXT_FRACTION`` of the median case per axis, rounded up."""
    return [max(1, math.ceil(CONTEXT_FRACTION * m - 1e-9)) for m in median_shape]


def initial_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> list[int]:
    """nnU-Net's starting patch: 256^3 (2D: 2048^2) voxels shaped by 1/spacing, capped by the median case."""
    dim = len(spacing)
    inv = 1.0 / np.asarray(spacing, dtype=float)
    edge = 256 if dim == 3 else 2048
    patch = [round(v) for v in inv * (edge ** dim / np.prod(inv)) ** (1.0 / dim)]
    return [int(min(p, m)) for p, m in zip(patch, median_shape)]


def _cost(topo: NetworkTopology, patch, in_channels: int, num_classes: int, batch: int = MIN_BATCH_SIZE) -> float:
    return C.seconds_per_iteration(topo, patch, in_channels, num_classes, batch)


def fit_patch(spacing, median_shape, base: int, in_channels: int, num_classes: int,
              budget_s: float) -> tuple[NetworkTopology, list[int]] | None:
    """Largest patch (rule 3) for one width, or None when even the floor patch misses ``budget_s``."""
    floor = context_floor(median_shape)
    topo, padded, _ = T.make_topology(spacing, floor, base)
    if _cost(topo, padded, in_channels, num_classes) > budget_s:
        return None
    patch = initial_patch(spacing, median_shape)
    topo, patch, divisor = T.make_topology(spacing, patch, base)
    while _cost(topo, patch, in_channels, num_classes) > budget_s:
        room = [i for i in range(len(patch)) if patch[i] - divisor[i] >= floor[i]]
        if not room:  # every axis at its floor (padded): the floor patch, known to fit
            topo, patch, divisor = T.make_topology(spacing, floor, base)
            break
        axis = max(room, key=lambda i: patch[i] / median_shape[i])
        patch = list(patch)
        patch[axis] -= divisor[axis]
        topo, patch, divisor = T.make_topology(spacing, patch, base)
    return topo, patch


def choose_grid(spacing, median_shape, in_channels: int, num_classes: int,
                budget_s: float = TARGET_S_PER_ITER) -> tuple[np.ndarray, np.ndarray, NetworkTopology, list[int]]:
    """Rules 1-3: (spacing, median shape at that spacing, topology, patch)."""
    sp0, med0 = np.asarray(spacing, dtype=float), np.asarray(median_shape, dtype=float)
    sp = sp0.copy()
    while True:
        med = med0 * sp0 / sp
        for base in BASE_FEATURES:
            found = fit_patch(sp, med, base, in_channels, num_classes, budget_s)
            if found is not None:
                return sp, med, found[0], found[1]
        nxt = coarser(sp)
        if np.max(nxt / sp0) > MAX_COARSENING:
            topo, patch, _ = T.make_topology(sp, context_floor(med), BASE_FEATURES[-1])
            return sp, med, topo, patch
        sp = nxt


def plan_cpu_configuration(name: str, spacing: Sequence[float], median_shape: Sequence[float], n_voxels_dataset: float,
                           num_classes: int, normalization: list[ChannelNormalization], data_identifier: str,
                           batch_dice: bool, in_channels: int = 1) -> ConfigurationPlan:
    """One configuration sized by the CPU cost model (module doc); ``n_voxels_dataset`` at ``spacing``."""
    sp, med, topo, patch = choose_grid(spacing, median_shape, in_channels, num_classes)
    per_sample = _cost(topo, patch, in_channels, num_classes, 1) - C.S_OVERHEAD
    batch = int((TARGET_S_PER_ITER - C.S_OVERHEAD) // per_sample) if per_sample > 0 else MIN_BATCH_SIZE
    n_vox = n_voxels_dataset * float(np.prod(np.asarray(spacing, dtype=float) / sp))
    cap = round(n_vox * MAX_DATASET_COVERED / np.prod(patch, dtype=np.float64))
    batch = int(max(min(batch, cap), MIN_BATCH_SIZE))
    ref, ref_bs = (T.REFERENCE_3D, T.REFERENCE_BS_3D) if len(patch) == 3 else (T.REFERENCE_2D, T.REFERENCE_BS_2D)
    mem = T.feature_map_voxels(topo, patch, num_classes, deep_supervision=False)
    return ConfigurationPlan(
        name=name, data_identifier=data_identifier, spacing_mm=[float(v) for v in sp], patch_size=[int(p) for p in patch],
        median_shape_vox=[int(round(m)) for m in med], batch_size=batch, batch_dice=batch_dice, topology=topo,
        normalization=normalization, resampling=ResamplingSettings(),
        estimated_vram_gb=round(mem / ref * T.REFERENCE_GB * batch / ref_bs, 3),
        expected_s_per_iter_cpu=round(_cost(topo, patch, in_channels, num_classes, batch), 3),
        train_gflop_per_iter=round(batch * C.train_gflop(topo, patch, in_channels, num_classes), 2))


def keep_orientation(config: ConfigurationPlan, transpose_forward: Sequence[int]) -> None:
    """Step 5 of the module doc: canonical orientation, and no mirroring across the left-right axis."""
    lr = list(transpose_forward).index(LEFT_RIGHT_AXIS_ZYX)
    first = 3 - config.dim  # 2D patches are transposed axes 1 and 2
    config.canonical_orientation = True
    config.mirror_axes = [a - first for a in range(first, 3) if a != lr]
