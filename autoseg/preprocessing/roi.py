"""The region of interest of the two-stage (organ -> lesion) model: a box in the input grid.

Stage 1 (a coarse model of all foreground labels together) gives a mask on the input grid; its
connected components larger than ``MIN_COMPONENT_FRACTION`` of the largest are kept and their
**union box** is grown by a margin in millimetres per axis (``ceil(margin_mm / spacing)`` voxels,
clipped to the image). Stage 2 preprocesses and predicts only that box; its mask is pasted back
into a background volume at the box, so the result lies exactly on the input grid.

``MIN_COMPONENT_FRACTION`` is 0.5: paired organs (two kidneys) are of comparable size, while a
coarse stage 1 trained for minutes leaves false components of 10-30 % of the liver's size
(measured: 5-minute CPU stage 1 on the synthetic ``medium`` test cases, benchmarks/roi_vs_single.py);
a box grown around those shows stage 2 anatomy it never saw in training (docs/benchmarks.md).

Several disjoint organs (two kidneys) get one union box: one network pass over a box holding
both, which keeps the two-stage path one prediction per case (and is exact, as every box is a
sub-grid of the input). Training uses the same boxes from the ground truth, with an extra
``jitter`` margin stored so that the trainer can shift and resize the box per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from autoseg.fingerprint.fingerprint import foreground_box
from autoseg.io.images import Geometry

MIN_COMPONENT_FRACTION = 0.5
MIN_INSIDE_FRACTION = 0.5  # of a stage-2 component's voxels inside stage 1's foreground (drop_unsupported)
Box = list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]], half-open, in the input grid


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labelled, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))  # 26-connected
    return labelled, int(n)


def foreground_components(mask: np.ndarray, min_fraction: float = MIN_COMPONENT_FRACTION) -> np.ndarray:
    """``mask`` (bool) with connected components smaller than ``min_fraction`` of the largest removed.

    Labelled inside the foreground's box and counted slab by slab: on a 512 x 512 x 300 CT a whole
    volume's labels and their int64 counts took 1 GB more than the box does."""
    fg = mask > 0
    out = np.zeros(fg.shape, dtype=bool)
    box = mask_box(fg)
    if box is None:
        return out
    sl = tuple(slice(a, b) for a, b in box)
    inner = out[sl]  # a view: writing it writes ``out``
    labelled, n = _components(fg[sl])
    del fg
    sizes = np.zeros(n + 1, dtype=np.int64)
    for plane in labelled:
        sizes += np.bincount(plane.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes >= min_fraction * sizes.max()
    keep[0] = False
    for z, plane in enumerate(labelled):
        inner[z] = keep[plane]
    return out


@dataclass
class Stage1Region:
    """Where stage 2's labels may lie in the input grid, from stage 1's mask (:func:`stage1_region`).

    ``box`` is the kept components' box grown by the margin; ``organ`` (stage 1's kept foreground)
    and ``near`` (``organ`` grown by the margin in mm) are bool arrays of the box's shape only, so a
    512 x 512 x 300 CT costs two box-sized masks, not two full volumes."""
    box: Box
    organ: np.ndarray
    near: np.ndarray

    def restrict(self, seg: np.ndarray) -> np.ndarray:
        """``seg`` (input grid) with stage 2's labels kept only where stage 1 supports them:
        background outside ``near``, then :func:`drop_unsupported` against ``organ``."""
        sl = tuple(slice(a, b) for a, b in self.box)
        inner = np.where(self.near, seg[sl], 0).astype(seg.dtype)
        out = np.zeros_like(seg)
        out[sl] = drop_unsupported(inner, self.organ)
        return out


def stage1_region(mask: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> Stage1Region | None:
    """Stage 1's kept components (:func:`foreground_components`) and those grown by ``margin_mm``
    (an ellipsoid of that radius in millimetres per axis); None when ``mask`` holds no foreground.
    Stage 2 learns from boxes around the true organ, so outside stage 1's organ it has no evidence
    to stand on: on the synthetic ``medium`` test cases this raised the two-stage liver Dice from
    0.73 to 0.88 and the tumour Dice from 0.24 to 0.29 (benchmarks/roi_vs_single.py, docs/benchmarks.md)."""
    kept = foreground_components(mask)
    box = mask_box(kept)
    if box is None:
        return None
    box = grow_box(box, spacing_zyx, margin_mm, mask.shape)
    sl = tuple(slice(a, b) for a, b in box)
    organ = kept[sl]
    near = organ if margin_mm <= 0 else \
        ndimage.distance_transform_edt(~organ, sampling=[float(s) for s in spacing_zyx]) <= margin_mm
    return Stage1Region(box=box, organ=organ, near=near)


def drop_unsupported(seg: np.ndarray, organ: np.ndarray, min_inside: float = MIN_INSIDE_FRACTION) -> np.ndarray:
    """``seg`` with each 26-connected component of each foreground label set to background when
    less than ``min_inside`` of its voxels lie in ``organ`` (stage 1's foreground) and it holds
    less than ``min_inside`` of ``organ``.

    Stage 1 segments the union of all foreground labels, so a true lesion lies inside what it found;
    stage 2's lesion calls that mostly hang outside it sit on the organ's border (on the synthetic
    ``medium`` test cases, every false lesion of a 10-minute stage 2 outside the reference liver,
    docs/benchmarks.md). Whole components are judged, so a lesion at the organ's surface that
    stage 1 clipped is kept whole; and a component holding at least ``min_inside`` of ``organ`` is
    kept too, so a stage 1 that under-segments (a 3-minute one found 37 % of a large CT's liver)
    cannot remove the organ itself."""
    out, organ_size = seg.copy(), int(organ.sum())
    for label in np.unique(seg[seg > 0]):
        labelled, n = _components(seg == label)
        size = np.bincount(labelled.ravel(), minlength=n + 1)
        inside = np.bincount(labelled[organ], minlength=n + 1)
        inside[0] = 0
        unsupported = np.flatnonzero((inside < min_inside * size) & (inside < min_inside * organ_size))
        out[np.isin(labelled, unsupported[unsupported > 0])] = 0
    return out


def grow_box(box: Box, spacing_zyx: Sequence[float], margin_mm: float, shape_zyx: Sequence[int]) -> Box:
    """``box`` grown by ``ceil(margin_mm / spacing)`` voxels on every side, clipped to ``shape_zyx``.

    Example: box z [10, 20] at 2.5 mm with a 10 mm margin -> [6, 24]; x [0, 5] at 0.8 mm -> [0, 18].
    """
    out = []
    for (a, b), sp, n in zip(box, spacing_zyx, shape_zyx):
        m = int(math.ceil(margin_mm / float(sp) - 1e-9)) if margin_mm > 0 else 0
        out.append([max(0, int(a) - m), min(int(n), int(b) + m)])
    return out


def mask_box(mask: np.ndarray) -> Box | None:
    """Tightest half-open box around the True voxels of a (Z, Y, X) mask; None when empty."""
    return foreground_box(mask)


def roi_box(mask: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float,
            min_fraction: float = MIN_COMPONENT_FRACTION) -> tuple[Box | None, int]:
    """(the union box of the kept components grown by the margin, number of components kept);
    ``(None, 0)`` when ``mask`` holds no foreground."""
    kept = foreground_components(mask, min_fraction)
    box = mask_box(kept)
    if box is None:
        return None, 0
    return grow_box(box, spacing_zyx, margin_mm, mask.shape), _components(kept)[1]


def crop_box(arr: np.ndarray, box: Box) -> np.ndarray:
    """``arr[..., z0:z1, y0:y1, x0:x1]`` (leading channel axes kept)."""
    return arr[(Ellipsis,) + tuple(slice(a, b) for a, b in box)]


def crop_case(data: np.ndarray, seg: np.ndarray | None, geometry: Geometry, box: Box) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """The box of a case: (C, *box) data, (1, *box) label or None, and the box's own geometry."""
    return crop_box(data, box), (None if seg is None else crop_box(seg, box)), geometry.cropped(box)


def paste_box(cropped: np.ndarray, box: Box, shape_zyx: Sequence[int], fill: float, dtype) -> np.ndarray:
    """A (..., *box) array put into a ``fill``-valued array of the full (..., Z, Y, X) shape."""
    full = np.full(tuple(cropped.shape[:-3]) + tuple(int(s) for s in shape_zyx), fill, dtype=dtype)
    full[(Ellipsis,) + tuple(slice(a, b) for a, b in box)] = cropped
    return full


def training_box(seg: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float, jitter_mm: float) -> tuple[Box, Box]:
    """(stored box, core box) of a training case from its label (1, Z, Y, X): the core is the
    foreground box plus the margin (what stage 2 sees at prediction), the stored box adds the
    jitter reserve. A case without foreground keeps the whole image as both."""
    shape = seg.shape[-3:]
    fg = mask_box(seg.reshape(shape) > 0)
    if fg is None:
        whole = [[0, int(n)] for n in shape]
        return whole, whole
    return grow_box(fg, spacing_zyx, margin_mm + jitter_mm, shape), grow_box(fg, spacing_zyx, margin_mm, shape)


def core_in_preprocessed(core: Box, stored: Box, props, transpose_forward: Sequence[int]) -> Box:
    """The core box in the preprocessed grid of the stored box (transposed, resampled, flipped; rounded)."""
    out = []
    for ax in transpose_forward:
        off = stored[ax][0] + props.bbox_zyx[ax][0]
        scale = props.shape_after_resampling[len(out)] / max(1, props.shape_after_crop_zyx[ax])
        lo = max(0, round((core[ax][0] - off) * scale))
        hi = min(props.shape_after_resampling[len(out)], round((core[ax][1] - off) * scale))
        hi = max(hi, lo + 1)
        if len(out) in props.flipped_axes:
            n = props.shape_after_resampling[len(out)]
            lo, hi = n - hi, n - lo
        out.append([int(lo), int(hi)])
    return out


def preprocess_roi_case(data: np.ndarray, seg: np.ndarray, geometry: Geometry, plans, config, case_id: str, seed: int = 0):
    """A training case of the two-stage model: the ground-truth box (+ margin + jitter reserve),
    preprocessed like any case, with where it lies (``roi_box_zyx``, ``roi_full_geometry``) and the
    un-jittered box in its preprocessed grid (``roi_core_zyx``) recorded in its properties."""
    from autoseg.preprocessing.preprocessor import preprocess_case
    stored, core = training_box(seg, geometry.spacing_zyx, float(config.roi_margin_mm or 0.0), float(config.roi_jitter_mm or 0.0))
    d, s, g = crop_case(data, seg, geometry, stored)
    pre, seg_pre, props = preprocess_case(np.ascontiguousarray(d), np.ascontiguousarray(s), g, plans, config, case_id, seed)
    props.roi_box_zyx, props.roi_full_geometry = stored, geometry
    props.roi_core_zyx = core_in_preprocessed(core, stored, props, plans.transpose_forward)
    return pre, seg_pre, props
