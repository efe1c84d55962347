"""Write predictions onto the input image, exactly: class probabilities -> label mask.

Each class is mapped back with :mod:`autoseg.preprocessing.inverse` (the inverse of
preprocessing); outside the crop box is background. Masks are written with the input's :class:`~autoseg.io.images.Geometry` (size, spacing,
origin, direction), so they overlay the input in any viewer.

Memory: probabilities are resampled one class at a time and reduced by a running argmax,
so export holds one float32 class, the running maximum and the label map, never a K-times
copy or a float64 volume. ``--save-probabilities`` adds one float16 (K, Z, Y, X) array.
Saved probabilities (``--save-probabilities``) follow :mod:`autoseg.model.probabilities`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from autoseg.io.images import write_image
from autoseg.model.postprocessing import PostprocessingRules, apply_postprocessing
from autoseg.model.probabilities import ProbabilityInfo, write_probabilities
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.case_store import CaseProperties
from autoseg.preprocessing.inverse import input_slices, paste, to_cropped_grid
from autoseg.preprocessing.roi import Stage1Region


def segment(probs: torch.Tensor, props: CaseProperties, plans: Plans, config: ConfigurationPlan,
            keep_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, *preprocessed) probabilities -> uint8 (Z, Y, X) labels in the input grid.

    Class k maps to the k-th label value in ascending order (``LabelDefinition.class_values``, so a
    dataset labelled 0, 1, 5 gets masks of 0, 1, 5 back). With ``keep_probabilities``
    also returns float16 (K, Z, Y, X) probabilities in the input grid (background 1 outside
    the crop box). Ties go to the lower class. Region-based plans: see :func:`segment_regions`.
    """
    if plans.label_definition.has_regions:
        return segment_regions(probs, props, plans, config, keep_probabilities)
    values = plans.label_definition.class_values
    if len(values) != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} predicted classes but plans list {len(values)} labels")
    best: np.ndarray | None = None
    labels: np.ndarray | None = None
    full_probs = None
    if keep_probabilities:
        full_probs = np.zeros([probs.shape[0]] + list(props.output_geometry.shape_zyx), dtype=np.float16)
        full_probs[0] = 1
    box = input_slices(props)
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


def segment_regions(probs: torch.Tensor, props: CaseProperties, plans: Plans, config: ConfigurationPlan,
                    keep_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(R, *preprocessed) region probabilities -> uint8 labels in the input grid by nnU-Net's rule:
    ``regions_class_order[r]`` painted where region r's probability is > 0.5, in order (later regions
    overwrite earlier ones). Probabilities kept: float16 (R, Z, Y, X), 0 outside the crop box."""
    order = plans.label_definition.regions_class_order
    assert order is not None
    if len(order) != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} predicted regions but plans list {len(order)}")
    full_probs = None
    if keep_probabilities:
        full_probs = np.zeros([probs.shape[0]] + list(props.output_geometry.shape_zyx), dtype=np.float16)
    box = input_slices(props)

    def region_masks():  # one region in the input grid at a time
        for r in range(len(order)):
            pr = to_cropped_grid(probs[r:r + 1], props, plans, config)
            if full_probs is not None:
                full_probs[r][box] = pr
            yield pr > 0.5
    labels = plans.label_definition.paint_regions(region_masks())
    return paste(labels, props, 0, np.uint8), full_probs


def export_prediction(probs: torch.Tensor, props: CaseProperties, plans: Plans, config: ConfigurationPlan, out_path: Path,
                      rules: PostprocessingRules | None = None, save_probabilities: bool = False,
                      stage1: Stage1Region | None = None) -> np.ndarray:
    """Write the mask for one case (and its probabilities if asked); returns the uint8 mask.

    ``out_path`` is the mask's file (its ending picks the format). ``stage1`` (the two-stage
    model's stage-1 region) keeps only the labels stage 1 supports (:meth:`Stage1Region.restrict`),
    before the postprocessing ``rules``. Both apply to the mask only, not to saved probabilities.
    """
    out_path = Path(out_path)
    with torch.inference_mode():
        seg, full_probs = segment(probs, props, plans, config, keep_probabilities=save_probabilities)
    if stage1 is not None:
        seg = stage1.restrict(seg)
    if rules is not None:
        seg = apply_postprocessing(seg, rules)
    write_image(seg, props.output_geometry, out_path)
    if full_probs is not None:
        info = ProbabilityInfo(case_id=props.case_id, labels=dict(plans.labels), geometry=props.output_geometry,
                               segmentation_file=out_path.name, regions_class_order=plans.regions_class_order)
        write_probabilities(full_probs, info, out_path.parent)
    return seg
