"""Label definitions end to end (autoseg/datasets/labels.py): any label values, the ignore label,
region-based training -- plan, train a few iterations, predict, evaluate on tiny volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.datasets.labels import LabelDefinition
from autoseg.errors import AutosegError
from autoseg.io.images import read_image, write_image
from autoseg.io.json_io import load_json

from conftest import blob_case

FAST = ["--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0"]


def write_dataset(folder: Path, labels: dict, relabel: dict[int, int] | None = None, n: int = 4, extra: dict | None = None,
                  shape=(12, 24, 24), mark=None) -> None:
    """The blob dataset (liver 1, tumour 2) with its values renamed by ``relabel`` and ``mark(seg, i)``
    applied to each label map (e.g. to paint ignore); ``labels``/``extra`` go into dataset.json."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        img, seg, geom = blob_case(shape, (2.5, 1.0, 1.0), i)
        out = seg.copy()
        for old, new in (relabel or {}).items():
            out[seg == old] = new
        if mark is not None:
            out = mark(out, i)
        write_image(img, geom, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_image(out, geom, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    dj = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": n, "file_ending": ".nii.gz", **(extra or {})}
    (folder / "dataset.json").write_text(json.dumps(dj, indent=1))


def mask_values(folder: Path) -> set[int]:
    out: set[int] = set()
    for p in sorted(folder.glob("*.nii.gz")):
        out |= set(np.unique(read_image(p)[0]).astype(int).tolist())
    return out


def test_definition_classes_regions_and_ignore():
    d = LabelDefinition.from_json({"background": 0, "liver": 1, "tumor": 5})
    assert d.class_values == [0, 1, 5] and d.num_outputs == 3 and d.ignore_class is None
    seg = np.array([[0, 1, 5, 5]])
    assert d.to_classes(seg).tolist() == [[0, 1, 2, 2]] and d.to_values(d.to_classes(seg)).tolist() == seg.tolist()
    with pytest.raises(ValueError):
        d.to_classes(np.array([3]))
    d = LabelDefinition.from_json({"background": 0, "liver": [1, 2], "tumor": 2, "ignore": 3}, [1, 2])
    assert d.has_regions and d.class_values == [0, 1, 2] and d.ignore_class == 3 and d.num_outputs == 2
    assert d.region_classes == [[1, 2], [2]] and d.mask_names == {1: "liver", 2: "tumor"}
    painted = d.paint_regions(np.array([[True, True, False], [False, True, True]]))
    assert painted.tolist() == [1, 2, 2]  # later regions overwrite earlier ones (nnU-Net's rule)
    assert not LabelDefinition.from_json({"background": 0, "liver": [1], "tumor": 2}).has_regions  # one-value list


def test_any_label_values_train_predict_evaluate(autoseg_env, tmp_path):
    """Values {0, 1, 5}: stored as classes 0..2, masks come back as 0/1/5 and evaluate scores 1 and 5."""
    raw = autoseg_env["raw"] / "Dataset007_Gap"
    write_dataset(raw, {"background": 0, "liver": 1, "tumor": 5}, {2: 5})
    assert main(["plan_and_preprocess", "-d", "7", "-c", "3d_fullres", "-np", "1"]) == 0
    pre = autoseg_env["pre"] / "Dataset007_Gap"
    seg = np.load(next((pre / "autosegPlans_3d_fullres").glob("*_seg.npy")))
    assert set(np.unique(seg).tolist()) <= {0, 1, 2}
    assert main(["train", "-d", "7", "-f", "0", "--epochs", "1", *FAST]) == 0  # fold validation predicts + evaluates
    val = autoseg_env["res"] / "Dataset007_Gap" / "3d_fullres" / "fold_0" / "validation"
    assert mask_values(val) <= {0, 1, 5}
    summary = load_json(val / "summary.json")
    assert set(summary["mean"]) >= {"1", "5"} and summary["label_names"]["5"] == "tumor"
    out = tmp_path / "pred"
    assert main(["predict", "-d", "7", "-c", "3d_fullres", "-f", "0", "-i", str(raw / "imagesTr"), "-o", str(out),
                 "--device", "cpu"]) == 0
    assert mask_values(out) <= {0, 1, 5}
    assert mask_values(out) - {0}  # foreground predicted (an untrained net predicts every class somewhere)
    assert main(["evaluate", "-r", str(raw / "labelsTr"), "-p", str(out), "--dataset-json", str(raw / "dataset.json")]) == 0
    assert set(load_json(out / "summary.json")["mean"]) >= {"1", "5"}
