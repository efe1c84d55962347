"""Clinical read-out of an organ/lesion segmentation (liver/tumour by default): volumes, tumour
burden, lesion list.

Which label is the organ and which the lesion is a :class:`ClinicalLabels` (``evaluate`` and
``report`` take ``--organ-label`` / ``--lesion-label``; by default the lesion is the label named
like one -- tumour, lesion, cancer, metastasis -- and the organ the lowest other label, else
liver 1 / tumour 2). The summary's keys keep the liver's names (``liver_volume_ml`` is the organ's).

Conventions:

* Volumes are voxel counts times the voxel volume (``prod(spacing_zyx)`` mm^3 / 1000 = mL).
  The liver volume *includes* the tumour (the organ as a radiologist outlines it).
* Lesions are 26-connected components of the tumour label, listed largest first.
* The largest axial diameter of a lesion is its maximum Feret diameter within one z slice,
  taken over the *corners* of its pixels (in mm, using the in-plane spacing): the exact
  largest distance across the pixelated outline, so a 10 x 6 pixel box measures
  ``hypot(10 * dy, 6 * dx)`` and a single pixel ``hypot(dy, dx)``. The slice where it is
  largest is reported as well (RECIST-style long axis, measured on axial slices only).
* Centroids are in voxel indices (z, y, x) and, when a :class:`Geometry` is given, in
  physical scanner coordinates (x, y, z) mm through its origin and direction (ITK/LPS).
* Undefined numbers (tumour burden of an empty liver) are ``None`` so the dict is plain JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from autoseg.errors import AutosegError
from autoseg.evaluation.metrics import connected_components
from autoseg.io.images import Geometry

LESION_WORDS = ("tumor", "tumour", "lesion", "cancer", "metasta")


@dataclass(frozen=True)
class ClinicalLabels:
    """The organ's and the lesion's label values (and names) in the clinical read-out."""

    organ: int = 1
    lesion: int = 2
    organ_name: str = "liver"
    lesion_name: str = "tumour"


def clinical_labels(names: dict[int, str], organ: int | None = None, lesion: int | None = None) -> ClinicalLabels | None:
    """The roles among the labels ``names`` (``{value: name}``): given values win, else the lesion is
    the first label named like one and the organ the lowest other label. None when no lesion is
    given or found (no clinical read-out); a given value that is not a label is refused."""
    for given, role in ((organ, "organ"), (lesion, "lesion")):
        if given is not None and given not in names:
            raise AutosegError(f"--{role}-label {given}: not one of the labels evaluated ({sorted(names)}); pick one of them")
    if lesion is None:
        lesion = next((v for v, n in sorted(names.items()) if any(w in n.lower() for w in LESION_WORDS)), None)
    if lesion is None:
        return None
    if organ is None:
        organ = min((v for v in names if v != lesion), default=1)
    return ClinicalLabels(organ, lesion, names.get(organ, f"label{organ}"), names.get(lesion, f"label{lesion}"))

_CORNERS = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])


def max_feret_diameter_2d(mask_yx: np.ndarray, spacing_yx: Sequence[float]) -> float:
    """Largest distance (mm) between two pixel corners of a 2D mask (0 for an empty mask).

    Uses the convex hull of the corner points, so a slice with thousands of pixels costs a
    hull plus a pairwise search over its few hundred vertices.
    """
    coords = np.argwhere(mask_yx)
    if coords.size == 0:
        return 0.0
    points = (coords[:, None, :] + _CORNERS[None]).reshape(-1, 2) * np.asarray(spacing_yx, dtype=float)
    points = np.unique(points, axis=0)
    if len(points) > 16:
        points = points[ConvexHull(points).vertices]  # corners of squares are never all collinear
    diff = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diff ** 2).sum(-1)).max())


def largest_axial_diameter(mask_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[float, int | None]:
    """(largest in-plane Feret diameter in mm over all z slices, the z index where it occurs)."""
    best, best_z = 0.0, None
    for z in np.flatnonzero(mask_zyx.any(axis=(1, 2))):
        d = max_feret_diameter_2d(mask_zyx[z], spacing_zyx[1:])
        if d > best:
            best, best_z = d, int(z)
    return best, best_z


def centroid_zyx(mask: np.ndarray) -> list[float]:
    """Mean voxel index (z, y, x) of a non-empty mask, from its axis projections (no index grids)."""
    total = float(np.count_nonzero(mask))
    out = []
    for axis in range(mask.ndim):
        counts = np.count_nonzero(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))
        out.append(float((counts * np.arange(mask.shape[axis])).sum() / total))
    return out


def voxel_to_physical_xyz(index_zyx: Sequence[float], geometry: Geometry) -> list[float]:
    """Physical (x, y, z) mm of a (possibly fractional) voxel index (z, y, x): origin + D @ (idx * spacing)."""
    idx_xyz = np.asarray(index_zyx, dtype=float)[::-1] * np.asarray(geometry.spacing_zyx, dtype=float)[::-1]
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    return (np.asarray(geometry.origin_xyz, dtype=float) + direction @ idx_xyz).tolist()


def clinical_summary(seg: np.ndarray, spacing_zyx: Sequence[float], liver_label: int = 1, tumor_label: int = 2,
                     geometry: Geometry | None = None) -> dict:
    """JSON-ready summary of one (Z, Y, X) label map.

    Example keys: ``liver_volume_ml`` (liver incl. tumour), ``tumor_volume_ml``,
    ``tumor_burden_percent`` (tumour / liver * 100, None without liver), ``num_lesions``,
    ``lesions`` (largest first: ``volume_ml``, ``voxel_count``, ``largest_axial_diameter_mm``,
    ``diameter_slice_z``, ``centroid_zyx_voxel``, ``centroid_xyz_mm`` when ``geometry``).
    """
    spacing = [float(s) for s in spacing_zyx]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tumor = seg == tumor_label
    n_tumor = int(np.count_nonzero(tumor))
    n_liver = int(np.count_nonzero(seg == liver_label)) + n_tumor
    liver_ml, tumor_ml = n_liver * voxel_ml, n_tumor * voxel_ml

    labelled, n = connected_components(tumor)
    lesions = []
    if n:
        sizes = np.bincount(labelled.ravel(), minlength=n + 1)
        boxes = ndimage.find_objects(labelled)
        for lesion_id in sorted(range(1, n + 1), key=lambda i: -sizes[i]):
            box = boxes[lesion_id - 1]
            mask = labelled[box] == lesion_id
            diameter, z_local = largest_axial_diameter(mask, spacing)
            centroid = [c + s.start for c, s in zip(centroid_zyx(mask), box)]
            entry = {"lesion": len(lesions) + 1, "volume_ml": float(sizes[lesion_id] * voxel_ml),
                     "voxel_count": int(sizes[lesion_id]), "largest_axial_diameter_mm": diameter,
                     "diameter_slice_z": None if z_local is None else int(z_local + box[0].start),
                     "centroid_zyx_voxel": centroid,
                     "bbox_zyx_voxel": [[int(s.start), int(s.stop)] for s in box]}
            if geometry is not None:
                entry["centroid_xyz_mm"] = voxel_to_physical_xyz(centroid, geometry)
            lesions.append(entry)

    liver_centroid = centroid_zyx((seg == liver_label) | tumor) if n_liver else None
    return {"spacing_zyx_mm": spacing, "voxel_volume_ml": voxel_ml,
            "liver_volume_ml": liver_ml, "tumor_volume_ml": tumor_ml,
            "tumor_burden_percent": (100.0 * tumor_ml / liver_ml) if n_liver else None,
            "num_lesions": int(n), "liver_centroid_zyx_voxel": liver_centroid, "lesions": lesions}


def _difference(pred: float | None, ref: float | None) -> dict:
    out = {"pred": pred, "ref": ref, "difference": None, "relative_difference_percent": None}
    if pred is not None and ref is not None:
        out["difference"] = pred - ref
        if ref != 0:
            out["relative_difference_percent"] = 100.0 * (pred - ref) / ref
    return out


def compare_summaries(pred_summary: dict, ref_summary: dict) -> dict:
    """Predicted minus reference for liver/tumour volume (mL), burden (percentage points), lesion count.

    Each entry is ``{"pred", "ref", "difference", "relative_difference_percent"}``; the
    relative difference is None when the reference value is 0.
    """
    keys = ("liver_volume_ml", "tumor_volume_ml", "tumor_burden_percent", "num_lesions")
    return {k: _difference(pred_summary.get(k), ref_summary.get(k)) for k in keys}
