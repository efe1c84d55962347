"""Map predictions from the network's grid back onto the input image, exactly.

The preprocessed grid is the input cropped to its nonzero box, transposed
(``Plans.transpose_forward``) and resampled to the plan's spacing. Undoing it, per class:
resample to the cropped shape (linear in-plane; nearest along a coarse axis when the
spacing is anisotropic: ``ResamplingSettings.order_seg`` / ``order_seg_z``), transpose back,
then paste into the original (Z, Y, X) grid at the crop box. Outside the box is background.
Masks are written with the input's :class:`~autoseg.io.images.Geometry` (size, spacing,
origin, direction), so they overlay the input in any viewer.

Memory: probabilities are resampled one class at a time and reduced by a running argmax,
so export holds one float32 class, the running maximum and the label map, never a K-times
copy or a float64 volume. ``--save-probabilities`` adds one float16 (K, Z, Y, X) array.

Saved probabilities (``--save-probabilities``, read by ``autoseg ensemble`` and model
selection): ``<case>_probabilities.npz`` with key ``probabilities``, float16 (K, Z, Y, X) in
the input grid (class k = k-th label value in ascending order), plus
``<case>_probabilities.json`` (:class:`ProbabilityInfo`: labels, geometry, mask file name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoseg.evaluation.postprocessing import PostprocessingRules, apply_postprocessing
from autoseg.io.images import Geometry, write_image
from autoseg.io.json_io import load_dataclass, save_json, atomic_path
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.case_store import CaseProperties
from autoseg.preprocessing.resampling import resample_image


@dataclass
class ProbabilityInfo:
    """``<case>_probabilities.json``: what the float16 array in the ``.npz`` means."""

    case_id: str
    labels: dict[str, int]
    geometry: Geometry
    segmentation_file: str


def probability_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    return Path(out_dir) / f"{case_id}_probabilities.npz", Path(out_dir) / f"{case_id}_probabilities.json"


def to_cropped_grid(channel: torch.Tensor, props: CaseProperties, plans: Plans, config: ConfigurationPlan) -> np.ndarray:
    """One (1, *preprocessed) map -> float32 (Z, Y, X) array of the crop box in original axis order.

    The result may be a non-contiguous view (transpose); resampling is skipped when the
    grids already agree.
    """
    tf = plans.transpose_forward
    crop_t = [props.shape_after_crop_zyx[i] for i in tf]
    spacing_t = [props.original_geometry.spacing_zyx[i] for i in tf]
    r = config.resampling
    # resample_image runs the same separable kernels (and separate-z rule) as resample_probabilities
    # on a numpy view, without the latter's extra output copy: one class-sized array less at peak
    out = resample_image(channel.numpy(), crop_t, props.spacing_after_resampling, spacing_t,
                         r.order_seg, r.order_seg_z, r.anisotropy_threshold)
    return np.transpose(out[0], plans.transpose_backward)


def paste(cropped: np.ndarray, props: CaseProperties, fill: float, dtype: np.dtype) -> np.ndarray:
    """Put a crop-box array into a ``fill``-valued array of the original (Z, Y, X) shape."""
    full = np.full(props.original_geometry.shape_zyx, fill, dtype=dtype)
    full[tuple(slice(a, b) for a, b in props.bbox_zyx)] = cropped
    return full


def map_to_original(values: torch.Tensor, props: CaseProperties, plans: Plans, config: ConfigurationPlan,
                    fill: float = 0.0) -> np.ndarray:
    """A (Z', Y', X') map in the preprocessed grid -> float32 (Z, Y, X) in the input grid."""
    return paste(to_cropped_grid(values[None], props, plans, config), props, fill, np.float32)


def segment(probs: torch.Tensor, props: CaseProperties, plans: Plans, config: ConfigurationPlan,
            keep_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, *preprocessed) probabilities -> uint8 (Z, Y, X) labels in the input grid.

    Class k maps to the k-th label value in ascending order. With ``keep_probabilities``
    also returns float16 (K, Z, Y, X) probabilities in the input grid (background 1 outside
    the crop box). Ties go to the lower class.
    """
    values = sorted(int(v) for v in plans.labels.values())
    if len(values) != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} predicted classes but plans list {len(values)} labels")
    best: np.ndarray | None = None
    labels: np.ndarray | None = None
    full_probs = None
    if keep_probabilities:
        full_probs = np.zeros([probs.shape[0]] + list(props.original_geometry.shape_zyx), dtype=np.float16)
        full_probs[0] = 1
    box = tuple(slice(a, b) for a, b in props.bbox_zyx)
    for k in range(probs.shape[0]):
        pk = to_cropped_grid(probs[k:k + 1], props, plans, config)
        if full_probs is not None:
            full_probs[k][box] = pk
        if best is None:
            # pk is a view of probs when no resampling was needed: copy it before updating in place
            best = pk if not np.may_share_memory(pk, probs.numpy()) else np.array(pk, dtype=np.float32, copy=True)
            labels = np.full(best.shape, values[0], dtype=np.uint8)
            continue
        better = pk > best
        np.maximum(best, pk, out=best)
        assert labels is not None
        labels[better] = values[k]
        del better, pk
    assert labels is not None
    return paste(labels, props, 0, np.uint8), full_probs


def _save_npz_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, ".tmp.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, probabilities=array)


def write_probabilities(probs: np.ndarray, info: ProbabilityInfo, out_dir: Path) -> None:
    """Write ``<case>_probabilities.npz`` (float16 (K, Z, Y, X)) and its ``.json``."""
    npz, js = probability_paths(out_dir, info.case_id)
    _save_npz_atomic(npz, np.asarray(probs, dtype=np.float16))
    save_json(info, js)


def load_probabilities(folder: Path, case_id: str) -> tuple[np.ndarray, ProbabilityInfo]:
    """float16 (K, Z, Y, X) probabilities and their description, as written by :func:`write_probabilities`."""
    npz, js = probability_paths(folder, case_id)
    info = load_dataclass(ProbabilityInfo, js)
    with np.load(npz) as f:
        return f["probabilities"], info


def export_prediction(probs: torch.Tensor, props: CaseProperties, plans: Plans, config: ConfigurationPlan, out_path: Path,
                      rules: PostprocessingRules | None = None, save_probabilities: bool = False) -> np.ndarray:
    """Write the mask for one case (and its probabilities if asked); returns the uint8 mask.

    ``out_path`` is the mask's file (its ending picks the format). Postprocessing ``rules``
    apply to the mask only, not to saved probabilities.
    """
    out_path = Path(out_path)
    with torch.inference_mode():
        seg, full_probs = segment(probs, props, plans, config, keep_probabilities=save_probabilities)
    if rules is not None:
        seg = apply_postprocessing(seg, rules)
    write_image(seg, props.original_geometry, out_path)
    if full_probs is not None:
        info = ProbabilityInfo(case_id=props.case_id, labels=dict(plans.labels), geometry=props.original_geometry,
                               segmentation_file=out_path.name)
        write_probabilities(full_probs, info, out_path.parent)
    return seg
