"""The CPU cost model (FLOPs of the planned U-Net) and the ``--target cpu`` planning rule.

The planner's constants are set here to round values (``_constants``), so the hand-worked
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


def _constants(monkeypatch, s_per_gflop, overhead):
    monkeypatch.setattr(C, "S_PER_GFLOP", s_per_gflop)
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
