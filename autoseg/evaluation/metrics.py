"""Segmentation metrics on integer label maps.

All functions take (Z, Y, X) label arrays (reference first, prediction second) and, where
distances are involved, ``spacing_zyx`` in mm in the same axis order.

A *region* is a tuple of labels evaluated as one mask, e.g. liver including tumour is
``(1, 2)``; a plain label ``1`` is the same as the region ``(1,)``. Keys in the returned dicts
are :func:`region_key` strings: ``"1"``, ``"2"``, ``"1+2"``.

Conventions (these decide what a summary means; nnU-Net uses the same for overlap metrics):

* Dice and IoU are NaN when reference and prediction are both empty (nothing to segment and
  nothing predicted is neither a hit nor a miss); means over cases skip NaN.
  Precision is NaN when the prediction is empty, recall when the reference is empty.
* Relative volume difference ``(|P| - |R|) / |R|`` is NaN when both are empty and +inf when
  only the reference is empty. Volume overlap error is ``1 - IoU``.
* Surface voxels are mask voxels with at least one face neighbour (6-connectivity) outside
  the mask; the image border counts as outside. Distances are Euclidean between voxel
  centres in mm (``distance_transform_edt(..., sampling=spacing)``), so two identical masks
  score 0 and a one-voxel shift along z scores ``spacing_zyx[0]``.
* HD95 is the larger of the two directed 95th percentiles (prediction surface to
  reference surface and back; MONAI's convention). ASSD pools both directions:
  ``(sum d(P->R) + sum d(R->P)) / (|S_P| + |S_R|)`` (the liver-challenge definition).
  Both are NaN when both masks are empty and +inf when exactly one is empty, so a mean over
  cases with a missed structure is inf; report it next to the Dice, not instead of it.
* Lesions are 26-connected components of the tumour label. A reference lesion is detected
  when any predicted tumour voxel overlaps it; a predicted lesion is a true positive when it
  overlaps any reference tumour voxel (one big predicted blob can detect several lesions).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from autoseg.model.postprocessing import connected_components
from autoseg.overlap import dice_from_counts

Region = tuple[int, ...]


def as_region(label_or_region: int | Sequence[int]) -> Region:
    """``1`` -> ``(1,)``; ``[1, 2]`` -> ``(1, 2)`` (sorted, duplicates removed)."""
    if isinstance(label_or_region, (int, np.integer)):
        return (int(label_or_region),)
    return tuple(sorted({int(v) for v in label_or_region}))


def region_key(label_or_region: int | Sequence[int]) -> str:
    """JSON key of a label or region: ``2`` -> ``"2"``, ``(1, 2)`` -> ``"1+2"``."""
    return "+".join(str(v) for v in as_region(label_or_region))


def region_mask(seg: np.ndarray, region: int | Sequence[int]) -> np.ndarray:
    """Boolean mask of the voxels whose label is in ``region``."""
    region = as_region(region)
    if len(region) == 1:
        return seg == region[0]
    return np.isin(seg, region)


def confusion_matrix(ref: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """``cm[r, p]`` = number of voxels with reference label r and predicted label p.

    One ``bincount`` pass over the volume; labels >= ``num_labels`` (or negative) are folded
    into the last row/column so they never alias a real label.
    """
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} != prediction shape {pred.shape}")
    k = num_labels + 1
    cm = np.zeros(k * k, dtype=np.int64)
    flat_ref, flat_pred = ref.reshape(-1), pred.reshape(-1)
    chunk = 1 << 22  # bounded temporaries for 512x512x1000 volumes
    for start in range(0, flat_ref.size, chunk):
        r = flat_ref[start:start + chunk].astype(np.int64)
        p = flat_pred[start:start + chunk].astype(np.int64)
        r[(r < 0) | (r >= num_labels)] = num_labels
        p[(p < 0) | (p >= num_labels)] = num_labels
        cm += np.bincount(r * k + p, minlength=k * k)
    return cm.reshape(k, k)


def region_counts(cm: np.ndarray, region: int | Sequence[int]) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) voxel counts of ``region`` read off a :func:`confusion_matrix`."""
    inside = np.zeros(cm.shape[0], dtype=bool)
    for v in as_region(region):
        if v < cm.shape[0] - 1:
            inside[v] = True
    tp = int(cm[np.ix_(inside, inside)].sum())
    fp = int(cm[np.ix_(~inside, inside)].sum())
    fn = int(cm[np.ix_(inside, ~inside)].sum())
    tn = int(cm.sum()) - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def overlap_metrics(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Dice, IoU, precision, recall, VOE and RVD from voxel counts (NaN conventions above).

    Example: tp=6, fp=2, fn=4 -> Dice 12/18 = 0.667, IoU 6/12 = 0.5, precision 0.75,
    recall 0.6, VOE 0.5, RVD (8 - 10) / 10 = -0.2.
    """
    n_ref, n_pred = tp + fn, tp + fp
    iou = _ratio(tp, tp + fp + fn)
    if n_ref > 0:
        rvd = (n_pred - n_ref) / n_ref
    else:
        rvd = float("inf") if n_pred > 0 else float("nan")
    return {"Dice": float(dice_from_counts(tp, fp, fn)), "IoU": iou, "precision": _ratio(tp, n_pred),
            "recall": _ratio(tp, n_ref), "VOE": 1.0 - iou, "RVD": float(rvd),
            "TP": tp, "FP": fp, "FN": fn, "n_ref": n_ref, "n_pred": n_pred}


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tightest slices around the True voxels, or None for an empty mask."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        if nz.size == 0:
            return None
        slices.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(slices)


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the array border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(ref_mask: np.ndarray, pred_mask: np.ndarray,
                      spacing_zyx: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface -> ref surface, ref surface -> pred surface).

    Both masks must be non-empty. Work is done inside the bounding box of ``ref | pred``:
    everything outside is background for both, so erosion and nearest-surface distances are
    unchanged by the crop.
    """
    box = bounding_box(ref_mask | pred_mask)
    assert box is not None, "surface_distances needs non-empty masks"
    s_ref, s_pred = surface(ref_mask[box]), surface(pred_mask[box])
    spacing = [float(s) for s in spacing_zyx]
    dist_to_ref = ndimage.distance_transform_edt(~s_ref, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)
    return dist_to_ref[s_pred], dist_to_pred[s_ref]


def surface_metrics(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    """HD95 and ASSD in mm (NaN if both masks are empty, inf if exactly one is)."""
    has_ref, has_pred = bool(ref_mask.any()), bool(pred_mask.any())
    if not has_ref and not has_pred:
        return {"HD95_mm": float("nan"), "ASSD_mm": float("nan")}
    if not (has_ref and has_pred):
        return {"HD95_mm": float("inf"), "ASSD_mm": float("inf")}
    d_pred_ref, d_ref_pred = surface_distances(ref_mask, pred_mask, spacing_zyx)
    hd95 = max(float(np.percentile(d_pred_ref, 95)), float(np.percentile(d_ref_pred, 95)))
    assd = float((d_pred_ref.sum() + d_ref_pred.sum()) / (d_pred_ref.size + d_ref_pred.size))
    return {"HD95_mm": hd95, "ASSD_mm": assd}


def lesion_detection(ref_mask: np.ndarray, pred_mask: np.ndarray) -> dict[str, float]:
    """Lesion-wise detection counts and rates for one tumour mask pair.

    ``lesion_precision`` = true-positive predicted lesions / predicted lesions (NaN if none
    predicted), ``lesion_recall`` = detected reference lesions / reference lesions (NaN if
    none in the reference), F1 their harmonic mean; F1 is 0 when one side has lesions and
    the other none, NaN when neither has any.
    """
    box = bounding_box(ref_mask | pred_mask)
    if box is not None:  # components never leave the box of ref | pred; labelling the crop is cheaper
        ref_mask, pred_mask = ref_mask[box], pred_mask[box]
    ref_cc, n_ref = connected_components(ref_mask)
    pred_cc, n_pred = connected_components(pred_mask)
    detected = int(np.count_nonzero(np.unique(ref_cc[pred_mask]))) if n_ref else 0
    tp_pred = int(np.count_nonzero(np.unique(pred_cc[ref_mask]))) if n_pred else 0
    precision, recall = _ratio(tp_pred, n_pred), _ratio(detected, n_ref)
    if n_ref == 0 and n_pred == 0:
        f1 = float("nan")
    elif n_ref == 0 or n_pred == 0 or precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {"lesion_precision": precision, "lesion_recall": recall, "lesion_F1": f1,
            "lesion_n_ref": n_ref, "lesion_n_pred": n_pred, "lesion_detected": detected,
            "lesion_tp_pred": tp_pred, "lesion_fp": n_pred - tp_pred, "lesion_fn": n_ref - detected}


def compute_case_metrics(ref: np.ndarray, pred: np.ndarray, spacing_zyx: Sequence[float],
                         labels_or_regions: Iterable[int | Sequence[int]], tumor_label: int | None = 2,
                         surface_distances_mm: bool = True) -> dict[str, dict[str, float]]:
    """All metrics of one case: ``{region_key: {metric: value}}``.

    Overlap counts come from one confusion matrix; surface distances (skipped when
    ``surface_distances_mm`` is False) and, for ``tumor_label``, lesion detection are computed
    per label on cropped masks. Cost: the two distance transforms per region dominate (about
    1-2 s each for a liver's bounding box at 0.8 mm in-plane); pass
    ``surface_distances_mm=False`` when only overlap numbers are needed.
    """
    regions = [as_region(r) for r in labels_or_regions]
    max_label = max([max(r) for r in regions] + [int(ref.max(initial=0)), int(pred.max(initial=0))])
    cm = confusion_matrix(ref, pred, max_label + 1)
    out: dict[str, dict[str, float]] = {}
    for region in regions:
        tp, fp, fn, _ = region_counts(cm, region)
        metrics = overlap_metrics(tp, fp, fn)
        need_masks = surface_distances_mm or (tumor_label is not None and region == (tumor_label,))
        if need_masks:
            ref_mask, pred_mask = region_mask(ref, region), region_mask(pred, region)
            if surface_distances_mm:
                metrics.update(surface_metrics(ref_mask, pred_mask, spacing_zyx))
            if tumor_label is not None and region == (tumor_label,):
                metrics.update(lesion_detection(ref_mask, pred_mask))
        out[region_key(region)] = metrics
    return out


def mean_metrics(per_case: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean over cases of every (region, metric), skipping NaN; all-NaN stays NaN."""
    out: dict[str, dict[str, float]] = {}
    for key in (per_case[0] if per_case else {}):
        out[key] = {}
        for metric in per_case[0][key]:
            values = np.array([case[key][metric] for case in per_case if key in case], dtype=float)
            finite_or_inf = values[~np.isnan(values)]
            out[key][metric] = float(finite_or_inf.mean()) if finite_or_inf.size else float("nan")
    return out
