"""``autoseg plan_and_preprocess --target cpu``: the flag reaches the planner and the plan states its time."""

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.planners.plans import Plans
from autoseg.preprocessing.case_store import list_preprocessed_cases

from conftest import write_blob_dataset


@pytest.fixture
def dataset(autoseg_env):
    folder = autoseg_env["raw"] / "Dataset004_Liver"
    write_blob_dataset(folder, n=3)
    return folder


def test_target_cpu_plans_within_a_second_and_preprocesses(dataset, autoseg_env, capsys):
    assert main(["plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "--target", "cpu", "-np", "1"]) == 0
    pre = autoseg_env["pre"] / "Dataset004_Liver"
    plans = Plans.load(pre / "plans.json")
    assert plans.target == "cpu"
    full = plans.configurations["3d_fullres"]
    assert 0 < full.expected_s_per_iter_cpu <= 1.0 and full.train_gflop_per_iter > 0
    assert all(p >= np.ceil(m / 2) for p, m in zip(full.patch_size, full.median_shape_vox))
    assert len(list_preprocessed_cases(pre / full.data_identifier)) == 3
    assert full.canonical_orientation and full.mirror_axes == [0, 1]  # axes (z, y, x): no left-right mirroring
    assert "s/iteration on 2 CPU cores" in capsys.readouterr().out


def test_default_target_is_gpu(dataset, autoseg_env):
    assert main(["plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "-np", "1", "--verify"]) == 0
    assert main(["plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "-np", "1"]) == 0
    plans = Plans.load(autoseg_env["pre"] / "Dataset004_Liver" / "plans.json")
    assert plans.target == "gpu"
    full = plans.configurations["3d_fullres"]
    assert not full.canonical_orientation and full.mirror_axes is None  # nnU-Net: arrays as stored, every axis mirrored
