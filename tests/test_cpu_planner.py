"""The CPU cost model (FLOPs of the planned U-Net) and the ``--target cpu`` planning rule.

The planner's constants are set here to round values (``_constants``; the voxel term is off unless a test
sets it), so the hand-worked
numbers below do not move when ``benchmarks/cpu_cost_model.py`` is re-run on another machine.
"""

import numpy as np
import pytest
import torch

from autoseg.datasets.layout import DatasetInfo
from autoseg.fingerprint.fingerprint import CaseFingerprint, DatasetFingerprint, IntensityStats
from autoseg.networks.builder import build_network
from autoseg.planners import cost_model as C
from autoseg.planners import cpu_planner as P
from autoseg.planners.planner import plan_experiment
from autoseg.planners.plans import NetworkTopology
from autoseg.planners.topology import make_topology

LABELS = {"background": 0, "liver": 1, "tumor": 2}


def _constants(monkeypatch, s_per_gflop, overhead, s_per_mvox=0.0):
    monkeypatch.setattr(C, "S_PER_GFLOP", s_per_gflop)
    monkeypatch.setattr(C, "S_PER_MVOX", s_per_mvox)
    monkeypatch.setattr(C, "S_OVERHEAD", overhead)


def _fingerprint(spacing, shape, n):
    cases = [CaseFingerprint(f"c{i}", list(spacing), list(shape), list(shape), 1.0) for i in range(n)]
    return DatasetFingerprint("x", n, cases, {"0": IntensityStats(50, 20, 50, -100, 200, -50, 150, 100)}, 1.0, 1, 0)


def _hooked_macs(topo: NetworkTopology, patch, in_ch=1, classes=3) -> float:
    """Multiply-adds of every conv / transposed conv of the real network, counted by forward hooks."""
    net = build_network("unet", topo, in_ch, classes, deep_supervision=True)
    total = [0.0]

    def hook(mod, inp, out):
        k = float(np.prod(mod.kernel_size))
        if isinstance(mod, (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            total[0] += inp[0][0].numel() * k * mod.out_channels  # every input voxel hits k outputs
        else:
            total[0] += out[0].numel() * k * mod.in_channels

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.zeros(1, in_ch, *patch))
    return total[0]


def test_forward_flops_hand_worked_2d():
    # 2 stages, features [8, 16], 3x3 kernels, 16x16 patch, 1 input channel, 3 classes, 2 convs per stage:
    #   encoder 0 (256 vox): 1->8: 256*9*1*8 = 18432;   8->8: 256*9*8*8 = 147456
    #   encoder 1 (64 vox):  8->16: 64*9*8*16 = 73728;  16->16: 64*9*16*16 = 147456
    #   decoder: transposed 16->8 at 256 vox: 256*16*8 = 32768; 16->8: 256*9*16*8 = 294912;
    #            8->8: 147456; head 8->3: 256*8*3 = 6144
    #   sum 868352 multiply-adds = 1736704 FLOPs; training = 3x
    topo = NetworkTopology(2, [8, 16], [[3, 3], [3, 3]], [[1, 1], [2, 2]], [2, 2], [2])
    assert C.forward_flops(topo, [16, 16], 1, 3) == 1736704
    assert C.train_gflop(topo, [16, 16], 1, 3) == pytest.approx(3 * 1736704 / 1e9)
    assert _hooked_macs(topo, [16, 16]) == 868352


def test_seconds_per_iteration_adds_flops_voxels_and_overhead(monkeypatch):
    # the 2D net above at batch 4: 4 x 3 x 1736704 FLOPs = 0.020840448 GFLOP, 4 x 256 voxels = 0.001024 Mvox;
    # at 1 s/GFLOP, 100 s/Mvox and 0.5 s: 0.020840448 + 0.1024 + 0.5 = 0.623240448 s
    _constants(monkeypatch, 1.0, 0.5, s_per_mvox=100.0)
    topo = NetworkTopology(2, [8, 16], [[3, 3], [3, 3]], [[1, 1], [2, 2]], [2, 2], [2])
    assert C.seconds_per_iteration(topo, [16, 16], 1, 3, 4) == pytest.approx(0.623240448)


@pytest.mark.parametrize("spacing,patch,base", [([3.0, 1.0, 1.0], [16, 48, 40], 8), ([1.0, 1.0, 1.0], [16, 16, 16], 16),
                                                ([1.0, 1.0], [64, 48], 32)])
def test_forward_flops_match_the_real_network(spacing, patch, base):
    # anisotropic kernels (1x3x3), several stages, deep-supervision heads: the count equals the modules' own
    topo, padded, _ = make_topology(spacing, patch, base_features=base)
    assert 2 * _hooked_macs(topo, padded) == pytest.approx(C.forward_flops(topo, padded, 1, 3), rel=1e-12)


def test_make_topology_width_scales_the_cap():
    topo, _, _ = make_topology([1.0, 1.0, 1.0], [128, 128, 128], base_features=16)
    assert topo.features_per_stage == [16, 32, 64, 128, 160, 160]  # cap 320 * 16 / 32
    default, _, _ = make_topology([1.0, 1.0, 1.0], [128, 128, 128])
    assert default.features_per_stage == [32, 64, 128, 256, 320, 320]


def test_hand_worked_width_is_narrowed_before_the_spacing(monkeypatch):
    # 0.02 s/GFLOP + 0.1 s: a 1 s iteration leaves 0.9 s = 45 GFLOP at batch 2, 22.5 GFLOP per sample.
    # 1 mm isotropic, median case 64^3 -> context floor 32^3 (3 poolings, divisor 8).
    #   width 32 at the floor: 42.0 GFLOP/sample (train) > 22.5 -> too slow
    #   width 16 at the floor: 10.55 <= 22.5 -> width 16, spacing kept (k = 1)
    # patch: start 64^3 (initial 256^3 capped by the median), shrink the axis largest relative to the median:
    #   64^3 89.0 -> 48x64x64 67.1 -> 48x48x64 47.5 -> 48^3 35.6 -> 40x48x48 29.7 -> 40x40x48 24.7 -> 40^3 20.6 fits
    # batch: floor(0.9 / (0.02 x 20.6)) = 2; 5 % cap round(50 x 64^3 x 0.05 / 40^3) = 10 -> 2
    # expected 0.02 x 2 x 20.6 + 0.1 = 0.924 s
    _constants(monkeypatch, 0.02, 0.1)
    c = P.plan_cpu_configuration("3d_fullres", [1.0, 1.0, 1.0], [64, 64, 64], 50 * 64.0 ** 3, 3, [], "x", True)
    assert c.spacing_mm == [1.0, 1.0, 1.0] and c.median_shape_vox == [64, 64, 64]
    assert c.topology.features_per_stage == [16, 32, 64, 128]
    assert c.patch_size == [40, 40, 40] and c.batch_size == 2
    assert c.train_gflop_per_iter == pytest.approx(2 * 20.607, abs=0.01)
    assert c.expected_s_per_iter_cpu == pytest.approx(0.924, abs=1e-3)


def test_hand_worked_spacing_is_coarsened_when_no_width_fits(monkeypatch):
    # 0.5 s/GFLOP + 0.1 s: 1.8 GFLOP per iteration, 0.9 per sample. At 1 mm even width 8 at the floor (32^3)
    # needs 2.66 GFLOP/sample, so the spacing grows by 3 % steps (isotropic: all axes) until width 8 fits:
    # the first step k = 1.03^n at which a floor patch of ceil(0.5 x 64 / k) fits. About (2.66 / 0.9)^(1/3) = 1.44
    # from the voxel count alone; the coarser network (fewer poolings on the smaller floor) makes it 1.03^16 = 1.605.
    _constants(monkeypatch, 0.5, 0.1)
    c = P.plan_cpu_configuration("3d_fullres", [1.0, 1.0, 1.0], [64, 64, 64], 50 * 64.0 ** 3, 3, [], "x", True)
    k = c.spacing_mm[0]
    n = round(np.log(k) / np.log(1.03))
    assert c.spacing_mm == pytest.approx([1.03 ** n] * 3) and n == 16
    assert c.topology.features_per_stage[0] == 8
    med = 64 / k  # 39.9: the median case at the coarser spacing
    assert c.median_shape_vox == [40, 40, 40] and all(p >= np.ceil(0.5 * med) for p in c.patch_size)
    assert c.expected_s_per_iter_cpu <= 1.0
    prev = 1.03 ** (n - 1)  # one step finer: no width fits the floor
    assert all(P.fit_patch([prev] * 3, [64 / prev] * 3, b, 1, 3, 1.0) is None for b in P.BASE_FEATURES)


def test_hand_worked_small_cases_get_the_whole_case_and_a_larger_batch(monkeypatch):
    # 0.001 s/GFLOP + 0.1 s: median 16^3 at 1 mm; width 32 fits the whole case (16^3, 2 poolings):
    # 4.60 GFLOP/sample -> batch floor(0.9 / 0.0046) = 195, capped at 5 % of 1000 cases x 16^3 / 16^3 = 50
    _constants(monkeypatch, 0.001, 0.1)
    c = P.plan_cpu_configuration("3d_fullres", [1.0, 1.0, 1.0], [16, 16, 16], 1000 * 16.0 ** 3, 3, [], "x", True)
    assert c.patch_size == [16, 16, 16] and c.topology.features_per_stage == [32, 64, 128]
    assert c.batch_size == 50
    assert c.expected_s_per_iter_cpu == pytest.approx(0.001 * c.train_gflop_per_iter + 0.1, abs=1e-3)


def test_cpu_target_keeps_every_configuration_and_states_its_time(monkeypatch):
    # a LiTS-like fingerprint (0.77 mm in-plane, 1 mm slices, 482x512x512): the GPU planner makes 2d, 3d_fullres,
    # 3d_lowres and the cascade; the CPU rule keeps all four, each predicted at <= 1 s, fullres on a coarser grid
    # than the median spacing and the cascade on fullres' grid and data
    _constants(monkeypatch, 0.0130, 0.090, s_per_mvox=1.286)
    info = DatasetInfo("x", {"0": "CT"}, LABELS, 20)
    fp = _fingerprint([1.0, 0.77, 0.77], [482, 512, 512], 20)
    gpu = plan_experiment(info, fp)
    cpu = plan_experiment(info, fp, target="cpu")
    assert cpu.target == "cpu" and gpu.target == "gpu"
    assert sorted(cpu.configurations) == sorted(gpu.configurations) == ["2d", "3d_cascade_fullres", "3d_fullres", "3d_lowres"]
    for name, c in cpu.configurations.items():
        assert c.expected_s_per_iter_cpu <= 1.0 and c.batch_size >= 2, name
        assert gpu.configurations[name].expected_s_per_iter_cpu > 5 * c.expected_s_per_iter_cpu, name
    full, low, casc = (cpu.configurations[k] for k in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    assert all(f > g for f, g in zip(full.spacing_mm, gpu.configurations["3d_fullres"].spacing_mm))
    assert all(lo > f for lo, f in zip(low.spacing_mm, full.spacing_mm))
    assert casc.spacing_mm == full.spacing_mm and casc.data_identifier == full.data_identifier
    assert casc.previous_stage == "3d_lowres" and low.next_stage == "3d_cascade_fullres"
    # the context floor: half the median case along every axis
    assert all(p >= m / 2 for p, m in zip(full.patch_size, full.median_shape_vox))


def test_cpu_plans_round_trip_through_json(tmp_path, monkeypatch):
    _constants(monkeypatch, 0.0130, 0.090, s_per_mvox=1.286)
    info = DatasetInfo("x", {"0": "CT"}, LABELS, 8)
    plans = plan_experiment(info, _fingerprint([4.5, 2.6, 2.6], [52, 160, 160], 8), target="cpu")
    plans.save(tmp_path / "plans.json")
    back = type(plans).load(tmp_path / "plans.json")
    assert back == plans and back.configurations["3d_fullres"].expected_s_per_iter_cpu > 0
    assert "S_PER_GFLOP" in back.cost_model


def test_unknown_target_is_refused():
    from autoseg.errors import AutosegError
    info = DatasetInfo("x", {"0": "CT"}, LABELS, 2)
    with pytest.raises(AutosegError, match="--target tpu"):
        plan_experiment(info, _fingerprint([1.0, 1.0, 1.0], [32, 32, 32], 2), target="tpu")
