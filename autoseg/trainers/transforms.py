"""Our own augmentation transforms (torch ``grid_sample``/``interpolate``), each split into a
``sample_*_params`` half (random) and an ``apply_*`` half (deterministic, testable exactly):
rotation/scaling, low-resolution simulation, deep-supervision targets, and the pseudo-2D fold.
Used by :mod:`autoseg.trainers.augmentation`, which composes them with batchgenerators'
intensity transforms.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from autoseg.trainers.sampling import crop_into


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
    patch = [int(p) for p in patch_size]
    if matrix is None:
        return _centre_crop(image, patch, border_value_data), (None if seg is None else _centre_crop(seg, patch, border_value_seg))
    in_shape = np.array(image.shape[1:])
    half, centre = (np.array(patch) - 1) / 2.0, (in_shape - 1) / 2.0
    reach = np.abs(matrix) @ half  # input region the patch touches, cropped before interpolating
    fully_inside = bool(np.all(centre - reach >= 0) and np.all(centre + reach <= in_shape - 1))
    lo = np.clip(np.floor(centre - reach).astype(int), 0, in_shape)
    hi = np.clip(np.floor(centre + reach).astype(int) + 2, 0, in_shape)
    region = (slice(None), *(slice(a, b) for a, b in zip(lo, hi)))
    sub_shape = np.maximum(hi - lo, 1).astype(np.float32)
    coords = _patch_offsets(tuple(patch)) @ torch.from_numpy(matrix.T.astype(np.float32))
    coords += torch.from_numpy((centre - lo).astype(np.float32))
    grid = ((2 * coords + 1) / torch.from_numpy(sub_shape) - 1).flip(-1).contiguous()[None]
    img_out = (_grid_sample(image[region] - border_value_data, grid, patch) + border_value_data).numpy()
    if seg is None:
        return img_out, None
    return img_out, _sample_labels(seg[region], grid, patch, fully_inside, border_value_seg)


def _centre_crop(arr: np.ndarray, patch: list[int], border_value: float) -> np.ndarray:
    """(C, *in) -> (C, *patch) from start ``(in - patch) // 2``; outside the input: ``border_value``."""
    lower = tuple(int(v) for v in (np.array(arr.shape[1:]) - np.array(patch)) // 2)
    out = np.full((arr.shape[0], *patch), border_value, dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype)
    crop_into(arr, lower, tuple(patch), out)
    return out


def _grid_sample(arr: np.ndarray, grid: torch.Tensor, patch: list[int]) -> torch.Tensor:
    """(n, *sub) -> (n, *patch) bilinear/trilinear samples at ``grid``, zero outside."""
    if arr.size == 0:
        return torch.zeros((arr.shape[0], *patch))
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    return torch.nn.functional.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def _sample_labels(seg_sub: np.ndarray, grid: torch.Tensor, patch: list[int], fully_inside: bool, border_value: int) -> np.ndarray:
    """Labels as nnU-Net v2 resamples them: each label's indicator interpolated, then the argmax;
    where less than half the weight lies inside the input, ``border_value``."""
    seg_out = np.full((seg_sub.shape[0], *patch), border_value, dtype=seg_sub.dtype)
    labels = _label_range(seg_sub)
    if len(labels) == 0:
        return seg_out
    # fully inside, the weights sum to 1: the first label's weight is 1 - the others' (one channel less)
    sampled = labels[1:] if fully_inside else labels
    onehot = (seg_sub[:, None] == sampled.reshape(1, -1, *([1] * len(patch)))).reshape(-1, *seg_sub.shape[1:])
    weights = _grid_sample(onehot, grid, patch).reshape(seg_sub.shape[0], len(sampled), *patch)
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
        seg_out[weights.sum(dim=1).numpy() < 0.5] = border_value
    return seg_out


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
