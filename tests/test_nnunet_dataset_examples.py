"""nnU-Net v2's documented dataset.json examples, unchanged, through plan -> train (a few
iterations) -> predict -> evaluate on tiny synthetic volumes.

The dataset.json texts follow nnU-Net's documentation: the multi-channel Prostate example
(dataset_format.md: T2 + ADC, PZ 1, TZ 2), the BraTS region-based example
(region_based_training.md: whole tumour [1, 2, 3], tumour core [2, 3], enhancing tumour 3,
regions_class_order [1, 2, 3]) and the ignore-label examples (ignore_label.md: BraTS labels with
"ignore": 4, label-based and region-based).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.io.images import Geometry, read_image, write_image
from autoseg.io.json_io import load_json

BRATS_CHANNELS = {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"}
BRATS_LABELS = {"background": 0, "edema": 1, "non_enhancing_and_necrosis": 2, "enhancing_tumor": 3}
BRATS_REGIONS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}
EXAMPLES = {  # name: (dataset.json without numTraining/file_ending, mean keys of the evaluation, network outputs)
    "prostate_multichannel": ({"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "PZ": 1, "TZ": 2},
                               "overwrite_image_reader_writer": "SimpleITKIO"}, {"1", "2", "1+2"}, 3),
    "brats_regions": ({"channel_names": BRATS_CHANNELS, "labels": BRATS_REGIONS, "regions_class_order": [1, 2, 3]},
                      {"1", "2", "3", "1+2+3", "2+3"}, 3),
    "brats_ignore": ({"channel_names": BRATS_CHANNELS, "labels": {**BRATS_LABELS, "ignore": 4}}, {"1", "2", "3", "1+2+3"}, 4),
    "brats_regions_ignore": ({"channel_names": BRATS_CHANNELS, "labels": {**BRATS_REGIONS, "ignore": 4},
                              "regions_class_order": [1, 2, 3]}, {"1", "2", "3", "1+2+3", "2+3"}, 3),
}
SHAPE = (8, 20, 20)


def nested_case(seed: int, n_channels: int, n_labels: int, ignore: int | None) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """(C, Z, Y, X) float32 images and a label map of nested spheres 1 ⊃ 2 ⊃ 3 (fewer when ``n_labels`` is
    smaller); each channel shows the labels with its own contrast. With ``ignore`` every other slice is it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    c = rng.uniform(-0.1, 0.1, 3)
    r2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
    seg = np.zeros(SHAPE, np.uint8)
    for label, radius in zip(range(1, n_labels + 1), (0.75, 0.5, 0.3)):
        seg[r2 < radius ** 2] = label
    contrast = rng.permutation(np.arange(1, 5) * 100.0)
    images = np.stack([np.where(seg > 0, contrast[(seg + ch) % 4], 0) + rng.normal(0, 5, SHAPE) for ch in range(n_channels)])
    if ignore is not None:
        seg[1::2] = ignore
    return images.astype(np.float32), seg, Geometry(list(SHAPE), [2.0, 1.0, 1.0])


def write_example(folder: Path, dataset_json: dict, n: int = 3) -> None:
    channels, labels = dataset_json["channel_names"], dataset_json["labels"]
    ignore = labels.get("ignore")
    n_labels = max(v for k, v in labels.items() if k != "ignore" and isinstance(v, int))
    for i in range(n):
        images, seg, geom = nested_case(i, len(channels), n_labels, ignore)
        for ch in range(len(channels)):
            write_image(images[ch], geom, folder / "imagesTr" / f"case_{i:03d}_{ch:04d}.nii.gz")
        write_image(seg, geom, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    images, _, geom = nested_case(99, len(channels), n_labels, None)
    for ch in range(len(channels)):
        write_image(images[ch], geom, folder / "imagesTs" / f"new_{ch:04d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({**dataset_json, "numTraining": n, "file_ending": ".nii.gz"}, indent=1))


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_nnunet_example_plans_trains_predicts_evaluates(autoseg_env, tmp_path, example):
    dataset_json, mean_keys, outputs = EXAMPLES[example]
    name = f"Dataset{50 + sorted(EXAMPLES).index(example):03d}_{example}"
    raw = autoseg_env["raw"] / name
    write_example(raw, dataset_json)
    assert main(["plan_and_preprocess", "-d", name, "-c", "3d_fullres", "-np", "1"]) == 0
    plans = load_json(autoseg_env["pre"] / name / "plans.json")
    assert plans["num_input_channels"] == len(dataset_json["channel_names"])
    assert [n["scheme"] for n in plans["configurations"]["3d_fullres"]["normalization"]] == ["zscore"] * len(dataset_json["channel_names"])
    # train one fold a few iterations; its validation predicts the held-out case and evaluates it
    assert main(["train", "-d", name, "-f", "0", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1",
                 "--num-workers", "0"]) == 0
    validation = autoseg_env["res"] / name / "3d_fullres" / "fold_0" / "validation"
    assert set(load_json(validation / "summary.json")["mean"]) == mean_keys
    case = next(validation.glob("*_probabilities.npz")).name[: -len("_probabilities.npz")]
    with np.load(validation / f"{case}_probabilities.npz") as f:
        assert f["probabilities"].shape[0] == outputs  # classes (softmax) or regions (sigmoid); never ignore
    out = tmp_path / "pred"
    assert main(["predict", "-d", name, "-c", "3d_fullres", "-f", "0", "-i", str(raw / "imagesTs"), "-o", str(out),
                 "--device", "cpu", "--no-tta"]) == 0
    mask = read_image(out / "new.nii.gz")[0]
    assert mask.shape == SHAPE and set(np.unique(mask).astype(int)) <= {0, 1, 2, 3}
