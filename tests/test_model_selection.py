"""Fold validation after training and find_best_configuration on tiny trained models."""

import shutil
import zipfile

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.io.images import read_image
from autoseg.io.json_io import load_json, save_json

from conftest import write_blob_dataset

FAST = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sel")
    mp = pytest.MonkeyPatch()
    for var, sub in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res")):
        (root / sub).mkdir()
        mp.setenv(var, str(root / sub))
    write_blob_dataset(root / "raw" / "Dataset003_Liver", n=4)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "2d", "-np", "1"]) == 0
    for conf in ("3d_fullres", "2d"):
        assert main(["train", "-c", conf, "-f", "0", "1", *FAST]) == 0
    yield root
    mp.undo()


def test_validation_predictions_and_summary_exist(trained):
    val = trained / "res" / "Dataset003_Liver" / "3d_fullres" / "fold_0" / "validation"
    splits = load_json(trained / "pre" / "Dataset003_Liver" / "splits_final.json")
    for case in splits[0]["val"]:
        assert (val / f"{case}.nii.gz").is_file() and (val / f"{case}_probabilities.npz").is_file()
    s = load_json(val / "summary.json")
    assert s["num_cases"] == len(splits[0]["val"]) and "Dice" in s["mean"]["1"]


def test_find_best_configuration_ranks_configs_and_ensemble(trained, capsys):
    assert main(["find_best_configuration", "-f", "all"]) != 0
    assert "the 'all' fold has no held-out cases" in capsys.readouterr().err
    assert main(["find_best_configuration", "-f", "0..1"]) == 0  # the fold syntax of train
    out = capsys.readouterr().out
    best = load_json(trained / "res" / "Dataset003_Liver" / "best_configuration.json")
    names = [r["name"] for r in best["ranking"]]
    assert sorted(names) == sorted(["3d_fullres", "2d", "ensemble__2d__3d_fullres"])
    scores = [r["mean_foreground_dice"] for r in best["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert best["ranking"][0]["name"] in out and "autoseg predict" in best["predict_command"]
    rules = trained / "res" / "Dataset003_Liver" / (best["ensemble"] and f"crossval/{best['ranking'][0]['name']}" or best["configuration"]) / "postprocessing.json"
    assert rules.is_file()


def _choose_ensemble(trained):
    """best_configuration.json as model selection writes it when the 2d + 3d_fullres ensemble wins."""
    best_file = trained / "res" / "Dataset003_Liver" / "best_configuration.json"
    if not best_file.is_file():
        assert main(["find_best_configuration", "-f", "0", "1"]) == 0
    best = load_json(best_file)
    best.update(configuration="2d", ensemble=["2d", "3d_fullres"])
    save_json(best, best_file)


def test_predict_without_c_runs_the_chosen_ensemble(trained, tmp_path):
    _choose_ensemble(trained)
    inp = tmp_path / "in"
    inp.mkdir()
    for f in sorted((trained / "raw" / "Dataset003_Liver" / "imagesTr").glob("*.nii.gz"))[:2]:
        shutil.copyfile(f, inp / f.name)
    # the same thing by hand: each member with probabilities, then autoseg ensemble
    for conf in ("2d", "3d_fullres"):
        assert main(["predict", "-i", str(inp), "-o", str(tmp_path / conf), "-c", conf, "--save-probabilities",
                     "--no-postprocessing", "-f", "0", "1"]) == 0
    assert main(["ensemble", "-i", str(tmp_path / "2d"), str(tmp_path / "3d_fullres"), "-o", str(tmp_path / "manual")]) == 0
    out = tmp_path / "auto"
    assert main(["predict", "-i", str(inp), "-o", str(out), "--no-postprocessing", "-f", "0", "1", "--uncertainty"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["case_000.nii.gz", "case_001.nii.gz", "uncertainty"]  # no work folder, no probabilities left
    assert sorted(p.name for p in (out / "uncertainty").iterdir()) == ["2d", "3d_fullres"]
    for name in names[:2]:
        auto, g = read_image(out / name, dtype=np.uint8)
        manual, g2 = read_image(tmp_path / "manual" / name, dtype=np.uint8)
        assert np.array_equal(auto, manual) and g.matches(g2, tol=1e-6) is None
    # an existing output is skipped without predicting the members again
    before = (out / "case_000.nii.gz").stat().st_mtime_ns
    assert main(["predict", "-i", str(inp), "-o", str(out), "-f", "0", "1"]) == 0
    assert (out / "case_000.nii.gz").stat().st_mtime_ns == before and not list(out.glob(".autoseg_members_*"))


def test_export_model_of_an_ensemble_carries_both_members(trained, tmp_path):
    _choose_ensemble(trained)
    zip_path = tmp_path / "model.zip"
    assert main(["export_model", "-o", str(zip_path), "-f", "0"]) == 0
    names = zipfile.ZipFile(zip_path).namelist()
    for conf in ("2d", "3d_fullres"):
        assert f"Dataset003_Liver/{conf}/fold_0/checkpoint_final.pth" in names
    inp = tmp_path / "in"
    inp.mkdir()
    f = sorted((trained / "raw" / "Dataset003_Liver" / "imagesTr").glob("*.nii.gz"))[0]
    shutil.copyfile(f, inp / f.name)
    assert main(["predict", "--model", str(zip_path), "-i", str(inp), "-o", str(tmp_path / "out"), "-f", "0"]) == 0
    assert (tmp_path / "out" / "case_000.nii.gz").is_file()
