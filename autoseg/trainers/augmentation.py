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

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import NumpyToTensor, RemoveLabelTransform

from autoseg.trainers.sampling import crop_into

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


def default_augmentation_settings(patch_size: list[int]) -> AugmentationSettings:
    """nnU-Net v2's ``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` for a patch size.

    3D: pseudo-2D when ``max(patch) / patch[0] > 3`` (then ±180° in-plane), else ±30°.
    2D: ±15° when ``max/min > 1.5``, else ±180°. Mirroring on all axes. The initial patch uses the
    scale range (0.85, 1.25) as nnU-Net does (not the augmentation's 0.7-1.4: zoom-outs beyond
    1/0.85 show a zero border, a deliberate cost cap).
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


def downsample_seg_nearest(seg: np.ndarray, scale: list[float]) -> np.ndarray:
    """Nearest-neighbour resize of a label batch (B, C, *spatial) by ``scale`` per spatial axis.

    Output size ``round(n * s)`` (at least 1); output voxel ``i`` takes input voxel
    ``floor((i + 0.5) * n / m)`` (centre to centre, torch's ``nearest-exact``). Example: n=4, s=0.5
    keeps voxels 1 and 3. Scale 1 returns ``seg`` itself (no copy).
    """
    out = seg
    for axis, s in enumerate(scale, start=2):
        n = seg.shape[axis]
        m = max(1, int(round(n * s)))
        if m == n:
            continue
        idx = np.minimum(((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1)
        out = np.take(out, idx, axis=axis)
    return out


@dataclass(frozen=True)
class SpatialParams:
    """One sample's rotation/scaling. ``angles_rad``: about array axes 0, 1, 2 in 3D (one in-plane
    angle in 2D); ``scale`` > 1 samples a larger region (objects shrink), < 1 zooms in."""

    angles_rad: tuple[float, ...] = ()
    scale: float = 1.0

    def matrix(self, dim: int) -> np.ndarray | None:
        """(dim, dim) map from output offsets to input offsets (voxels, array axis order); None = identity."""
        if not any(self.angles_rad) and self.scale == 1.0:
            return None
        planes = [(1, 2), (0, 2), (0, 1)] if dim == 3 else [(0, 1)]
        m = np.eye(dim)
        for (a, b), angle in zip(planes, self.angles_rad):
            r = np.eye(dim)
            r[a, a] = r[b, b] = math.cos(angle)
            r[a, b], r[b, a] = -math.sin(angle), math.sin(angle)
            m = m @ r
        return m * self.scale


def sample_spatial_params(dim: int, rotation_deg: float, scale_range: tuple[float, float],
                          p_rotation: float = 0.2, p_scale: float = 0.2) -> SpatialParams:
    """Draw (from ``np.random``) nnU-Net v2's parameters: with p 0.2 every angle uniform in
    ±rotation_deg, with p 0.2 one scale uniform in ``scale_range`` shared by all axes."""
    angles: tuple[float, ...] = ()
    if np.random.uniform() < p_rotation:
        rad = math.radians(rotation_deg)
        angles = tuple(float(np.random.uniform(-rad, rad)) for _ in range(3 if dim == 3 else 1))
    scale = float(np.random.uniform(*scale_range)) if np.random.uniform() < p_scale else 1.0
    return SpatialParams(angles, scale)


def _label_range(seg: np.ndarray) -> np.ndarray:
    """Candidate labels ``min..max`` (a label absent in between only costs an empty channel)."""
    if seg.size == 0:
        return np.zeros(0, dtype=seg.dtype)
    return np.arange(int(seg.min()), int(seg.max()) + 1).astype(seg.dtype)


def apply_spatial(image: np.ndarray, seg: np.ndarray | None, matrix: np.ndarray | None, patch_size: list[int],
                  border_value_data: float = 0.0, border_value_seg: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample one sample onto a ``patch_size`` grid centred in the input (deterministic).

    ``image`` (C, *in) float32, ``seg`` (Cs, *in) integer labels. Output voxel at offset ``o``
    from the patch centre reads the input at ``matrix @ o + (in - 1) / 2``: image trilinearly
    (bilinearly in 2D), labels as nnU-Net v2 does, by resampling each label's indicator and
    taking the argmax; where less than half the weight lies inside the input, the border values.
    ``matrix=None``: a plain centre crop (start ``(in - patch) // 2``), no interpolation.
    """
    dim, patch = len(patch_size), [int(p) for p in patch_size]
    in_shape = np.array(image.shape[1:])
    if matrix is None:
        lower = tuple(int(v) for v in (in_shape - np.array(patch)) // 2)
        img_out = np.full((image.shape[0], *patch), border_value_data, dtype=np.float32)
        crop_into(image, lower, tuple(patch), img_out)
        seg_out = None
        if seg is not None:
            seg_out = np.full((seg.shape[0], *patch), border_value_seg, dtype=seg.dtype)
            crop_into(seg, lower, tuple(patch), seg_out)
        return img_out, seg_out
    half = (np.array(patch) - 1) / 2.0
    centre = (in_shape - 1) / 2.0
    reach = np.abs(matrix) @ half  # input region the patch touches, cropped before interpolating
    fully_inside = bool(np.all(centre - reach >= 0) and np.all(centre + reach <= in_shape - 1))
    lo = np.clip(np.floor(centre - reach).astype(int), 0, in_shape)
    hi = np.clip(np.floor(centre + reach).astype(int) + 2, 0, in_shape)
    region = (slice(None), *(slice(a, b) for a, b in zip(lo, hi)))
    sub_shape = np.maximum(hi - lo, 1).astype(np.float32)
    coords = _patch_offsets(tuple(patch)) @ torch.from_numpy(matrix.T.astype(np.float32))
    coords += torch.from_numpy((centre - lo).astype(np.float32))
    grid = ((2 * coords + 1) / torch.from_numpy(sub_shape) - 1).flip(-1).contiguous()[None]

    def sample(arr: np.ndarray) -> torch.Tensor:  # (n, *sub) -> (n, *patch), zero outside
        if arr.size == 0:
            return torch.zeros((arr.shape[0], *patch))
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
        return torch.nn.functional.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]

    img_out = (sample(image[region] - border_value_data) + border_value_data).numpy()
    if seg is None:
        return img_out, None
    seg_sub = seg[region]
    seg_out = np.full((seg.shape[0], *patch), border_value_seg, dtype=seg.dtype)
    labels = _label_range(seg_sub)
    if len(labels) == 0:
        return img_out, seg_out
    # fully inside, the weights sum to 1: the first label's weight is 1 - the others' (one channel less)
    sampled = labels[1:] if fully_inside else labels
    onehot = (seg_sub[:, None] == sampled.reshape(1, -1, *([1] * dim))).reshape(-1, *seg_sub.shape[1:])
    weights = sample(onehot).reshape(seg.shape[0], len(sampled), *patch)
    if fully_inside:
        weights = torch.cat([1 - weights.sum(dim=1, keepdim=True), weights], dim=1)
    w = weights.numpy()
    best = w[:, 0].copy()
    seg_out[...] = labels[0]
    for i in range(1, len(labels)):  # argmax over few labels; faster than a strided reduction
        better = w[:, i] > best
        seg_out[better] = labels[i]
        np.maximum(best, w[:, i], out=best)
    if not fully_inside:
        seg_out[weights.sum(dim=1).numpy() < 0.5] = border_value_seg
    return img_out, seg_out


@functools.lru_cache(maxsize=8)
def _patch_offsets(patch: tuple[int, ...]) -> torch.Tensor:
    """(*patch, dim) voxel offsets of each output voxel from the patch centre (read-only, cached)."""
    axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2.0 for p in patch]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


class SpatialAugmentTransform(AbstractTransform):
    """Random rotation/scaling and centre crop to ``patch_size``: per sample, sample then apply."""

    def __init__(self, patch_size: list[int], rotation_deg: float, scale_range: tuple[float, float],
                 p_rotation: float = 0.2, p_scale: float = 0.2, border_value_data: float = 0.0,
                 border_value_seg: int = 0) -> None:
        self.patch_size = [int(p) for p in patch_size]
        self.rotation_deg, self.scale_range = float(rotation_deg), tuple(scale_range)
        self.p_rotation, self.p_scale = p_rotation, p_scale
        self.border_value_data, self.border_value_seg = border_value_data, border_value_seg

    def __call__(self, **data_dict):
        data, seg = data_dict["data"], data_dict.get("target")
        dim = len(self.patch_size)
        data_out = np.empty((data.shape[0], data.shape[1], *self.patch_size), dtype=np.float32)
        seg_out = None if seg is None else np.empty((seg.shape[0], seg.shape[1], *self.patch_size), seg.dtype)
        for b in range(data.shape[0]):
            params = sample_spatial_params(dim, self.rotation_deg, self.scale_range, self.p_rotation, self.p_scale)
            d, s = apply_spatial(data[b], None if seg is None else seg[b], params.matrix(dim), self.patch_size,
                                 self.border_value_data, self.border_value_seg)
            data_out[b] = d
            if seg_out is not None:
                seg_out[b] = s
        data_dict["data"] = data_out
        if seg_out is not None:
            data_dict["target"] = seg_out
        return data_dict


@dataclass(frozen=True)
class LowResParams:
    """Channels to degrade and their zoom factors (< 1 = coarser)."""

    channels: tuple[int, ...] = ()
    zooms: tuple[float, ...] = ()


def sample_lowres_params(n_channels: int, zoom_range: tuple[float, float] = (0.5, 1.0),
                         p_per_channel: float = 0.5) -> LowResParams:
    """Each channel with p ``p_per_channel``, its own zoom uniform in ``zoom_range`` (``np.random``)."""
    channels = tuple(c for c in range(n_channels) if np.random.uniform() < p_per_channel)
    return LowResParams(channels, tuple(float(np.random.uniform(*zoom_range)) for _ in channels))


def apply_lowres(image: np.ndarray, params: LowResParams, ignore_axes: tuple[int, ...] = ()) -> np.ndarray:
    """Simulate a coarser scan in place: nearest-exact down to ``round(n * zoom)``, (tri)linear back up.

    ``image`` (C, *spatial) float32; spatial axes in ``ignore_axes`` keep their resolution.
    """
    shape = image.shape[1:]
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    for c, zoom in zip(params.channels, params.zooms):
        small = [n if a in ignore_axes else max(1, round(n * zoom)) for a, n in enumerate(shape)]
        t = torch.from_numpy(np.ascontiguousarray(image[c]))[None, None]
        down = torch.nn.functional.interpolate(t, size=small, mode="nearest-exact")
        image[c] = torch.nn.functional.interpolate(down, size=list(shape), mode=mode, align_corners=False)[0, 0].numpy()
    return image


class LowResolutionTransform(AbstractTransform):
    """nnU-Net v2's low-resolution simulation (p 0.25 per sample, p 0.5 per channel, zoom 0.5-1)."""

    def __init__(self, zoom_range=(0.5, 1.0), p_per_sample=0.25, p_per_channel=0.5, ignore_axes=()) -> None:
        self.zoom_range, self.p_per_sample, self.p_per_channel = tuple(zoom_range), p_per_sample, p_per_channel
        self.ignore_axes = tuple(ignore_axes or ())

    def __call__(self, **data_dict):
        data = data_dict["data"]
        for b in range(data.shape[0]):
            if np.random.uniform() < self.p_per_sample:
                params = sample_lowres_params(data.shape[1], self.zoom_range, self.p_per_channel)
                apply_lowres(data[b], params, self.ignore_axes)
        return data_dict


class DownsampleSegForDSTransform(AbstractTransform):
    """Replace ``target`` by a list of nearest-downsampled copies, one per scale (deterministic)."""

    def __init__(self, ds_scales: list[list[float]], key: str = "target") -> None:
        self.ds_scales = [list(s) for s in ds_scales]
        self.key = key

    def __call__(self, **data_dict):
        seg = data_dict[self.key]
        data_dict[self.key] = [downsample_seg_nearest(seg, s) for s in self.ds_scales]
        return data_dict


class FoldFirstAxisTransform(AbstractTransform):
    """Pseudo-2D: (B, C, Z, Y, X) -> (B, C*Z, Y, X) for data and target; ``unfold`` undoes it."""

    def __init__(self, unfold: bool = False) -> None:
        self.unfold = unfold

    def __call__(self, **data_dict):
        for key in ("data", "target"):
            arr = data_dict[key]
            if self.unfold:
                b, c, z = data_dict.pop(f"_shape_{key}")[:3]
                data_dict[key] = arr.reshape(b, c, z, *arr.shape[2:])
            else:
                data_dict[f"_shape_{key}"] = arr.shape
                data_dict[key] = arr.reshape(arr.shape[0], arr.shape[1] * arr.shape[2], *arr.shape[3:])
        return data_dict


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
