import csv
import json
import math

import numpy as np
import pytest

from autoseg.errors import AutosegError
from autoseg.evaluation.commands import configure_evaluate, run_evaluate
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.io.images import Geometry, write_image

SPACING = [2.0, 1.0, 1.0]


def _write(arr, path, spacing=SPACING):
    write_image(arr.astype(np.uint8), Geometry(list(arr.shape), list(spacing)), path)


def _cases(tmp_path):
    """Two cases; hand-computable Dice per label."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    a_ref = np.zeros((4, 8, 8), np.uint8)
    a_ref[1:3, 1:5, 1:5] = 1            # 32 liver voxels
    a_ref[1:3, 2:4, 2:4] = 2            # 8 of them tumour
    a_pred = a_ref.copy()
    a_pred[1:3, 2:4, 2:4] = 1           # tumour missed, called liver
    b_ref = np.zeros((4, 8, 8), np.uint8)
    b_ref[1:3, 1:5, 1:5] = 1            # no tumour
    b_pred = b_ref.copy()
    _write(a_ref, ref_dir / "a.nii.gz")
    _write(a_pred, pred_dir / "a.nii.gz")
    _write(b_ref, ref_dir / "b.nii.gz")
    _write(b_pred, pred_dir / "b.nii.gz")
    return ref_dir, pred_dir


def test_summary_json_and_csv(tmp_path):
    ref_dir, pred_dir = _cases(tmp_path)
    summary = evaluate_folders(ref_dir, pred_dir, [1, 2], None, tmp_path / "out" / "summary.json")
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["num_cases"] == 2 and [c["case"] for c in on_disk["metric_per_case"]] == ["a", "b"]
    a = summary.metric_per_case[0]["metrics"]
    # case a: liver pred 32 vs ref 24 (tp 24, fp 8) -> Dice 48/56; tumour missed -> 0; union perfect -> 1
    assert a["1"]["Dice"] == pytest.approx(48 / 56)
    assert a["2"]["Dice"] == 0.0 and a["1+2"]["Dice"] == 1.0
    assert a["2"]["lesion_n_ref"] == 1 and a["2"]["lesion_detected"] == 0
    b = summary.metric_per_case[1]["metrics"]
    assert math.isnan(b["2"]["Dice"]) and b["1"]["Dice"] == 1.0
    assert summary.mean["1"]["Dice"] == pytest.approx((48 / 56 + 1) / 2)
    assert summary.mean["2"]["Dice"] == 0.0  # NaN of case b skipped
    assert summary.foreground_mean["Dice"] == pytest.approx(((48 / 56 + 1) / 2 + 0.0) / 2)
    assert on_disk["mean"]["1"]["Dice"] == pytest.approx(summary.mean["1"]["Dice"])
    assert summary.label_names == {"1": "liver", "2": "tumor", "1+2": "all"}

    rows = list(csv.reader((tmp_path / "out" / "summary.csv").open()))
    assert rows[0][:8] == ["case", "dice_all", "dice_liver", "precision_liver", "recall_liver",
                           "dice_tumor", "precision_tumor", "recall_tumor"]
    assert "hd95_mm_liver" in rows[0] and "lesion_recall" in rows[0]
    assert [r[0] for r in rows[1:]] == ["a", "b", "mean"]
    col = rows[0].index("dice_liver")
    assert float(rows[1][col]) == pytest.approx(48 / 56, abs=1e-5)
    assert float(rows[1][rows[0].index("precision_liver")]) == pytest.approx(24 / 32, abs=1e-5)
    assert rows[2][rows[0].index("dice_tumor")] == "nan"


def test_dataset_json_names_and_parallel_workers(tmp_path):
    ref_dir, pred_dir = _cases(tmp_path)
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "organ": 1, "lesion": 2}}))
    summary = evaluate_folders(ref_dir, pred_dir, None, None, tmp_path / "s.json", num_workers=2, dataset_json=dj)
    assert summary.label_names["1"] == "organ"
    header = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["case", "dice_all", "dice_organ"]
    assert "lesion_f1" in header  # 'lesion' name marks the tumour label for detection metrics


def test_geometry_mismatch_names_the_prediction(tmp_path):
    ref_dir, pred_dir = _cases(tmp_path)
    arr = np.zeros((4, 8, 8), np.uint8)
    _write(arr, pred_dir / "b.nii.gz", spacing=[3.0, 1.0, 1.0])
    with pytest.raises(AutosegError, match=r"b\.nii\.gz.*spacing"):
        evaluate_folders(ref_dir, pred_dir, [1, 2], None, tmp_path / "s.json")


def test_missing_files(tmp_path):
    ref_dir, pred_dir = _cases(tmp_path)
    (pred_dir / "b.nii.gz").unlink()
    summary = evaluate_folders(ref_dir, pred_dir, [1, 2], None, tmp_path / "s.json")
    assert summary.num_cases == 1 and summary.missing_predictions == ["b"]
    with pytest.raises(AutosegError, match="no prediction for 1 case"):
        evaluate_folders(ref_dir, pred_dir, [1, 2], None, tmp_path / "s.json", case_ids=["a", "b"])
    _write(np.zeros((4, 8, 8)), pred_dir / "c.nii.gz")
    with pytest.raises(AutosegError, match="c.nii.gz: no reference"):
        evaluate_folders(ref_dir, pred_dir, [1, 2], None, tmp_path / "s.json")


def test_cli_evaluate_prints_table(tmp_path, capsys):
    import argparse
    ref_dir, pred_dir = _cases(tmp_path)
    parser = argparse.ArgumentParser()
    configure_evaluate(parser)
    args = parser.parse_args(["-r", str(ref_dir), "-p", str(pred_dir), "-l", "1", "2"])
    assert run_evaluate(args) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "foreground mean" in out and (pred_dir / "summary.json").is_file()


def test_error_gets_its_own_line_after_the_progress_bar(tmp_path, capsys):
    from autoseg.cli import main
    ref_dir, pred_dir = _cases(tmp_path)
    _write(np.zeros((4, 8, 8), np.uint8), pred_dir / "b.nii.gz", spacing=[3.0, 1.0, 1.0])
    assert main(["evaluate", "-r", str(ref_dir), "-p", str(pred_dir), "-o", str(tmp_path / "s.json")]) == 1
    err = capsys.readouterr().err
    i = err.index("autoseg evaluate: error:")
    assert i == 0 or err[i - 1] == "\n", repr(err[max(0, i - 80):i + 40])
