import json
import math

import numpy as np
import pytest

from autoseg.evaluation.clinical import (clinical_summary, compare_summaries, max_feret_diameter_2d,
                                         voxel_to_physical_xyz)
from autoseg.io.images import Geometry

SPACING = (2.5, 0.8, 1.5)  # z, y, x in mm


def _liver_with_box_lesion():
    seg = np.zeros((10, 30, 20), np.uint8)
    seg[1:9, 2:28, 2:18] = 1                 # 8 * 26 * 16 = 3328 voxels
    seg[3:7, 5:15, 4:10] = 2                 # box lesion 4 x 10 x 6 = 240 voxels
    seg[5, 20, 12] = 2                       # one-voxel lesion
    return seg


def test_volumes_burden_and_box_diameter():
    s = clinical_summary(_liver_with_box_lesion(), SPACING)
    voxel_ml = 2.5 * 0.8 * 1.5 / 1000
    assert s["voxel_volume_ml"] == pytest.approx(voxel_ml)
    assert s["liver_volume_ml"] == pytest.approx(3328 * voxel_ml)   # tumour counted inside the liver
    assert s["tumor_volume_ml"] == pytest.approx(241 * voxel_ml)
    assert s["tumor_burden_percent"] == pytest.approx(100 * 241 / 3328)
    assert s["num_lesions"] == 2
    big, small = s["lesions"]
    assert big["voxel_count"] == 240 and big["volume_ml"] == pytest.approx(240 * voxel_ml)
    # 10 pixels along y (0.8 mm) by 6 along x (1.5 mm): corner-to-corner diagonal
    assert big["largest_axial_diameter_mm"] == pytest.approx(math.hypot(10 * 0.8, 6 * 1.5))
    assert 3 <= big["diameter_slice_z"] <= 6
    assert big["centroid_zyx_voxel"] == pytest.approx([4.5, 9.5, 6.5])
    assert small["largest_axial_diameter_mm"] == pytest.approx(math.hypot(0.8, 1.5))
    assert small["centroid_zyx_voxel"] == pytest.approx([5, 20, 12])
    json.dumps(s)  # JSON-ready


def test_sphere_volume_and_diameter_with_anisotropic_spacing():
    spacing = (2.0, 0.5, 0.5)
    r_mm = 8.0
    z, y, x = np.mgrid[0:12, 0:48, 0:48]
    centre = (5.5, 23.5, 23.5)
    d2 = ((z - centre[0]) * spacing[0]) ** 2 + ((y - centre[1]) * spacing[1]) ** 2 + ((x - centre[2]) * spacing[2]) ** 2
    seg = np.where(d2 <= r_mm ** 2, 2, 0).astype(np.uint8)
    s = clinical_summary(seg, spacing)
    assert s["tumor_volume_ml"] == pytest.approx(4 / 3 * math.pi * r_mm ** 3 / 1000, rel=0.1)
    assert s["liver_volume_ml"] == pytest.approx(s["tumor_volume_ml"])
    assert s["num_lesions"] == 1
    assert s["lesions"][0]["largest_axial_diameter_mm"] == pytest.approx(2 * r_mm, abs=1.0)


def test_feret_hull_matches_brute_force():
    rng = np.random.default_rng(3)
    mask = rng.random((15, 12)) > 0.6
    spacing = (0.7, 1.3)
    corners = []
    for y, x in np.argwhere(mask):
        for dy in (-0.5, 0.5):
            for dx in (-0.5, 0.5):
                corners.append(((y + dy) * spacing[0], (x + dx) * spacing[1]))
    corners = np.array(corners)
    brute = np.sqrt(((corners[:, None] - corners[None]) ** 2).sum(-1)).max()
    assert max_feret_diameter_2d(mask, spacing) == pytest.approx(brute)
    assert max_feret_diameter_2d(np.zeros((3, 3), bool), spacing) == 0.0


def test_physical_centroid_uses_direction_and_origin():
    geom = Geometry(shape_zyx=[10, 30, 20], spacing_zyx=list(SPACING), origin_xyz=[100.0, -50.0, 10.0],
                    direction=[-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    # voxel (z=2, y=4, x=6) -> index xyz (6, 4, 2) * spacing xyz (1.5, 0.8, 2.5) = (9, 3.2, 5); x axis flipped
    assert voxel_to_physical_xyz([2, 4, 6], geom) == pytest.approx([100 - 9, -50 + 3.2, 10 + 5])
    s = clinical_summary(_liver_with_box_lesion(), SPACING, geometry=geom)
    c = s["lesions"][0]["centroid_zyx_voxel"]
    assert s["lesions"][0]["centroid_xyz_mm"] == pytest.approx(voxel_to_physical_xyz(c, geom))


def test_empty_and_comparison():
    empty = clinical_summary(np.zeros((4, 5, 6), np.uint8), SPACING)
    assert empty["liver_volume_ml"] == 0.0 and empty["tumor_burden_percent"] is None and empty["lesions"] == []
    full = clinical_summary(_liver_with_box_lesion(), SPACING)
    cmp = compare_summaries(full, empty)
    assert cmp["liver_volume_ml"]["difference"] == pytest.approx(full["liver_volume_ml"])
    assert cmp["liver_volume_ml"]["relative_difference_percent"] is None   # reference volume 0
    assert cmp["num_lesions"]["difference"] == 2
    assert cmp["tumor_burden_percent"]["difference"] is None
    self_cmp = compare_summaries(full, full)
    assert self_cmp["tumor_volume_ml"]["relative_difference_percent"] == 0.0
