"""Default CE class weights of short (CPU-budget) schedules: inverse foreground frequency, capped."""

from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest

from autoseg.trainers.class_weights import MAX_WEIGHT, class_voxel_counts, frequency_class_weights
from autoseg.trainers.commands import TrainingData, default_class_weights


def _write_case(folder, name, counts):
    """A (1, 4, 10, 10) label map holding ``counts[k]`` voxels of class k (k >= 1) on the even grid."""
    seg = np.full((1, 4, 10, 10), 0, np.int8)
    seg[0, 0, 0, 0] = -1  # outside the crop: never counted
    even = [(z, y, x) for z in range(0, 4, 2) for y in range(0, 10, 2) for x in range(0, 10, 2)][1:]
    i = 0
    for k, n in enumerate(counts, start=1):
        for z, y, x in even[i:i + n]:
            seg[0, z, y, x] = k
        i += n
    np.save(folder / f"{name}_seg.npy", seg)


def test_weights_lift_rare_classes_to_the_largest_foreground_class(tmp_path):
    _write_case(tmp_path, "a", [30, 2])
    _write_case(tmp_path, "b", [10, 2])
    counts = class_voxel_counts(tmp_path, ["a", "b"], 3)
    assert counts[1:].tolist() == [40, 4]  # even voxels only (stride 2), -1 left out
    assert frequency_class_weights(tmp_path, ["a", "b"], 3) == [1.0, 1.0, 10.0]


def test_weights_are_capped_and_none_without_two_foreground_classes(tmp_path):
    _write_case(tmp_path, "a", [49, 0])
    assert frequency_class_weights(tmp_path, ["a"], 3) is None  # only one foreground class occurs
    assert frequency_class_weights(tmp_path, ["a"], 2) is None
    np.save(tmp_path / "big_seg.npy", np.ones((1, 200, 200, 200), np.int8))
    _write_case(tmp_path, "c", [0, 1])
    w = frequency_class_weights(tmp_path, ["big", "c"], 3)
    assert w[:2] == [1.0, 1.0] and w[2] == MAX_WEIGHT


@pytest.mark.parametrize("target, roi, loss, given, expect_default", [
    ("cpu", False, "dice_ce", None, True),
    ("gpu", True, "dice_ce", None, True),
    ("gpu", False, "dice_ce", None, False),  # nnU-Net's plans train as nnU-Net does
    ("cpu", False, "gdl_focal", None, False),
    ("cpu", False, "dice_ce", [1.0, 2.0, 3.0], False),
])
def test_default_applies_to_cpu_and_roi_plans_with_dice_ce_only(tmp_path, target, roi, loss, given, expect_default):
    _write_case(tmp_path, "a", [20, 4])
    labels = SimpleNamespace(has_regions=False)
    data = TrainingData("D", SimpleNamespace(target=target, num_classes=3, label_definition=labels), SimpleNamespace(is_roi=roi),
                        tmp_path, 1, ["a"], [])
    got = default_class_weights(Namespace(class_weights=given, loss=loss), data)
    assert got == ([1.0, 1.0, 5.0] if expect_default else given)


def test_fold_config_uses_the_automatic_weights_and_cpu_sampling(tmp_path):
    from autoseg.trainers.commands import fold_config

    _write_case(tmp_path, "a", [20, 4])
    labels = SimpleNamespace(ignore_class=None, region_classes=None, has_regions=False)
    data = TrainingData("D", SimpleNamespace(target="cpu", num_classes=3, label_definition=labels),
                        SimpleNamespace(is_roi=False, batch_size=2,
                        previous_stage=None), tmp_path, 1, ["a"], [])
    base = dict(configuration="3d_fullres", loss="dice_ce", network="unet", optimizer="sgd", lr=None, epochs=3, iters_per_epoch=2, val_iters=1,
                time_budget=None, batch_size=None, seed=1, num_workers=0, amp="off", checkpoint_every=1, pretrained=None,
                rare_class_bias=None, oversample_foreground=None)
    auto_args, given_args = Namespace(class_weights=None, **base), Namespace(class_weights=[1.0, 1.0, 3.0], **base)
    auto = fold_config(auto_args, data, "0", "cpu", default_class_weights(auto_args, data))
    given = fold_config(given_args, data, "0", "cpu", default_class_weights(given_args, data))
    assert auto.class_weights == [1.0, 1.0, 5.0] and given.class_weights == [1.0, 1.0, 3.0]
    assert (auto.oversample_foreground, auto.rare_class_bias) == (0.5, 1.0)
