"""evaluate compares the clinical summary (volumes, burden, lesion count) of prediction and reference."""

import numpy as np
import pytest

from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.io.images import Geometry, write_image


def test_evaluate_reports_clinical_differences(tmp_path):
    g = Geometry([4, 10, 10], [2.0, 1.0, 1.0])
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[:, 2:8, 2:8] = 1          # 4*6*6 = 144 voxels * 2 mm3 = 0.288 mL liver
    ref[1:3, 4:6, 4:6] = 2        # 8 voxels tumour = 0.016 mL
    pred = ref.copy()
    pred[:, 2:8, 7] = 0           # 24 liver voxels missed
    for d, a in (("ref", ref), ("pred", pred)):
        write_image(a, g, tmp_path / d / "c1.nii.gz")
    s = evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels=[1, 2], out_json=tmp_path / "s.json")
    c = s.metric_per_case[0]["clinical"]
    assert c["liver_volume_ml"]["ref"] == pytest.approx(0.288)
    assert c["liver_volume_ml"]["difference"] == pytest.approx(-24 * 0.002)
    assert c["tumor_volume_ml"]["difference"] == pytest.approx(0.0)
    assert c["num_lesions"]["pred"] == c["num_lesions"]["ref"] == 1
