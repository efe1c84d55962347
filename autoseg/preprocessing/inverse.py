"""The inverse of :func:`~autoseg.preprocessing.preprocessor.preprocess_case`: from the network's
grid back onto the input image, exactly.

The preprocessed grid is the input cropped to its nonzero box, transposed
(``Plans.transpose_forward``), resampled to the plan's spacing and possibly flipped
(``CaseProperties.flipped_axes``). Undoing it for one map: flip back, resample to the cropped shape (linear in-plane; nearest along a coarse axis when the spacing
is anisotropic: ``ResamplingSettings.order_seg`` / ``order_seg_z``), transpose back, then paste
into the original (Z, Y, X) grid at the crop box. Outside the box is ``fill``. A two-stage case
(:mod:`autoseg.preprocessing.roi`) is then pasted at its region-of-interest box into the whole input.
"""

from __future__ import annotations

import numpy as np
import torch

from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.case_store import CaseProperties
from autoseg.preprocessing.resampling import resample_image


def to_cropped_grid(channel: torch.Tensor, props: CaseProperties, plans: Plans, config: ConfigurationPlan) -> np.ndarray:
    """One (1, *preprocessed) map -> float32 (Z, Y, X) array of the crop box in original axis order.

    The result may be a non-contiguous view (transpose); resampling is skipped when the
    grids already agree.
    """
    crop_t = plans.transposed(props.shape_after_crop_zyx)
    spacing_t = plans.transposed(props.original_geometry.spacing_zyx)
    r = config.resampling
    arr = channel.numpy()
    if props.flipped_axes:
        arr = np.ascontiguousarray(np.flip(arr, [1 + a for a in props.flipped_axes]))
    out = resample_image(arr, crop_t, props.spacing_after_resampling, spacing_t,
                         r.order_seg, r.order_seg_z, r.anisotropy_threshold)
    return np.transpose(out[0], plans.transpose_backward)


def input_slices(props: CaseProperties) -> tuple[slice, ...]:
    """Where the crop box of ``props`` lies in the whole input: its nonzero-crop box, shifted by the
    two-stage region-of-interest box when the case is one (``props.roi_box_zyx``)."""
    offset = [a for a, _ in props.roi_box_zyx] if props.roi_box_zyx is not None else [0, 0, 0]
    return tuple(slice(o + a, o + b) for o, (a, b) in zip(offset, props.bbox_zyx))


def paste(cropped: np.ndarray, props: CaseProperties, fill: float, dtype: np.dtype) -> np.ndarray:
    """Put a crop-box array into a ``fill``-valued array of the whole input's (Z, Y, X) shape."""
    full = np.full(props.output_geometry.shape_zyx, fill, dtype=dtype)
    full[input_slices(props)] = cropped
    return full


def map_to_original(values: torch.Tensor, props: CaseProperties, plans: Plans, config: ConfigurationPlan,
                    fill: float = 0.0) -> np.ndarray:
    """A (Z', Y', X') map in the preprocessed grid -> float32 (Z, Y, X) in the input grid."""
    return paste(to_cropped_grid(values[None], props, plans, config), props, fill, np.float32)
