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
                 "--device", "cpu", "--uncertainty"]) == 0
    assert mask_values(out) <= {0, 1, 5}
    assert set(load_json(out / "uncertainty" / "case_000_uncertainty.json")["volume_ml_per_pass"]) == {"foreground", "liver", "tumor"}
    assert mask_values(out) - {0}  # foreground predicted (an untrained net predicts every class somewhere)
    assert main(["evaluate", "-r", str(raw / "labelsTr"), "-p", str(out), "--dataset-json", str(raw / "dataset.json")]) == 0
    assert set(load_json(out / "summary.json")["mean"]) >= {"1", "5"}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def test_ignore_label_half_the_slices_trains_a_usable_model(autoseg_env, tmp_path):
    """Every other slice of each case is "ignore" (3): the model still segments the liver of an unseen,
    densely labelled case far better than a trivial all-liver guess; no mask holds 3."""
    raw = autoseg_env["raw"] / "Dataset008_Sparse"

    def half_ignored(seg, i):
        seg = seg.copy()
        seg[i % 2::2] = 3
        return seg
    write_dataset(raw, {"background": 0, "liver": 1, "tumor": 2, "ignore": 3}, mark=half_ignored)
    assert main(["plan_and_preprocess", "-d", "8", "-c", "3d_fullres", "-np", "1"]) == 0
    fp = load_json(autoseg_env["pre"] / "Dataset008_Sparse" / "dataset_fingerprint.json")
    assert all(3 in c["labels_present"] for c in fp["cases"])
    assert fp["intensity_per_channel"]["0"]["percentile_00_5"] > -200  # ignored air is no foreground sample
    assert all(c["foreground_bbox_zyx"][1][1] - c["foreground_bbox_zyx"][1][0] < 24 for c in fp["cases"])
    assert main(["train", "-d", "8", "-f", "all", "--epochs", "3", "--iters-per-epoch", "8", "--val-iters", "1",
                 "--num-workers", "0", "--no-validation"]) == 0
    training = load_json(autoseg_env["res"] / "Dataset008_Sparse" / "3d_fullres" / "fold_all" / "training.json")
    assert training["ignore_class"] == 3 and training["num_classes"] == 3
    held = tmp_path / "held"
    (held / "img").mkdir(parents=True)
    img, ref, geom = blob_case((12, 24, 24), (2.5, 1.0, 1.0), 99)
    write_image(img, geom, held / "img" / "new_0000.nii.gz")
    assert main(["predict", "-d", "8", "-c", "3d_fullres", "-f", "all", "-i", str(held / "img"), "-o", str(held / "out"),
                 "--device", "cpu", "--no-tta"]) == 0
    pred = read_image(held / "out" / "new.nii.gz")[0]
    assert 3 not in np.unique(pred)
    liver_ref, liver_pred = ref > 0, (pred == 1) | (pred == 2)
    trivial = _dice(liver_ref, np.ones_like(liver_ref))  # every voxel liver
    assert _dice(liver_ref, liver_pred) > max(0.7, trivial + 0.4), (_dice(liver_ref, liver_pred), trivial)


@pytest.mark.parametrize("regions", [None, [[1, 2], [2]]])
def test_ignored_voxels_change_no_loss_term(regions):
    """Logits at ignored voxels (class 3) change neither the loss nor get a gradient, at every
    deep-supervision level (the targets are downsampled with the ignore mask in them)."""
    import torch
    from autoseg.trainers.losses import build_loss, downsample_targets
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=g)
    target[:, :, ::3] = 3
    k = 2 if regions else 3
    targets = downsample_targets(target, [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    loss = build_loss("dice_ce", k, batch_dice=True, n_ds_outputs=3, ignore_index=3, regions=regions)
    outs = [torch.randn(2, k, n, n, n, generator=g, requires_grad=True) for n in (8, 4, 2)]
    value = loss(outs, targets)
    value.backward()
    for o, t in zip(outs[:2], targets[:2]):  # the lowest resolution has weight 0 (nnU-Net)
        ignored = (t == 3).expand_as(o)
        assert o.grad is not None and torch.all(o.grad[ignored] == 0) and torch.any(o.grad[~ignored] != 0)
    changed = [o.detach().clone() for o in outs]
    for o, t in zip(changed, targets):
        o[(t == 3).expand_as(o)] = 50.0
    assert torch.allclose(loss(changed, targets), value.detach())


def test_region_loss_is_low_for_the_right_regions():
    import torch
    from autoseg.trainers.region_loss import RegionDiceBCELoss, region_targets
    target = torch.tensor([0, 1, 2, 2, 1, 0]).view(1, 1, 6)
    masks, _ = region_targets(target, [[1, 2], [2]], None)
    assert masks[0].tolist() == [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]]
    loss = RegionDiceBCELoss([[1, 2], [2]], batch_dice=False)
    right, wrong = (masks * 2 - 1) * 20, (1 - masks * 2) * 20
    assert loss(right, target) < 0.01 < 1.5 < loss(wrong, target)


def test_region_training_refuses_other_losses_and_class_weights():
    from autoseg.trainers.losses import build_loss
    with pytest.raises(AutosegError, match="region-based dataset trains with dice_ce"):
        build_loss("gdl", 2, batch_dice=False, regions=[[1, 2], [2]])
    with pytest.raises(AutosegError, match="with class weights"):
        build_loss("dice_ce", 2, batch_dice=False, class_weights=[1.0, 2.0], regions=[[1, 2], [2]])


def test_evaluation_leaves_ignored_voxels_out(tmp_path):
    from autoseg.evaluation.evaluate import evaluate_folders
    from autoseg.io.images import Geometry
    geom = Geometry([4, 4, 4], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    ref[3] = 4  # ignore: whatever is predicted there does not count
    pred = ref.copy()
    pred[3] = 1
    for folder, arr in (("ref", ref), ("pred", pred)):
        (tmp_path / folder).mkdir()
        write_image(arr, geom, tmp_path / folder / "a.nii.gz")
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "ignore": 4}}))
    summary = evaluate_folders(tmp_path / "ref", tmp_path / "pred", dataset_json=dj, surface_distances_mm=False)
    assert summary.mean["1"]["Dice"] == 1.0 and "4" not in summary.mean
    plain = evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels=[1], out_json=tmp_path / "plain.json",
                             surface_distances_mm=False)
    assert plain.mean["1"]["Dice"] <= 0.5  # without the definition the ignored slab counts as false positives


def test_regions_liver_contains_tumour_train_predict_evaluate_ensemble(autoseg_env, tmp_path):
    """nnU-Net's region example for the liver: liver = [1, 2] (incl. tumour), tumor = 2, order [1, 2]."""
    raw = autoseg_env["raw"] / "Dataset009_Regions"
    write_dataset(raw, {"background": 0, "liver": [1, 2], "tumor": 2}, extra={"regions_class_order": [1, 2]})
    assert main(["plan_and_preprocess", "-d", "9", "-c", "3d_fullres", "-np", "1"]) == 0
    plans = load_json(autoseg_env["pre"] / "Dataset009_Regions" / "plans.json")
    assert plans["regions_class_order"] == [1, 2]
    assert main(["train", "-d", "9", "-f", "0", "--epochs", "1", *FAST]) == 0
    fold = autoseg_env["res"] / "Dataset009_Regions" / "3d_fullres" / "fold_0"
    assert load_json(fold / "training.json")["region_classes"] == [[1, 2], [2]]
    summary = load_json(fold / "validation" / "summary.json")
    assert summary["label_names"]["1+2"] == "liver" and summary["label_names"]["2"] == "tumor"
    assert set(summary["mean"]) == {"1", "2", "1+2"}
    assert summary["foreground_mean"]["Dice"] == pytest.approx(np.mean([summary["mean"][k]["Dice"] for k in ("1+2", "2")]))
    assert main(["find_best_configuration", "-d", "9", "-f", "0"]) == 0  # ranks on the regions, postprocessing per region
    rules = load_json(autoseg_env["res"] / "Dataset009_Regions" / "3d_fullres" / "postprocessing.json")
    assert set(rules["evidence"]) == {"foreground_lcc", "region_1+2_lcc", "label_2_lcc"}
    assert set(rules["evidence"]["region_1+2_lcc"]["before"]) == {"1+2", "2"}
    out = [tmp_path / "a", tmp_path / "b"]
    for o, tta in zip(out, (["--uncertainty"], ["--no-tta"])):
        assert main(["predict", "-d", "9", "-c", "3d_fullres", "-f", "0", "-i", str(raw / "imagesTr"), "-o", str(o),
                     "--device", "cpu", "--save-probabilities", *tta]) == 0
    with np.load(out[0] / "case_000_probabilities.npz") as f:
        probs = f["probabilities"].astype(np.float32)
    assert probs.shape[0] == 2  # one sigmoid probability per region, not a softmax over classes
    mask = read_image(out[0] / "case_000.nii.gz")[0]
    expected = np.zeros(mask.shape, np.uint8)
    expected[probs[0] > 0.5] = 1
    expected[probs[1] > 0.5] = 2
    sure = np.all(np.abs(probs - 0.5) > 2e-3, axis=0)  # float16 files: leave out voxels at the threshold
    assert sure.mean() > 0.9 and np.array_equal(mask[sure], expected[sure])
    unc = load_json(out[0] / "uncertainty" / "case_000_uncertainty.json")  # passes painted like the mask
    assert set(unc["volume_ml_per_pass"]) == {"foreground", "liver", "tumor"} and unc["n_passes"] == 8
    assert all(f == pytest.approx(a + b, abs=1e-3) for f, a, b in zip(*(unc["volume_ml_per_pass"][k] for k in ("foreground", "liver", "tumor"))))
    assert main(["ensemble", "-i", str(out[0]), str(out[1]), "-o", str(tmp_path / "ens")]) == 0
    with np.load(out[1] / "case_000_probabilities.npz") as f:
        mean = (probs + f["probabilities"].astype(np.float32)) / 2
    expected = np.zeros(mask.shape, np.uint8)
    expected[mean[0] > 0.5] = 1
    expected[mean[1] > 0.5] = 2
    sure = np.all(np.abs(mean - 0.5) > 1e-6, axis=0)
    assert np.array_equal(read_image(tmp_path / "ens" / "case_000.nii.gz")[0][sure], expected[sure])


def _kidney_case(folder: Path, name: str = "k") -> np.ndarray:
    """Kidney (3) with a mass (7) inside on a 1 mm grid: references and predictions identical."""
    from autoseg.io.images import Geometry
    geom = Geometry([8, 16, 16], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    seg = np.zeros((8, 16, 16), np.uint8)
    seg[2:6, 3:13, 3:13] = 3
    seg[3:5, 5:8, 5:8] = 7
    for sub in ("ref", "pred"):
        write_image(seg, geom, folder / sub / f"{name}.nii.gz")
    write_image(np.full(seg.shape, 40, np.int16), geom, folder / "img" / f"{name}_0000.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "kidney": 3, "mass": 7}}))
    return seg


def test_clinical_organ_and_lesion_are_configurable(tmp_path):
    """"mass" is not named like a lesion: no clinical read-out unless --organ-label/--lesion-label say so."""
    seg = _kidney_case(tmp_path)
    ref, pred, dj = tmp_path / "ref", tmp_path / "pred", tmp_path / "dataset.json"
    assert main(["evaluate", "-r", str(ref), "-p", str(pred), "--dataset-json", str(dj)]) == 0
    assert "clinical" not in load_json(pred / "summary.json")["metric_per_case"][0]
    assert main(["evaluate", "-r", str(ref), "-p", str(pred), "--dataset-json", str(dj), "--organ-label", "3", "--lesion-label", "7"]) == 0
    case = load_json(pred / "summary.json")["metric_per_case"][0]
    assert case["clinical"]["liver_volume_ml"]["ref"] == pytest.approx(np.count_nonzero(seg) / 1000)  # organ incl. lesion
    assert case["clinical"]["tumor_volume_ml"]["ref"] == pytest.approx(np.count_nonzero(seg == 7) / 1000)
    assert case["metrics"]["7"]["lesion_n_ref"] == 1
    assert main(["evaluate", "-r", str(ref), "-p", str(pred), "--dataset-json", str(dj), "-l", "3", "5"]) == 1  # 5 is no label
    assert main(["evaluate", "-r", str(ref), "-p", str(pred), "--lesion-label", "9", "-l", "3", "7"]) == 1
    out = tmp_path / "r.html"
    assert main(["report", "-i", str(tmp_path / "img"), "-p", str(pred), "-r", str(ref), "-o", str(out),
                 "--dataset-json", str(dj), "--organ-label", "3", "--lesion-label", "7"]) == 0
    page = out.read_text()
    assert ">kidney</span>" in page and ">mass</span>" in page and "liver" not in page.split("<h2>")[0]


def test_msd_converter_keeps_any_values_and_refuses_shared_names(tmp_path):
    from autoseg.datasets.converters import convert_msd
    from autoseg.datasets.layout import load_dataset_info
    from autoseg.io.images import Geometry
    task = tmp_path / "Task09_Gap"
    geom = Geometry([4, 4, 4], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    write_image(np.zeros((4, 4, 4), np.int16), geom, task / "imagesTr" / "a.nii.gz")
    write_image(np.full((4, 4, 4), 5, np.uint8), geom, task / "labelsTr" / "a.nii.gz")
    meta = {"name": "Gap", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "5": "cancer"}, "numTraining": 1,
            "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}
    (task / "dataset.json").write_text(json.dumps(meta))
    convert_msd(task, tmp_path / "out")
    assert load_dataset_info(tmp_path / "out").label_definition.class_values == [0, 1, 5]
    meta["labels"] = {"0": "background", "1": "liver", "2": "liver"}
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(AutosegError, match="share a name"):
        convert_msd(task, tmp_path / "out2")


def test_cascade_inputs_are_the_classes_of_the_previous_masks(autoseg_env):
    """A cascade's one-hot input channels are the foreground *classes* of the first stage's mask, whose
    values are the user's (liver [1, 5] ⊃ tumour 5, ignore 6): value 1 -> channel 0, value 5 -> channel 1."""
    from autoseg.planners.plans import Plans
    from autoseg.preprocessing.case_store import load_case
    from autoseg.preprocessing.preprocessor import onehot_previous_stage
    raw = autoseg_env["raw"] / "Dataset010_Cascade"
    write_dataset(raw, {"background": 0, "liver": [1, 5], "tumor": 5, "ignore": 6}, {2: 5}, n=2,
                  extra={"regions_class_order": [1, 5]})
    assert main(["plan_and_preprocess", "-d", "10", "-c", "3d_fullres", "-np", "1"]) == 0
    pre = autoseg_env["pre"] / "Dataset010_Cascade"
    plans = Plans.load(pre / "plans.json")
    _, seg, props = load_case(pre / "autosegPlans_3d_fullres", "case_000")
    mask = read_image(raw / "labelsTr" / "case_000.nii.gz")[0].astype(np.uint8)
    onehot = onehot_previous_stage(mask, props, plans, plans.configurations["3d_fullres"])
    assert onehot.shape[0] == 2 and np.array_equal(onehot[0], seg[0] == 1) and np.array_equal(onehot[1], seg[0] == 2)
    assert onehot[1].sum() > 0


def test_report_names_the_organ_of_a_region_dataset(tmp_path):
    """Regions liver [1, 2] ⊃ tumour 2: the masks' value 1 is drawn and named as the liver."""
    _kidney_case(tmp_path)
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "liver": [3, 7], "tumor": 7}, "regions_class_order": [3, 7]}))
    out = tmp_path / "r.html"
    assert main(["report", "-i", str(tmp_path / "img"), "-p", str(tmp_path / "pred"), "-o", str(out), "--dataset-json", str(dj)]) == 0
    assert ">liver</span>" in out.read_text() and ">tumor</span>" in out.read_text()
