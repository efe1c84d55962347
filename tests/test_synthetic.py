"""Synthetic CT: determinism, plausible HU, anatomy in mm, flips, and the written raw layout."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from autoseg.datasets.layout import list_cases, load_dataset_info
from autoseg.datasets.synthetic import NOISE_HU, SIZE_PRESETS, generate_dataset, make_case, noise_factor
from autoseg.errors import AutosegError
from autoseg.io.images import read_image


def _case(seed, shape=(32, 48, 48), spacing=(3.0, 2.0, 2.0), **kw):
    return make_case(shape, spacing, np.random.default_rng(seed), **kw)


def test_make_case_is_deterministic_for_a_seed():
    hu1, lab1, g1 = _case(7)
    hu2, lab2, g2 = _case(7)
    assert hu1.dtype == np.int16 and lab1.dtype == np.uint8 and hu1.shape == (32, 48, 48)
    assert hu1.tobytes() == hu2.tobytes() and lab1.tobytes() == lab2.tobytes() and g1 == g2
    hu3, _, _ = _case(8)
    assert not np.array_equal(hu1, hu3)


def test_hu_ranges_are_plausible_and_tiny_cases_hold_liver_and_tumour():
    with_tumour = 0
    for seed in range(8):
        hu, lab, _ = _case(seed)
        liver = lab == 1
        assert liver.sum() >= 300  # a visible liver even in a tiny volume
        assert 40 <= hu[liver].mean() <= 80
        corners = np.concatenate([hu[:, :3, :3].ravel(), hu[:, -3:, -3:].ravel()]).astype(float)
        assert abs(corners.mean() + 1000) < 10  # air, with noise clipped at -1024
        f = noise_factor((3.0, 2.0, 2.0))  # 12 mm³ voxels: 0.3 of a 1 mm³ voxel's noise
        assert 0.8 * NOISE_HU[0] * f <= corners.std() <= 1.2 * NOISE_HU[1] * f  # scanner noise for the voxel size
        assert hu.max() > 300  # bone
        assert set(np.unique(lab)) <= {0, 1, 2}
        with_tumour += int((lab == 2).any())
    assert with_tumour >= 5


def test_noise_falls_with_voxel_volume_within_its_range():
    assert noise_factor((1.5, 0.8, 0.8)) == pytest.approx(1.0, rel=0.05)
    assert noise_factor((4.5, 2.7, 2.7)) == 0.3  # the demo's voxels: clipped at the low end
    assert noise_factor((0.5, 0.5, 0.5)) == 1.5
    fine, _, _ = _case(1, spacing=(1.5, 0.8, 0.8))
    coarse, _, _ = _case(1)
    air = (np.s_[:, :3, :3], np.s_[:, -3:, -3:])
    std = [np.concatenate([v[a].ravel() for a in air]).astype(float).std() for v in (fine, coarse)]
    assert std[0] > 2.5 * std[1]


def test_intensity_alone_does_not_segment_the_liver():
    for seed in (0, 3):
        hu, lab, _ = _case(seed, shape=(48, 96, 96))
        smooth = ndimage.gaussian_filter(hu.astype(np.float32), 1.0)
        liver = lab == 1
        lo, hi = np.percentile(smooth[liver], [10, 90])
        lookalike = (smooth >= lo) & (smooth <= hi) & (lab == 0)
        assert lookalike.sum() > 0.5 * liver.sum()
        # a compact organ at liver HU on the patient's left (high x index for identity direction): the spleen
        core = ndimage.binary_erosion((np.abs(smooth - np.median(smooth[liver])) < 12) & (lab == 0))
        comps, _ = ndimage.label(core)
        sizes = np.bincount(comps.ravel())[1:]
        biggest = comps == np.argmax(sizes) + 1
        assert sizes.max() > 0.02 * liver.sum()
        assert ndimage.center_of_mass(biggest)[2] > 48 > ndimage.center_of_mass(liver)[2]


def test_flipped_direction_mirrors_the_array_so_the_liver_stays_on_the_patient_right():
    _, lab, g = _case(5, origin_xyz=(12.5, -30.0, 100.0))
    _, lab_f, g_f = _case(5, flip_direction=True, origin_xyz=(12.5, -30.0, 100.0))
    assert g.direction == [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    assert g_f.direction == [-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0] and g_f.origin_xyz == [12.5, -30.0, 100.0]
    # organs come from the same draws; tumour centres are drawn in array order, so compare liver+tumour
    assert np.array_equal(lab_f > 0, (lab > 0)[:, ::-1, ::-1])
    x_centroid = ndimage.center_of_mass(lab > 0)[2]
    assert x_centroid < 24  # patient right = -x (LPS) = low x index when direction is identity


def test_anatomy_is_defined_in_mm_not_voxels():
    kw = dict(anatomy_scale=0.2)
    _, coarse, _ = make_case((24, 40, 40), (4.0, 2.0, 2.0), np.random.default_rng(3), **kw)
    _, fine, _ = make_case((48, 80, 80), (2.0, 1.0, 1.0), np.random.default_rng(3), **kw)
    vol_coarse, vol_fine = (coarse > 0).sum() * 16.0, (fine > 0).sum() * 2.0  # mm^3
    assert vol_fine > 0 and abs(vol_coarse / vol_fine - 1) < 0.15


def test_generated_dataset_layout_spacing_and_flips(tmp_path: Path):
    out = tmp_path / "Dataset001_Liver"
    info = generate_dataset(out, n_train=6, n_test=1, seed=2, size="tiny")
    assert info.numTraining == 6 and info.labels == {"background": 0, "liver": 1, "tumor": 2}
    loaded = load_dataset_info(out)
    assert loaded.channel_names == {"0": "CT"} and loaded.channel_kind(0) == "CT"
    cases = list_cases(out, loaded)
    assert [c.case_id for c in cases] == [f"liver_{i:03d}" for i in range(6)]
    test_cases = list_cases(out, loaded, "imagesTs", "labelsTs")
    assert [c.case_id for c in test_cases] == ["liver_test_000"]
    lo_xy, hi_xy = SIZE_PRESETS["tiny"].spacing_xy_mm
    lo_z, hi_z = SIZE_PRESETS["tiny"].spacing_z_mm
    flipped, spacings = 0, set()
    for c in cases:
        img, g = read_image(c.images[0])
        lab, g_lab = read_image(c.label, dtype=np.uint8)
        assert g.matches(g_lab) is None
        sz, sy, sx = g.spacing_zyx
        assert sy == pytest.approx(sx) and 0.6 <= lo_xy <= sy <= hi_xy <= 3.0 and 1.0 <= lo_z <= sz <= hi_z <= 5.0
        assert all(abs(n / m - 1) <= 0.11 for n, m in zip(g.shape_zyx, SIZE_PRESETS["tiny"].shape_zyx))
        spacings.add((round(sz, 3), round(sy, 3)))
        if g.direction[0] < 0:
            flipped += 1
            assert any(abs(o) > 1 for o in g.origin_xyz)
        assert (lab == 1).any() and -1024 <= img.min() and img.max() <= 3071
    assert flipped == 2 and len(spacings) == 6


def test_generate_dataset_is_deterministic_and_respects_a_given_shape(tmp_path: Path):
    a = generate_dataset(tmp_path / "a", n_train=2, seed=4, shape_zyx=(16, 32, 32), size="tiny")
    generate_dataset(tmp_path / "b", n_train=2, seed=4, shape_zyx=(16, 32, 32), size="tiny")
    for name in ("imagesTr/liver_001_0000.nii.gz", "labelsTr/liver_001.nii.gz"):
        arr_a, g_a = read_image(tmp_path / "a" / name)
        arr_b, g_b = read_image(tmp_path / "b" / name)
        assert arr_a.shape == (16, 32, 32) and np.array_equal(arr_a, arr_b) and g_a == g_b
    assert a.numTraining == 2


def test_generate_dataset_refuses_bad_options(tmp_path: Path):
    with pytest.raises(AutosegError, match="unknown synthetic size"):
        generate_dataset(tmp_path / "x", n_train=1, size="huge")
    with pytest.raises(AutosegError, match="n_train"):
        generate_dataset(tmp_path / "x", n_train=0)


@pytest.mark.parametrize("size", ["demo", "medium"])
def test_real_scale_presets_have_a_clinical_liver_and_lesions(size):
    # the demo's and the budget benchmark's data: in-plane >= 128 voxels, a 1-2 L liver at ~60 HU,
    # lesions of >= 5 mm radius (equivalent sphere), darker than the liver in most cases
    from autoseg.datasets.synthetic import _case_grid, fit_anatomy_scale
    preset = SIZE_PRESETS[size]
    assert min(preset.shape_zyx[1:]) * 0.9 >= 128
    scale = fit_anatomy_scale(round(preset.shape_zyx[1] * 0.9) * preset.spacing_xy_mm[0],
                              round(preset.shape_zyx[2] * 0.9) * preset.spacing_xy_mm[0])
    radii, darker, with_lesions = [], 0, 0
    for i in range(3):
        rng = np.random.default_rng([0, 0, i])
        shape, spacing = _case_grid(preset, None, rng)
        hu, lab, _ = make_case(shape, spacing, rng, anatomy_scale=scale)
        ml = float(np.prod(spacing)) / 1000
        assert 1000 <= (lab > 0).sum() * ml <= 2000
        assert 50 <= hu[lab == 1].mean() <= 75
        comps, n = ndimage.label(lab == 2)
        if n:
            with_lesions += 1
            vol = np.bincount(comps.ravel())[1:] * ml * 1000  # mm^3
            radii += list((3 * vol / (4 * np.pi)) ** (1 / 3))
            darker += int(np.median(hu[lab == 2]) < np.median(hu[lab == 1]) - 10)
    assert with_lesions >= 2 and darker >= 2 and min(radii) >= 5.0
