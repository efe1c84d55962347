"""Fold validation after training and find_best_configuration on tiny trained models."""

import pytest

from autoseg.cli import main
from autoseg.io.json_io import load_json

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
    assert main(["find_best_configuration", "-f", "0", "1"]) == 0
    out = capsys.readouterr().out
    best = load_json(trained / "res" / "Dataset003_Liver" / "best_configuration.json")
    names = [r["name"] for r in best["ranking"]]
    assert sorted(names) == sorted(["3d_fullres", "2d", "ensemble__2d__3d_fullres"])
    scores = [r["mean_foreground_dice"] for r in best["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert best["ranking"][0]["name"] in out and "autoseg predict" in best["predict_command"]
    rules = trained / "res" / "Dataset003_Liver" / (best["ensemble"] and f"crossval/{best['ranking'][0]['name']}" or best["configuration"]) / "postprocessing.json"
    assert rules.is_file()
