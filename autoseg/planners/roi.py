"""The two-stage (organ -> lesion) configuration ``3d_roi_fullres`` (seed 002's model).

Planned whenever the foreground (all labels > 0 together) with its margin fills less than
:data:`ROI_MAX_FRACTION` of the median case: stage 2 is a full-resolution model planned on the
**cropped region** (the foreground box plus ``roi_margin_mm`` per side), so its patch covers much
more of the organ than a whole-image patch would; stage 1 is the coarse ``3d_lowres`` model when
one is planned, else ``3d_fullres``, and only its foreground union is used.

Example: liver boxes of about 180 x 150 x 150 mm in 400 x 400 x 300 mm CTs at 1 x 0.8 x 0.8 mm with
a 10 mm margin -> boxes of 200 x 213 x 213 voxels, 16 % of the image: planned.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from autoseg.fingerprint.fingerprint import DatasetFingerprint
from autoseg.planners.plans import ConfigurationPlan

ROI_NAME = "3d_roi_fullres"
ROI_MAX_FRACTION = 0.5
ROI_MARGIN_MM = 10.0
ROI_JITTER_MM = 10.0


def roi_shape_vox(box_zyx: list[list[int]], spacing_zyx, target_spacing_zyx, margin_mm: float, shape_zyx) -> list[float]:
    """One case's box plus margin, in voxels of ``target_spacing_zyx`` (clipped to the image)."""
    out = []
    for (a, b), sp, tsp, n in zip(box_zyx, spacing_zyx, target_spacing_zyx, shape_zyx):
        m = int(math.ceil(margin_mm / float(sp) - 1e-9))
        vox = min(int(n), int(b) + m) - max(0, int(a) - m)
        out.append(vox * float(sp) / float(tsp))
    return out


def plan_roi(plan_one: Callable[..., ConfigurationPlan], fp: DatasetFingerprint, spacing_zyx: np.ndarray, tf: list[int],
             num_classes: int, normalization, previous: str, plans_name: str) -> ConfigurationPlan | None:
    """The ``3d_roi_fullres`` plan at ``spacing_zyx`` (the native fullres spacing, (Z, Y, X)), or None
    when a case has no foreground box recorded or the boxes fill too much of the images."""
    boxes = [c.foreground_bbox_zyx for c in fp.cases]
    if not boxes or any(b is None for b in boxes):
        return None
    sizes, fractions = [], []
    for c, box in zip(fp.cases, boxes):
        size = roi_shape_vox(box, c.spacing_zyx, spacing_zyx, ROI_MARGIN_MM, c.shape_zyx)
        sizes.append(size)
        fractions.append(float(np.prod([s * tsp / sp for s, tsp, sp in zip(size, spacing_zyx, c.spacing_zyx)]) / np.prod(c.shape_zyx)))
    if float(np.median(fractions)) >= ROI_MAX_FRACTION:
        return None
    median_t = np.median(np.array(sizes), 0)[tf]
    sp_t = np.asarray(spacing_zyx, dtype=float)[tf]
    n_vox = float(np.prod(median_t, dtype=np.float64) * fp.num_cases)
    conf = plan_one(ROI_NAME, sp_t, median_t, n_vox, num_classes, normalization, f"{plans_name}_{ROI_NAME}", True)
    conf.previous_stage, conf.roi_margin_mm, conf.roi_jitter_mm = previous, ROI_MARGIN_MM, ROI_JITTER_MM
    return conf
