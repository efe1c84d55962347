"""Preprocess one case: crop to nonzero -> transpose -> normalise -> resample to the plan's spacing
-> (plans with ``canonical_orientation``) flip the axes stored against their physical direction.

The same function serves training (with a label) and inference (without); everything
needed to undo it is returned in :class:`CaseProperties`.
"""

from __future__ import annotations

import numpy as np

from autoseg.fingerprint.cropping import crop, nonzero_bbox
from autoseg.io.images import Geometry
from autoseg.planners.plans import ConfigurationPlan, Plans, compute_new_shape
from autoseg.preprocessing.case_store import CaseProperties
from autoseg.preprocessing.normalization import normalize
from autoseg.preprocessing.resampling import resample_image, resample_segmentation

MAX_LOCATIONS_PER_CLASS = 10_000


def target_spacing(plans: Plans, config: ConfigurationPlan, spacing_zyx: list[float]) -> list[float]:
    """Target spacing in transposed order; 2D configurations keep the slice axis' own spacing."""
    sp_t = plans.transposed(spacing_zyx)
    if config.dim == 2:
        return [sp_t[0]] + list(config.spacing_mm)
    return list(config.spacing_mm)


def canonical_flips(geometry: Geometry, plans: Plans, config: ConfigurationPlan) -> list[int]:
    """Spatial axes of the preprocessed (transposed) grid to flip into canonical orientation."""
    if not config.canonical_orientation:
        return []
    return sorted(plans.transpose_forward.index(a) for a in geometry.reversed_axes_zyx())


def flip_spatial(arr: np.ndarray, axes: list[int]) -> np.ndarray:
    """``arr`` (C, *spatial) flipped along the spatial ``axes`` (0 = first spatial axis), contiguous."""
    return np.ascontiguousarray(np.flip(arr, [1 + a for a in axes])) if axes else arr


def class_locations(seg: np.ndarray, labels: list[int], seed: int, n_max: int = MAX_LOCATIONS_PER_CLASS) -> dict[str, list[list[int]]]:
    """Up to ``n_max`` random voxel coordinates ``[0, *spatial]`` per foreground label present.

    Coordinates are listed in C (row-major) order. Memory: one int64 per voxel of the label
    (flat indices), not three; only the chosen ones are unravelled.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[list[int]]] = {}
    for lab in labels:
        flat = np.flatnonzero(seg[0] == lab)
        if len(flat) == 0:
            continue
        if len(flat) > n_max:
            flat = flat[np.sort(rng.choice(len(flat), n_max, replace=False))]
        idx = np.stack(np.unravel_index(flat, seg.shape[1:]), axis=1)
        out[str(lab)] = np.concatenate([np.zeros((len(idx), 1), int), idx], 1).tolist()
    return out


def preprocess_case(data: np.ndarray, seg: np.ndarray | None, geometry: Geometry, plans: Plans, config: ConfigurationPlan,
                    case_id: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """``data`` (C, Z, Y, X) in original units; ``seg`` (1, Z, Y, X) or None.

    Returns float32 data and int8 seg in the plan's transposed, resampled grid. The seg holds
    *classes* (``plans.label_definition``: label values in ascending order -> 0..K-1, the ignore
    label -> K), so a dataset labelled 0, 1, 5 is stored as 0, 1, 2.
    """
    bbox = nonzero_bbox(data)
    data = crop(data, bbox)
    shape_crop = list(data.shape[1:])
    tf = [0] + [1 + a for a in plans.transpose_forward]
    data = normalize(np.transpose(data, tf), config.normalization)
    spacing_t = plans.transposed(geometry.spacing_zyx)
    new_sp = target_spacing(plans, config, geometry.spacing_zyx)
    new_shape = compute_new_shape(data.shape[1:], spacing_t, new_sp)
    r = config.resampling
    flips = canonical_flips(geometry, plans, config)
    data = flip_spatial(resample_image(data, new_shape, spacing_t, new_sp, r.order_data, r.order_data_z, r.anisotropy_threshold), flips)
    seg_out = None
    locs: dict[str, list[list[int]]] = {}
    if seg is not None:
        definition = plans.label_definition
        seg_t = definition.to_classes(np.transpose(crop(seg, bbox), tf))
        seg_out = flip_spatial(resample_segmentation(seg_t, new_shape, spacing_t, new_sp, r.order_seg, r.order_seg_z,
                                                     r.anisotropy_threshold), flips)
        locs = class_locations(seg_out, list(range(1, definition.num_classes)), seed)
    props = CaseProperties(case_id=case_id, original_geometry=geometry, bbox_zyx=bbox, shape_after_crop_zyx=shape_crop,
                           spacing_after_resampling=[float(s) for s in new_sp], shape_after_resampling=list(new_shape),
                           class_locations=locs, flipped_axes=flips)
    return data, seg_out, props


def onehot_previous_stage(seg: np.ndarray, props: CaseProperties, plans: Plans, config: ConfigurationPlan) -> np.ndarray:
    """A cascade's first-stage mask (Z, Y, X, label values) in the input grid -> float32 (K - 1, *preprocessed)
    one-hot of the foreground classes (label values in ascending order), mapped onto the grid of ``props``
    exactly as the image was (crop, transpose, resample as a segmentation, flip).

    Used both to build the cascade's training inputs and at prediction time.
    """
    r = config.resampling
    box = tuple(slice(a, b) for a, b in props.bbox_zyx)
    definition = plans.label_definition
    seg_t = definition.to_classes(np.transpose(seg[box], plans.transpose_forward)[None])
    seg_pre = resample_segmentation(seg_t, props.shape_after_resampling, plans.transposed(props.original_geometry.spacing_zyx),
                                    props.spacing_after_resampling, r.order_seg, r.order_seg_z, r.anisotropy_threshold)
    seg_pre = flip_spatial(seg_pre, props.flipped_axes)[0]
    return np.stack([(seg_pre == k) for k in range(1, definition.num_classes)]).astype(np.float32)
