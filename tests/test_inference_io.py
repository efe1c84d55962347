"""Finding and reading the cases to predict, and mapping predictions back to the input grid."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.inference.export import segment
from autoseg.model.probabilities import ProbabilityInfo, load_probabilities, write_probabilities
from autoseg.preprocessing.inverse import paste
from autoseg.inference.inputs import discover_cases, read_input_case
from autoseg.io.images import Geometry, write_image
from autoseg.planners.plans import Plans
from autoseg.preprocessing.case_store import CaseProperties

from conftest import SHARED
from test_predict import LABELS, tiny_config


def _img(path, shape=(4, 5, 6), value=1.0, spacing=(2.0, 1.0, 1.0)):
    write_image(np.full(shape, value, np.float32), Geometry(list(shape), list(spacing)), path)


def test_channel_suffix_grouping(tmp_path):
    for name in ("b_0001.nii.gz", "b_0000.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz"):
        _img(tmp_path / name, value=2.0 if "_0001" in name else 1.0)
    cases, problems = discover_cases(tmp_path, num_channels=2)
    assert problems == []
    assert [c.case_id for c in cases] == ["a", "b"]
    assert [p.name for p in cases[1].files] == ["b_0000.nii.gz", "b_0001.nii.gz"]
    assert cases[0].output_name == "a.nii.gz"
    data, geom = read_input_case(cases[0], 2)
    assert data.shape == (2, 4, 5, 6) and data[1].max() == 2.0 and geom.spacing_zyx == [2.0, 1.0, 1.0]
    with pytest.raises(AutosegError, match="'a' has 2 channel"):
        read_input_case(cases[0], 3)


def test_missing_channel_and_unsuffixed_file_are_one_problem_each(tmp_path):
    _img(tmp_path / "a_0000.nii.gz")
    _img(tmp_path / "a_0001.nii.gz")
    _img(tmp_path / "b_0000.nii.gz")  # channel 1 missing
    _img(tmp_path / "plain.nrrd")  # no suffix for a 2-channel model
    cases, problems = discover_cases(tmp_path, num_channels=2)
    assert [c.case_id for c in cases] == ["a"]
    assert len(problems) == 2 and "'b' has channel files [0]" in problems[0] and "plain" in problems[1]


def test_single_channel_names(tmp_path):
    _img(tmp_path / "liver_3_0000.nii.gz")
    _img(tmp_path / "plain.nrrd")
    _img(tmp_path / "liver_0007.mha")  # a case id ending in digits, not a channel
    _img(tmp_path / "old.mhd")
    (tmp_path / "notes.txt").write_text("ignored")
    cases, problems = discover_cases(tmp_path, num_channels=1)
    assert problems == []
    assert {c.case_id: c.output_name for c in cases} == {"liver_3": "liver_3.nii.gz", "plain": "plain.nrrd",
                                                          "liver_0007": "liver_0007.mha", "old": "old.mha"}
    two, problems = discover_cases(tmp_path / "liver_3_0000.nii.gz", 1)
    assert [c.case_id for c in two] == ["liver_3"] and problems == []
    _img(tmp_path / "liver_3_0001.nii.gz")  # a 2-channel case given to a 1-channel model
    cases, problems = discover_cases(tmp_path, num_channels=1)
    assert "liver_3" not in [c.case_id for c in cases] and "model takes 1 channel" in problems[0]


def test_missing_or_empty_input(tmp_path):
    with pytest.raises(AutosegError, match="not found"):
        discover_cases(tmp_path / "nope", 1)
    with pytest.raises(AutosegError, match="no images"):
        discover_cases(tmp_path, 1)


@pytest.mark.skipif(not (SHARED / "data" / "dcmqi_ct3slice").is_dir(), reason="../shared data not present")
def test_dicom_series_folder_and_folder_of_series(tmp_path):
    src = SHARED / "data" / "dcmqi_ct3slice"
    one = tmp_path / "patient7"
    one.mkdir()
    for f in src.glob("*.dcm"):
        shutil.copy(f, one / f.name)
    cases, _ = discover_cases(one, 1)
    assert [(c.case_id, c.output_name, c.is_dicom) for c in cases] == [("patient7", "patient7.nii.gz", True)]
    data, geom = read_input_case(cases[0], 1)
    assert data.shape == (1, 3, 512, 512) and geom.spacing_zyx[1] == pytest.approx(0.810547)
    cases, _ = discover_cases(tmp_path, 1)  # a folder of series folders
    assert [c.case_id for c in cases] == ["patient7"]


def _props(shape_full, bbox, shape_crop, spacing_pre, shape_pre, spacing=(1.0, 1.0, 1.0)) -> CaseProperties:
    geom = Geometry(list(shape_full), list(spacing), [3.0, -2.0, 1.0], [-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0])
    return CaseProperties("c", geom, bbox, list(shape_crop), list(spacing_pre), list(shape_pre))


def _plans(transpose) -> Plans:
    tf = list(transpose)
    return Plans("D", "p", 8, tf, [tf.index(i) for i in range(3)], [1, 1, 1], [4, 4, 4], 1, dict(LABELS),
                 {"3d_fullres": tiny_config("3d_fullres", [1, 1, 1], [4, 4, 4])})


def test_segment_undoes_transpose_and_crop():
    # original (Z, Y, X) = (5, 6, 7); crop box z 1:4, y 0:6, x 2:6 -> (3, 6, 4); transposed (2, 0, 1) -> (4, 3, 6)
    plans = _plans((2, 0, 1))
    props = _props((5, 6, 7), [[1, 4], [0, 6], [2, 6]], (3, 6, 4), (1, 1, 1), (4, 3, 6))
    rng = np.random.default_rng(0)
    labels_crop = rng.integers(0, 3, (3, 6, 4))  # what we expect back, original order
    probs_t = torch.from_numpy(np.transpose(np.eye(3, dtype=np.float32)[labels_crop], (3, 2, 0, 1)))  # (K, X, Z, Y)
    probs_t = probs_t * 0.8 + 0.2 / 3  # still sums to 1
    seg, full = segment(probs_t, props, plans, plans.configurations["3d_fullres"], keep_probabilities=True)
    expected = np.zeros((5, 6, 7), np.uint8)
    expected[1:4, 0:6, 2:6] = labels_crop
    np.testing.assert_array_equal(seg, expected)
    assert full.shape == (3, 5, 6, 7) and full.dtype == np.float16
    assert full[0, 0, 0, 0] == 1 and full[1:, 0, 0, 0].sum() == 0  # outside the box: background
    np.testing.assert_allclose(full.astype(np.float32).sum(0), 1.0, atol=2e-3)


def test_segment_resamples_class_by_class_to_the_crop_shape():
    plans = _plans((0, 1, 2))
    # preprocessed at 2 mm, original 1 mm: a half-size grid maps back onto the full crop
    props = _props((8, 8, 8), [[0, 8], [0, 8], [0, 8]], (8, 8, 8), (2.0, 2.0, 2.0), (4, 4, 4))
    probs = torch.zeros(3, 4, 4, 4)
    probs[0] = 1
    probs[0, :, :, 2:] = 0
    probs[2, :, :, 2:] = 1  # right half (x >= 2 of 4) is label 2
    seg, _ = segment(probs, props, plans, plans.configurations["3d_fullres"])
    assert (seg[:, :, :4] == 0).all() and (seg[:, :, 4:] == 2).all()


def test_probability_files_round_trip(tmp_path):
    p = np.random.default_rng(1).dirichlet([1, 1, 1], size=(2, 3, 4)).transpose(3, 0, 1, 2).astype(np.float16)
    geom = Geometry([2, 3, 4], [3.0, 0.7, 0.7], [1.0, 2.0, 3.0])
    write_probabilities(p, ProbabilityInfo("c", dict(LABELS), geom, "c.nrrd"), tmp_path)
    back, info = load_probabilities(tmp_path, "c")
    np.testing.assert_array_equal(back, p)
    assert info.geometry == geom and info.segmentation_file == "c.nrrd" and info.labels == LABELS


def test_paste_fills_outside_the_box():
    props = _props((3, 4, 5), [[1, 2], [1, 3], [0, 5]], (1, 2, 5), (1, 1, 1), (1, 2, 5))
    full = paste(np.ones((1, 2, 5), np.float32), props, fill=0.5, dtype=np.float32)
    assert full.sum() == pytest.approx(10 + 0.5 * (60 - 10))
