import numpy as np
import pytest

from autoseg.evaluation.postprocessing import determine_postprocessing
from autoseg.model.postprocessing import PostprocessingRules, apply_postprocessing, load_rules
from autoseg.io.images import Geometry, read_image, write_image


def _write(arr, path):
    write_image(arr.astype(np.uint8), Geometry(list(arr.shape), [2.0, 1.0, 1.0]), path)


def _liver_with_two_lesions():
    seg = np.zeros((6, 24, 24), np.uint8)
    seg[1:5, 2:14, 2:14] = 1
    seg[2:4, 3:6, 3:6] = 2       # lesion 1
    seg[2:4, 9:12, 9:12] = 2     # lesion 2, separate from lesion 1 but inside the liver
    return seg


def test_apply_postprocessing_removes_to_background():
    seg = _liver_with_two_lesions()
    seg[1:3, 18:21, 18:21] = 1   # stray liver blob
    seg[4, 20, 2] = 2            # stray tumour voxel
    fg = apply_postprocessing(seg, PostprocessingRules(keep_largest_foreground=True))
    assert fg[1:3, 18:21, 18:21].max() == 0 and fg[4, 20, 2] == 0
    assert np.array_equal(fg[:, :16, :16], seg[:, :16, :16])
    per_label = apply_postprocessing(_liver_with_two_lesions(), PostprocessingRules(False, [2]))
    assert np.count_nonzero(per_label == 2) == 18          # one 2x3x3 lesion kept
    assert per_label[2, 4, 4] == 2 or per_label[2, 10, 10] == 2
    removed = (per_label == 0) & (_liver_with_two_lesions() == 2)
    assert np.count_nonzero(removed) == 18                 # the other lesion became background, not liver
    assert apply_postprocessing(seg, PostprocessingRules()).tolist() == seg.tolist()


def test_determine_keeps_foreground_lcc_and_rejects_tumour_lcc(tmp_path):
    ref_dir, pred_dir, out_dir = tmp_path / "ref", tmp_path / "pred", tmp_path / "pp"
    for i in range(2):
        ref = _liver_with_two_lesions()
        pred = ref.copy()
        pred[1:3, 18:22, 18:22] = 1      # false-positive liver blob: LCC of foreground helps
        pred[4, 20 - i, 2] = 2           # false-positive tumour voxel far away, also removed by fg LCC
        _write(ref, ref_dir / f"c{i}.nii.gz")
        _write(pred, pred_dir / f"c{i}.nii.gz")
    rules = determine_postprocessing(ref_dir, pred_dir, [1, 2], out_dir=out_dir)
    assert rules.keep_largest_foreground is True
    assert rules.keep_largest_for_labels == []  # tumour LCC would delete a true lesion; liver LCC changes nothing
    ev = rules.evidence["foreground_lcc"]
    assert ev["after"]["1"] == pytest.approx(1.0) and ev["before"]["1"] < 1.0
    assert rules.evidence["label_2_lcc"]["after"]["2"] < rules.evidence["label_2_lcc"]["before"]["2"]
    assert load_rules(out_dir / "postprocessing.json") == rules
    fixed, _ = read_image(out_dir / "c0.nii.gz", dtype=np.int16)
    assert np.array_equal(fixed, _liver_with_two_lesions())


def test_determine_rejects_lcc_of_a_real_second_component_but_keeps_tumour_lcc(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref = np.zeros((6, 24, 24), np.uint8)
    ref[1:5, 2:14, 2:14] = 1
    ref[1:3, 18:22, 18:22] = 1           # a real second liver part, separate in this field of view
    ref[2:4, 3:6, 3:6] = 2               # one true lesion
    pred = ref.copy()
    pred[3, 11, 11] = 2                  # false-positive tumour voxel inside the liver: only tumour LCC removes it
    _write(ref, ref_dir / "c0.nii.gz")
    _write(pred, pred_dir / "c0.nii.gz")
    rules = determine_postprocessing(ref_dir, pred_dir, [1, 2])
    assert rules.keep_largest_foreground is False
    assert rules.keep_largest_for_labels == [2]
    assert load_rules(pred_dir / "postprocessing.json").keep_largest_for_labels == [2]
