"""Plan configurations from a fingerprint: nnU-Net v2's default ``ExperimentPlanner`` rules.

* Target spacing (3d_fullres): the median spacing per axis; if the coarsest axis is more than
  3x coarser than the others *and* the median case has 3x fewer voxels along it, that axis
  takes the 10th percentile of its spacings instead (never finer than the other axes).
* Transpose: the coarsest target axis goes first, so 2D slices are taken across it.
* Patch: start from a 256^3 (2048^2 for 2D) voxel cube shaped by the spacing, capped by the
  median shape; shrink the axis largest relative to the median shape until the memory model
  (see :mod:`autoseg.planners.topology`) fits the GPU budget.
* Batch size: the reference batch scaled by the spare memory, capped so one batch covers at
  most 5 % of the dataset's voxels, and at least 2.
* 3d_lowres (+ 3d_cascade_fullres): only when the fullres patch covers < 25 % of the median
  case; the spacing grows by 3 % steps (anisotropic axes first) until it does; dropped again
  when the lowres median case has more than half the fullres voxels.
* The memory model is evaluated without deep-supervision heads and must fit at batch size 2
  (2D references are calibrated at batch 12), exactly as nnU-Net v2.8's planner does.

``target="cpu"`` swaps the one-configuration rule (patch, width, batch, possibly a coarser
spacing) for :mod:`autoseg.planners.cpu_planner`'s, sized to CPU time; everything else above
(spacing, transpose, which configurations exist) is shared.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np

from autoseg.datasets.layout import DatasetInfo
from autoseg.errors import AutosegError
from autoseg.fingerprint.fingerprint import DatasetFingerprint
from autoseg.planners import topology as T
from autoseg.planners.cost_model import COST_MODEL, seconds_per_iteration, train_gflop
from autoseg.planners.cpu_planner import keep_orientation, plan_cpu_configuration
from autoseg.planners.roi import ROI_NAME, plan_roi
from autoseg.planners.plans import ChannelNormalization, ConfigurationPlan, Plans, ResamplingSettings, compute_new_shape

ANISOTROPY_THRESHOLD = 3.0
LOWRES_THRESHOLD = 0.25
LOWRES_SPACING_STEP = 1.03
MAX_DATASET_COVERED = 0.05
MIN_BATCH_SIZE = 2
PLANS_NAME = "autosegPlans"
MEMORY_MODEL = ("sum over all conv outputs of (channels x voxels) for one sample of the plain U-Net (final head only); "
                "the patch must satisfy estimate / ref_batch * 2 <= reference, with reference 560e6 (3D, ref_batch 2) "
                "or 85e6 (2D, ref_batch 12) for 8 GB, scaled linearly with gpu_memory_gb")


def fullres_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Median spacing, with the anisotropy rule for the coarse axis (see module doc)."""
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_sp = [target[i] for i in others]
    other_sz = [target_size[i] for i in others]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(other_sp)
    aniso_voxels = target_size[worst] * ANISOTROPY_THRESHOLD < min(other_sz)
    if aniso_spacing and aniso_voxels:
        coarse = float(np.percentile(spacings[:, worst], 10))
        if coarse < max(other_sp):
            coarse = max(max(other_sp), coarse) + 1e-5
        target[worst] = coarse
    return target


def normalization_for(info: DatasetInfo, fp: DatasetFingerprint, override: str | None) -> list[ChannelNormalization]:
    """Per channel: ``ct`` for CT, ``zscore`` otherwise; ``override`` = ``window:LO,HI`` / ``zscore`` / ``ct``."""
    out = []
    for ch in range(info.num_channels):
        st = fp.intensity_per_channel[str(ch)]
        scheme = override or ("ct" if info.channel_kind(ch) == "CT" else "zscore")
        if scheme.startswith("window:"):
            try:
                lo, hi = (float(v) for v in scheme.split(":", 1)[1].split(","))
            except ValueError:
                raise AutosegError(f"--normalization {scheme}: write the window as window:LOW,HIGH, e.g. window:-200,200") from None
            if not lo < hi:
                raise AutosegError(f"--normalization {scheme}: LOW must be below HIGH")
            out.append(ChannelNormalization("window", lower=lo, upper=hi))
        elif scheme == "ct":
            out.append(ChannelNormalization("ct", mean=st.mean, std=max(st.std, 1e-8), lower=st.percentile_00_5, upper=st.percentile_99_5))
        elif scheme in ("zscore", "rescale"):
            out.append(ChannelNormalization(scheme))
        else:
            raise AutosegError(f"--normalization {scheme}: choose ct, zscore, rescale or window:LOW,HIGH")
    return out


def plan_configuration(name: str, spacing: Sequence[float], median_shape: Sequence[float], n_voxels_dataset: float,
                       num_classes: int, gpu_memory_gb: float, normalization: list[ChannelNormalization],
                       data_identifier: str, batch_dice: bool) -> ConfigurationPlan:
    """One configuration's patch, topology and batch size (spacing/shape in transposed order)."""
    dim = len(spacing)
    spacing = [float(s) for s in spacing]
    inv = 1.0 / np.asarray(spacing)
    edge = 256 if dim == 3 else 2048
    patch = [round(v) for v in inv * (edge ** dim / np.prod(inv)) ** (1.0 / dim)]
    patch = [int(min(p, m)) for p, m in zip(patch, median_shape)]
    topo, patch, divisor = T.make_topology(spacing, patch)
    reference = (T.REFERENCE_3D if dim == 3 else T.REFERENCE_2D) * gpu_memory_gb / T.REFERENCE_GB
    ref_bs = T.REFERENCE_BS_3D if dim == 3 else T.REFERENCE_BS_2D
    estimate = T.feature_map_voxels(topo, patch, num_classes, deep_supervision=False)
    while estimate / ref_bs * 2 > reference:  # the patch must fit at batch size 2
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
        trial = list(patch)
        trial[axis] -= divisor[axis]
        _, _, _, _, div_trial = T.pool_and_conv_props(spacing, trial)
        patch = list(patch)
        patch[axis] -= div_trial[axis]
        topo, patch, divisor = T.make_topology(spacing, patch)
        estimate = T.feature_map_voxels(topo, patch, num_classes, deep_supervision=False)
    batch = round(reference / estimate * ref_bs)
    cap = round(n_voxels_dataset * MAX_DATASET_COVERED / np.prod(patch, dtype=np.float64))
    batch = int(max(min(batch, cap), MIN_BATCH_SIZE))
    return ConfigurationPlan(name=name, data_identifier=data_identifier, spacing_mm=spacing, patch_size=[int(p) for p in patch],
                             median_shape_vox=[int(round(m)) for m in median_shape], batch_size=batch, batch_dice=batch_dice,
                             topology=topo, normalization=normalization, resampling=ResamplingSettings(),
                             estimated_vram_gb=round(estimate / reference * gpu_memory_gb * batch / ref_bs, 3))


def _lowres(plan_one: Callable[..., ConfigurationPlan], sp_t: np.ndarray, median_t: np.ndarray, num_cases: int,
            num_classes: int, norm: list[ChannelNormalization]) -> ConfigurationPlan | None:
    """3d_lowres: coarsen in 3 % steps until the patch covers >= 25 % of the median case (None: not worth it)."""
    low_sp = np.array(sp_t, dtype=float)
    low = None
    median_vox = float(np.prod(median_t, dtype=np.float64))
    patch_vox = 0.0
    while patch_vox / median_vox < LOWRES_THRESHOLD:
        ratio = low_sp.max() / low_sp
        if np.any(ratio > 2):
            low_sp[ratio > 2] *= LOWRES_SPACING_STEP
        else:
            low_sp *= LOWRES_SPACING_STEP
        low_shape = sp_t / low_sp * median_t
        median_vox = float(np.prod(low_shape, dtype=np.float64))
        low = plan_one("3d_lowres", low_sp, [round(v) for v in low_shape], median_vox * num_cases, num_classes, norm,
                       f"{PLANS_NAME}_3d_lowres", False)
        if not np.allclose(low.spacing_mm, low_sp):  # the CPU rule coarsened further: continue from its grid
            low_sp = np.array(low.spacing_mm, dtype=float)
            median_vox = float(np.prod(sp_t / low_sp * median_t, dtype=np.float64))
        patch_vox = float(np.prod(low.patch_size, dtype=np.float64))
    assert low is not None
    if np.prod(median_t, dtype=np.float64) / median_vox < 2:  # lowres is barely smaller: drop it
        return None
    low.next_stage = "3d_cascade_fullres"
    return low


def _plan_gpu_configuration(name, spacing, median_shape, n_voxels_dataset, num_classes, normalization, data_identifier,
                            batch_dice, gpu_memory_gb: float) -> ConfigurationPlan:
    """:func:`plan_configuration` with the argument order the CPU rule shares."""
    return plan_configuration(name, spacing, median_shape, n_voxels_dataset, num_classes, gpu_memory_gb, normalization,
                              data_identifier, batch_dice)


def _configuration_planner(target: str, gpu_memory_gb: float, in_channels: int) -> Callable[..., ConfigurationPlan]:
    """The one-configuration rule of ``target``: GPU memory (nnU-Net) or CPU time (cpu_planner)."""
    if target == "gpu":
        return functools.partial(_plan_gpu_configuration, gpu_memory_gb=gpu_memory_gb)
    if target == "cpu":
        return functools.partial(plan_cpu_configuration, in_channels=in_channels)
    raise AutosegError(f"--target {target}: choose gpu (size to GPU memory) or cpu (size to ~1 s per training iteration)")


def plan_experiment(info: DatasetInfo, fp: DatasetFingerprint, gpu_memory_gb: float = 8.0,
                    configurations: Sequence[str] = ("2d", "3d_fullres", "3d_lowres", ROI_NAME), normalization: str | None = None,
                    target: str = "gpu") -> Plans:
    """All configurations for a dataset; ``configurations`` filters which are planned.

    ``target``: ``gpu`` sizes patch and batch to ``gpu_memory_gb`` (nnU-Net's rules, exactly);
    ``cpu`` to a training iteration of about a second on 2 cores (:mod:`autoseg.planners.cpu_planner`;
    3d_fullres may then use a coarser spacing than the median, and the cascade's second stage with it).
    """
    plan_one = _configuration_planner(target, gpu_memory_gb, info.num_channels)
    spacings, shapes = fp.spacings(), fp.shapes_after_crop()
    full_sp = fullres_spacing(spacings, shapes)
    tf = [int(np.argmax(full_sp))] + [i for i in range(3) if i != int(np.argmax(full_sp))]
    tb = [tf.index(i) for i in range(3)]
    new_shapes = np.array([compute_new_shape(s, sp, full_sp) for s, sp in zip(shapes, spacings)])
    median_t = np.median(new_shapes, 0)[tf]
    sp_t = full_sp[tf]
    n_vox = float(np.prod(median_t, dtype=np.float64) * fp.num_cases)
    norm = normalization_for(info, fp, normalization)
    k = info.label_definition.num_outputs
    confs: dict[str, ConfigurationPlan] = {}
    if "2d" in configurations:
        confs["2d"] = plan_one("2d", sp_t[1:], median_t[1:], n_vox, k, norm, f"{PLANS_NAME}_2d", True)
    full = plan_one("3d_fullres", sp_t, median_t, n_vox, k, norm, f"{PLANS_NAME}_3d_fullres", True)
    if not np.allclose(full.spacing_mm, sp_t):  # CPU rule: the fullres grid itself was coarsened
        median_t, sp_t = sp_t / np.asarray(full.spacing_mm) * median_t, np.asarray(full.spacing_mm)
        n_vox = float(np.prod(median_t, dtype=np.float64) * fp.num_cases)
    if "3d_fullres" in configurations:
        confs["3d_fullres"] = full
    if "3d_lowres" in configurations and np.prod(full.patch_size, dtype=np.float64) / np.prod(median_t, dtype=np.float64) < LOWRES_THRESHOLD:
        low = _lowres(plan_one, sp_t, median_t, fp.num_cases, k, norm)
        if low is not None:
            confs["3d_lowres"] = low
            cascade = plan_one("3d_cascade_fullres", sp_t, median_t, n_vox, k, norm, full.data_identifier, True)
            cascade.previous_stage = "3d_lowres"
            confs["3d_cascade_fullres"] = cascade
    if ROI_NAME in configurations:
        roi = plan_roi(plan_one, fp, full_sp, tf, k, norm, "3d_lowres" if "3d_lowres" in confs else "3d_fullres", PLANS_NAME)
        if roi is not None:
            confs[ROI_NAME] = roi
    if "3d_fullres" in confs:
        full.batch_dice = "3d_lowres" in confs  # nnU-Net: batch Dice for fullres only when a cascade exists
    for c in confs.values() if target == "cpu" else ():
        keep_orientation(c, tf)
    for c in confs.values():  # what each plan would cost on the reference CPU (the GPU plans too)
        if c.expected_s_per_iter_cpu is None:
            c.train_gflop_per_iter = round(c.batch_size * train_gflop(c.topology, c.patch_size, info.num_channels, k), 2)
            c.expected_s_per_iter_cpu = round(seconds_per_iteration(c.topology, c.patch_size, info.num_channels, k, c.batch_size), 3)
    return Plans(dataset_name=fp.dataset_name, plans_name=PLANS_NAME, gpu_memory_gb=gpu_memory_gb, transpose_forward=tf,
                 transpose_backward=tb, original_median_spacing_mm=[float(v) for v in np.median(spacings, 0)],
                 original_median_shape_vox=[int(v) for v in np.median(fp.shapes_after_crop(), 0)],
                 num_input_channels=info.num_channels, labels=dict(info.labels), configurations=confs, memory_model=MEMORY_MODEL,
                 target=target, cost_model=COST_MODEL, regions_class_order=info.regions_class_order)
