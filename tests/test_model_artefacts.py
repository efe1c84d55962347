"""The shared model artefacts and the defects fixed when they got one home each."""

import json
from dataclasses import asdict

import numpy as np
import pytest

from autoseg import paths
from autoseg.cli import main
from autoseg.datasets.splits import make_splits
from autoseg.errors import AutosegError
from autoseg.evaluation.model_selection import ensemble_folder, merge_folds, trained_configurations
from autoseg.io.images import Geometry, read_image, write_image
from autoseg.io.json_io import load_dataclass, load_json
from autoseg.model.probabilities import ProbabilityInfo, write_probabilities
from autoseg.model.selection import BestConfiguration, default_configurations
from autoseg.model.trained import TrainedModel
from autoseg.model.training_config import TrainingConfig
from autoseg.trainers.commands import training_data

from conftest import write_blob_dataset
from test_predict import make_model, tiny_config

GEOM = Geometry(shape_zyx=[2, 3, 3], spacing_zyx=[1.0, 1.0, 1.0], origin_xyz=[0.0, 0.0, 0.0], direction=[1, 0, 0, 0, 1, 0, 0, 0, 1])


def _validation_case(folder, case, probs, labels, ending):
    folder.mkdir(parents=True, exist_ok=True)
    values = sorted(labels.values())
    seg = np.asarray(values, dtype=np.uint8)[np.argmax(probs, 0)]
    write_image(seg, GEOM, folder / f"{case}{ending}")
    write_probabilities(probs, ProbabilityInfo(case, labels, GEOM, f"{case}{ending}"), folder)


def test_model_selection_finds_nrrd_validation_and_ensembles_label_values(autoseg_env):
    """A dataset in .nrrd: validation files are found by its file_ending; an ensemble writes label
    values (0, 1, 4), not class indices (0, 1, 2)."""
    name, labels, ending = "Dataset005_Kidney", {"background": 0, "kidney": 1, "cyst": 4}, ".nrrd"
    rng = np.random.default_rng(0)
    for conf in ("2d", "3d_fullres"):
        for fold in (0, 1):
            p = rng.random((3, 2, 3, 3)).astype(np.float32)
            p[2, 0, 0, 0] = 5.0  # class 2 (label 4) wins this voxel in every member
            _validation_case(paths.validation_dir(name, conf, fold), f"c{fold}", p / p.sum(0), labels, ending)
    assert trained_configurations(name, [0, 1], ending) == ["2d", "3d_fullres"]
    assert trained_configurations(name, [0, 1], ".nii.gz") == []
    members = [merge_folds(name, c, [0, 1], ending) for c in ("2d", "3d_fullres")]
    out = ensemble_folder(name, members, paths.ensemble_name(["2d", "3d_fullres"]), ending)
    seg, _ = read_image(out / f"c0{ending}", dtype=np.uint8)
    assert seg[0, 0, 0] == 4 and set(np.unique(seg)) <= {0, 1, 4}


def test_best_configuration_round_trip_and_default(tmp_path):
    best = BestConfiguration("2d", ["2d", "3d_fullres"], [0, 1], 0.9, "x/postprocessing.json")
    from autoseg.io.json_io import save_json
    save_json(best, tmp_path / paths.BEST_CONFIGURATION_FILE)
    assert load_dataclass(BestConfiguration, tmp_path / paths.BEST_CONFIGURATION_FILE).members == ["2d", "3d_fullres"]
    assert default_configurations(tmp_path) == ["2d", "3d_fullres"]
    assert default_configurations(tmp_path / "none") == ["3d_fullres"]


def test_patch_size_and_classes_come_from_the_plan(tmp_path):
    """An older training.json with its own patch_size no longer overrides the plan the folds were trained with."""
    ddir = make_model(tmp_path, {"3d_fullres": tiny_config("3d_fullres", [2.0, 1.0, 1.0], [8, 16, 16])})
    tj = ddir / "3d_fullres" / "fold_0" / "training.json"
    data = load_json(tj)
    data["patch_size"] = [4, 4, 4]
    tj.write_text(json.dumps(data))
    model = TrainedModel(ddir, "3d_fullres")
    assert model.patch_size == [8, 16, 16] and model.num_classes == model.plans.num_classes == 3


def test_training_json_without_num_classes_is_refused(tmp_path):
    cfg = TrainingConfig(dataset="D", configuration="3d_fullres", fold="0", num_input_channels=1, num_classes=3)
    data = asdict(cfg)
    del data["num_classes"]
    (tmp_path / "training.json").write_text(json.dumps(data))
    with pytest.raises(AutosegError, match="training.json"):
        load_dataclass(TrainingConfig, tmp_path / "training.json")


def test_split_seed_follows_train_seed(autoseg_env):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=6)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "-np", "1"]) == 0
    data = training_data(None, "3d_fullres", seed=7)
    assert data.splits == make_splits(data.cases, 5, seed=7) != make_splits(data.cases, 5, seed=12345)


def test_verbose_shows_the_traceback_of_a_one_line_error(autoseg_env, capsys):
    assert main(["-v", "train", "-d", "Nope"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "autoseg train: error:" in err
    assert main(["train", "-d", "Nope"]) == 1
    assert "Traceback" not in capsys.readouterr().err
