"""Training/validation augmentation: nnU-Net v2's default pipeline.

A transform is called as ``transform(**batch)`` and returns the batch dict (batchgenerators'
convention). In: :class:`~autoseg.trainers.sampling.PatchSampler` batches (``data`` float32
(B, C, *sampled), ``target`` int8 (B, 1, *sampled)). Out: ``data`` torch.float32 (B, C, *patch);
``target`` torch.int64 (B, 1, *patch), or with ``ds_scales`` a list of them, highest resolution
first. Labels out are 0..K-1: the -1 "outside the nonzero mask" marker becomes 0 (nnU-Net's
``RemoveLabelTransform(-1, 0)``); borders revealed by rotation/zoom-out get ``border_value_data``
(0 = the mean after z-scoring, not air) and ``border_value_seg`` (0).

nnU-Net v2's probabilities (``nnUNetTrainer.get_training_transforms``): rotation p 0.2 (±30° 3D,
±180° 2D/pseudo-2D), scaling p 0.2 in (0.7, 1.4), noise p 0.1 variance (0, 0.1), blur p 0.2 sigma
(0.5, 1) per channel p 0.5, brightness p 0.15 (0.75, 1.25), contrast p 0.15, low resolution p 0.25
zoom (0.5, 1) per channel p 0.5, inverted gamma p 0.1 and gamma p 0.3 in (0.7, 1.5), mirroring
each allowed axis with p 0.5. Intensity transforms and mirroring are batchgenerators'; rotation/
scaling and low resolution are written here on torch (``grid_sample``/``interpolate``), with
batchgeneratorsv2's semantics (trilinear image, per-label resampled labels), several times faster
than batchgenerators' cubic ``map_coordinates``, each split into ``sample_*_params`` (random) and
``apply_*`` (deterministic). Randomness comes from numpy's *global* generator, as in
batchgenerators: seed it per worker (the background loader does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import NumpyToTensor, RemoveLabelTransform

from autoseg.trainers.transforms import (DownsampleSegForDSTransform, FoldFirstAxisTransform, LowResolutionTransform,
                                        SpatialAugmentTransform)

MAX_ROTATION_KEEPING_SIDES = 30.0  # degrees, for plans that keep left and right apart
ANISOTROPY_THRESHOLD = 3.0  # patch max/first-axis ratio above which 3D patches get pseudo-2D augmentation


@dataclass
class AugmentationSettings:
    """The geometry of augmentation for one configuration (JSON-able, for the training log).

    ``rotation_deg``: rotations drawn in ±rotation_deg about each axis (in-plane only when 2D
    or ``do_dummy_2d``). ``initial_patch_size``: what the sampler cuts before the spatial transform
    crops ``patch_size`` from its centre. ``mirror_axes``: spatial axes (0 = first patch axis).
    """

    patch_size: list[int]
    rotation_deg: float
    scale_range: tuple[float, float] = (0.7, 1.4)
    do_dummy_2d: bool = False
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    initial_patch_size: list[int] = field(default_factory=list)
    do_elastic: bool = False


def default_augmentation_settings(patch_size: list[int], mirror_axes: list[int] | None = None) -> AugmentationSettings:
    """nnU-Net v2's ``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` for a patch size.

    3D: pseudo-2D when ``max(patch) / patch[0] > 3`` (then ±180° in-plane), else ±30°.
    2D: ±15° when ``max/min > 1.5``, else ±180°. Mirroring on all axes. The initial patch uses the
    scale range (0.85, 1.25) as nnU-Net does (not the augmentation's 0.7-1.4: zoom-outs beyond
    1/0.85 show a zero border, a deliberate cost cap). A plan that keeps the anatomy's sides
    (``ConfigurationPlan.mirror_axes``, CPU plans) mirrors only those axes and rotates at most
    ±30°, as half a turn would swap left and right.
    """
    patch_size = [int(p) for p in patch_size]
    if len(patch_size) == 2:
        dummy_2d = False
        rotation = 15.0 if max(patch_size) / min(patch_size) > 1.5 else 180.0
        mirror: tuple[int, ...] = (0, 1)
    else:
        dummy_2d = max(patch_size) / patch_size[0] > ANISOTROPY_THRESHOLD
        rotation = 180.0 if dummy_2d else 30.0
        mirror = (0, 1, 2)
    if mirror_axes is not None:
        mirror, rotation = tuple(int(a) for a in mirror_axes), min(rotation, MAX_ROTATION_KEEPING_SIDES)
    initial = initial_patch_size(patch_size, rotation, (0.85, 1.25), do_dummy_2d=dummy_2d)
    return AugmentationSettings(patch_size, rotation, (0.7, 1.4), dummy_2d, mirror, initial)


def _rotated_extent(w: float, h: float, theta: float) -> tuple[float, float]:
    """Bounding box of a w x h rectangle rotated by any angle in [0, theta] rad. The extent
    ``w|cos a| + h|sin a|`` peaks at an end of the range or at ``atan2(h, w)``: checked exactly."""
    candidates = [0.0, theta, math.atan2(h, w), math.atan2(w, h)]
    angles = np.array([a for a in candidates if 0.0 <= a <= theta])
    c, s = np.abs(np.cos(angles)), np.abs(np.sin(angles))
    return float(np.max(w * c + h * s)), float(np.max(w * s + h * c))


def initial_patch_size(patch_size: list[int], rotation_deg: float,
                       scale_range: tuple[float, float] = (0.85, 1.25), do_dummy_2d: bool = False) -> list[int]:
    """The enlarged size to sample so rotation and zoom-out leave no empty border (nnU-Net's get_patch_size).

    Per rotation plane, the bounding box of the patch rotated by up to ``rotation_deg`` (capped at
    90°), the maximum over the three single-axis rotations, divided by ``min(scale_range)``, rounded
    up. Pseudo-2D keeps axis 0. Example: 2D 64x64 at 15°: 64 (cos 15° + sin 15°) = 78.4, / 0.85 =
    92.2 -> [93, 93]. Unlike nnU-Net (which rotates only the corner vector) this is the true box;
    combined rotations about several axes can still expose thin zero corners, as in nnU-Net.
    """
    size = np.asarray(patch_size, dtype=float)
    theta = math.radians(min(abs(float(rotation_deg)), 90.0))
    out = size.copy()
    if len(size) == 2 or do_dummy_2d:
        planes = [(len(size) - 2, len(size) - 1)]
    else:
        planes = [(1, 2), (0, 2), (0, 1)]
    for a, b in planes:
        ea, eb = _rotated_extent(size[a], size[b], theta)
        out[a], out[b] = max(out[a], ea), max(out[b], eb)
    out = np.maximum(out / min(scale_range), size)
    if do_dummy_2d and len(size) == 3:
        out[0] = size[0]
    return [int(math.ceil(v - 1e-6)) for v in out]


def deep_supervision_scales(strides: list[list[int]], n_heads: int) -> list[list[float]]:
    """Target scale per deep-supervision head, highest resolution first.

    ``strides``: the topology's per-stage strides (``strides[0]`` all ones). Scale of head ``i`` is
    ``1 / prod(strides[:i+1])``. Example: strides [[1,1,1],[2,2,2],[1,2,2]], 3 heads ->
    [[1,1,1], [0.5,0.5,0.5], [0.5,0.25,0.25]].
    """
    if not 1 <= n_heads <= len(strides):
        raise ValueError(f"n_heads={n_heads} must be in 1..{len(strides)} (number of stages)")
    cumulative = np.cumprod(np.asarray(strides, dtype=float), axis=0)
    return [[float(1.0 / v) for v in row] for row in cumulative[:n_heads]]


def _outside_to_background() -> AbstractTransform:
    return RemoveLabelTransform(-1, 0, input_key="target", output_key="target")


def _to_tensors() -> list[AbstractTransform]:
    return [NumpyToTensor(["data"], "float"), NumpyToTensor(["target"], "long")]


def build_train_transforms(patch_size: list[int], rotation_deg: float,
                           scale_range: tuple[float, float] = (0.7, 1.4), do_elastic: bool = False,
                           mirror_axes: tuple[int, ...] | None = (0, 1, 2), do_dummy_2d: bool = False,
                           ds_scales: list[list[float]] | None = None, border_value_data: float = 0.0,
                           border_value_seg: int = 0) -> Compose:
    """nnU-Net v2's training augmentation (see the module docstring); crops to ``patch_size``.

    ``mirror_axes``: spatial axes to flip (None or () for none). ``do_dummy_2d``: 3D patches are
    rotated/scaled in-plane only and low-resolution simulation spares axis 0. ``do_elastic``
    adds nnU-Net v1's elastic deformation (p 0.2, alpha (0, 200), sigma (9, 13)).
    """
    patch_size = [int(p) for p in patch_size]
    dim = len(patch_size)
    # -1 -> 0 first: one label fewer to resample, same result as nnU-Net's -1 -> 0 at the end
    transforms: list[AbstractTransform] = [_outside_to_background()]
    if do_dummy_2d and dim == 3:
        transforms.append(FoldFirstAxisTransform())
        spatial_size, ignore_axes = patch_size[1:], (0,)
    else:
        spatial_size, ignore_axes = patch_size, None
    if do_elastic:  # batchgenerators v1 path (nnU-Net v1): cubic data, elastic field; slower
        angle = (-math.radians(rotation_deg), math.radians(rotation_deg))
        transforms.append(SpatialTransform(
            spatial_size, patch_center_dist_from_border=None, do_elastic_deform=True, alpha=(0.0, 200.0),
            sigma=(9.0, 13.0), do_rotation=True, angle_x=angle, angle_y=angle, angle_z=angle, do_scale=True,
            scale=tuple(scale_range), border_mode_data="constant", border_cval_data=border_value_data, order_data=3,
            border_mode_seg="constant", border_cval_seg=border_value_seg, order_seg=1, random_crop=False,
            label_key="target", p_el_per_sample=0.2, p_scale_per_sample=0.2, p_rot_per_sample=0.2))
    else:
        transforms.append(SpatialAugmentTransform(spatial_size, rotation_deg, scale_range,
                                                  border_value_data=border_value_data,
                                                  border_value_seg=border_value_seg))
    if do_dummy_2d and dim == 3:
        transforms.append(FoldFirstAxisTransform(unfold=True))
    transforms += [
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        LowResolutionTransform((0.5, 1.0), p_per_sample=0.25, p_per_channel=0.5, ignore_axes=ignore_axes or ()),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(tuple(mirror_axes), label_key="target"))
    if ds_scales is not None:
        transforms.append(DownsampleSegForDSTransform(ds_scales))
    return Compose(transforms + _to_tensors())


def build_train_transforms_from_settings(settings: AugmentationSettings,
                                         ds_scales: list[list[float]] | None = None) -> Compose:
    """:func:`build_train_transforms` with the geometry of :func:`default_augmentation_settings`."""
    return build_train_transforms(settings.patch_size, settings.rotation_deg, settings.scale_range,
                                  settings.do_elastic, settings.mirror_axes, settings.do_dummy_2d, ds_scales)


def build_val_transforms(ds_scales: list[list[float]] | None = None) -> Compose:
    """Validation: no augmentation; -1 -> 0, deep-supervision targets, tensors (same output format)."""
    transforms: list[AbstractTransform] = [_outside_to_background()]
    if ds_scales is not None:
        transforms.append(DownsampleSegForDSTransform(ds_scales))
    return Compose(transforms + _to_tensors())
