"""Planner fidelity: our plans equal what nnU-Net v2's default ExperimentPlanner (8 GB) derives.

The reference values in tests/data/nnunet_planner_reference.json were produced by running
nnU-Net v2.8.1's planner on the same hand-made fingerprints (see its "how_made" field).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.datasets.layout import DatasetInfo
from autoseg.fingerprint.fingerprint import CaseFingerprint, DatasetFingerprint, IntensityStats
from autoseg.planners.planner import fullres_spacing, plan_experiment
from autoseg.planners.topology import feature_map_voxels, make_topology, pool_and_conv_props

REF = json.loads((Path(__file__).parent / "data" / "nnunet_planner_reference.json").read_text())


def fingerprint(spacings, shapes):
    cases = [CaseFingerprint(f"c{i}", list(sp), list(sh), list(sh), 1.0) for i, (sp, sh) in enumerate(zip(spacings, shapes))]
    return DatasetFingerprint("x", len(cases), cases, {"0": IntensityStats(50, 20, 50, -100, 200, -50, 150, 100)}, 1.0, 1, 0)


def plan(name):
    f = REF["fingerprints"][name]
    info = DatasetInfo("x", {"0": "CT"}, REF["labels"], f["n_cases"])
    return plan_experiment(info, fingerprint(f["spacings_zyx"], f["shapes_after_crop_zyx"]))


@pytest.mark.parametrize("name", ["a_isotropic", "b_anisotropic_5mm", "c_lits_like", "d_mixed"])
def test_matches_nnunet_v2_default_planner(name):
    ours, ref = plan(name), REF["plans"][name]
    assert sorted(ours.configurations) == sorted(ref["configurations_present"])
    assert ours.transpose_forward == ref["transpose_forward"]
    for conf, r in ref["configurations"].items():
        o = ours.configurations[conf]
        assert o.spacing_mm == pytest.approx(r["spacing"], rel=1e-6), conf
        assert o.patch_size == r["patch_size"], conf
        assert o.batch_size == r["batch_size"], conf
        assert o.batch_dice == r["batch_dice"], conf
        assert o.topology.n_stages == r["n_stages"], conf
        assert o.topology.features_per_stage == r["features_per_stage"], conf
        assert o.topology.kernel_sizes == r["kernel_sizes"], conf
        assert o.topology.strides == r["strides"], conf
        assert feature_map_voxels(o.topology, o.patch_size, 3, deep_supervision=False) == r["compute_conv_feature_map_size"]


def test_hand_worked_isotropic():
    # 1 mm isotropic, 160^3: initial patch 256^3 clipped to 160^3 -> 5 poolings per axis, then shrunk to 128^3
    p = plan("a_isotropic").configurations["3d_fullres"]
    assert p.patch_size == [128, 128, 128] and p.topology.pool_per_axis == [5, 5, 5]
    assert p.topology.features_per_stage == [32, 64, 128, 256, 320, 320]


def test_hand_worked_anisotropic_5mm():
    # 5 mm slices: no pooling along z until in-plane spacing catches up (0.8 -> 1.6 -> 3.2 -> 6.4)
    p = plan("b_anisotropic_5mm").configurations["3d_fullres"]
    assert p.spacing_mm == pytest.approx([5.0, 0.8, 0.8])
    assert p.topology.kernel_sizes[0] == [1, 3, 3] and p.topology.strides[1] == [1, 2, 2]
    assert p.topology.pool_per_axis == [3, 5, 5]


def test_lits_like_has_lowres_and_cascade():
    # nnU-Net v1's liver plan printed patch 128^3 with 5 poolings per axis and a lowres config
    plans = plan("c_lits_like")
    full = plans.configurations["3d_fullres"]
    assert full.patch_size == [128, 128, 128] and full.topology.pool_per_axis == [5, 5, 5]
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plans.configurations)
    low = plans.configurations["3d_lowres"]
    assert all(a > b for a, b in zip(low.spacing_mm, full.spacing_mm))
    assert plans.configurations["3d_cascade_fullres"].previous_stage == "3d_lowres"


def test_anisotropy_rule_uses_10th_percentile():
    spacings = np.array([[5.0, 0.5, 0.5]] * 9 + [[1.0, 0.5, 0.5]])
    shapes = np.array([[40, 512, 512]] * 10)
    t = fullres_spacing(spacings, shapes)
    assert t[0] == pytest.approx(np.percentile(spacings[:, 0], 10)) and t[1] == 0.5


def test_pool_and_conv_props_divisibility():
    pools, strides, kernels, patch, div = pool_and_conv_props([3.0, 1.0, 1.0], [20, 100, 90])
    assert all(p % d == 0 for p, d in zip(patch, div)) and len(kernels) == len(strides)


def test_gpu_memory_scales_patch_and_batch():
    f = REF["fingerprints"]["c_lits_like"]
    info = DatasetInfo("x", {"0": "CT"}, REF["labels"], f["n_cases"])
    fp = fingerprint(f["spacings_zyx"], f["shapes_after_crop_zyx"])
    small = plan_experiment(info, fp, gpu_memory_gb=2).configurations["3d_fullres"]
    big = plan_experiment(info, fp, gpu_memory_gb=8).configurations["3d_fullres"]
    assert np.prod(small.patch_size) < np.prod(big.patch_size)
    topo, patch, _ = make_topology(small.spacing_mm, small.patch_size)
    assert feature_map_voxels(topo, patch, 3, deep_supervision=False) / 2 * 2 <= 560e6 * 2 / 8
