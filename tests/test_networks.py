"""Networks: shapes, deep supervision, backward, init and topology checks on tiny 2D/3D topologies."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoseg.errors import AutosegError
from autoseg.networks import NETWORKS, build_network, count_parameters
from autoseg.networks.blocks import BasicResidualBlock
from autoseg.networks.resenc import blocks_per_stage
from autoseg.networks.vnet import VNet, encoder_convs, vnet_kernel
from autoseg.planners.plans import NetworkTopology

KINDS = sorted(NETWORKS)


def topo_2d() -> NetworkTopology:
    return NetworkTopology(3, [4, 8, 16], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]], [2, 2, 2], [2, 2])


def topo_3d_aniso() -> NetworkTopology:
    # kernel 1 and stride 1 along z in the first stages (thick slices), isotropic at the bottom.
    return NetworkTopology(
        4,
        [4, 8, 16, 16],
        [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
        [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]],
        [2, 2, 2, 2],
        [2, 2, 2],
    )


def topo_3d_iso() -> NetworkTopology:
    return NetworkTopology(3, [4, 8, 8], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [1, 1, 1], [1, 1])


# (topology, input spatial size, expected spatial sizes of the DS outputs, highest resolution first)
CASES = {
    "2d": (topo_2d, (16, 24), [(16, 24), (8, 12)]),
    "3d_aniso": (topo_3d_aniso, (4, 16, 16), [(4, 16, 16), (4, 8, 8), (4, 4, 4)]),
    "3d_iso": (topo_3d_iso, (8, 8, 12), [(8, 8, 12), (4, 4, 6)]),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_shapes_deep_supervision_and_backward(kind: str, case: str) -> None:
    make_topo, spatial, expected = CASES[case]
    torch.manual_seed(0)
    net = build_network(kind, make_topo(), in_channels=2, num_classes=3)
    x = torch.randn(2, 2, *spatial)
    outs = net(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(2, 3, *s) for s in expected]
    loss = sum(o.square().mean() for o in outs)
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_deep_supervision_off_returns_full_res_tensor_equal_to_first_output(kind: str) -> None:
    make_topo, spatial, _ = CASES["3d_aniso"]
    torch.manual_seed(1)
    net = build_network(kind, make_topo(), in_channels=1, num_classes=2).eval()
    x = torch.randn(1, 1, *spatial)
    with torch.no_grad():
        ds = net(x)
        net.deep_supervision = False
        single = net(x)
    assert isinstance(single, torch.Tensor)
    assert single.shape == (1, 2, *spatial)
    torch.testing.assert_close(single, ds[0])


def test_constructor_flag_deep_supervision_false() -> None:
    net = build_network("unet", topo_2d(), 1, 2, deep_supervision=False)
    out = net(torch.randn(1, 1, 8, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 8, 8)


def test_unknown_kind_and_bad_topology_raise() -> None:
    with pytest.raises(AutosegError, match="unknown network 'swin'.*resenc"):
        build_network("swin", topo_2d(), 1, 2)
    bad = topo_2d()
    bad.strides[0] = [2, 2]
    with pytest.raises(AutosegError, match="strides\\[0\\]"):
        build_network("unet", bad, 1, 2)
    short = topo_2d()
    short.features_per_stage = [4, 8]
    with pytest.raises(AutosegError, match="features_per_stage has 2 entries"):
        build_network("vnet", short, 1, 2)


def test_input_not_divisible_raises() -> None:
    net = build_network("unet", topo_3d_aniso(), 1, 2)
    with pytest.raises(ValueError, match="divisible by \\[2, 8, 8\\]"):
        net(torch.randn(1, 1, 4, 12, 16))


def test_count_parameters_matches_hand_count() -> None:
    # 2 stages, 2D: conv 1->4 (36+4) + IN (8); conv 4->8 (288+8) + IN (16);
    # transposed 8->4 k2 (128+4); conv 8->4 (288+4) + IN (8); head 4->2 1x1 (8+2).
    topo = NetworkTopology(2, [4, 8], [[3, 3], [3, 3]], [[1, 1], [2, 2]], [1, 1], [1])
    net = build_network("unet", topo, 1, 2)
    assert count_parameters(net) == 48 + 312 + 132 + 300 + 10
    assert count_parameters(nn.Conv2d(1, 2, 3)) == 20


def test_he_init_and_zero_bias() -> None:
    topo = NetworkTopology(2, [32, 64], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [2, 2], [2])
    torch.manual_seed(0)
    net = build_network("unet", topo, 1, 2)
    c = net.encoder[1][1].conv  # 64 -> 64, 3x3x3: fan_in 1728, 110592 weights
    expected_std = math.sqrt(2.0 / (1 + 1e-4)) / math.sqrt(64 * 27)
    assert abs(c.weight.std().item() / expected_std - 1) < 0.02
    biases = [m.bias for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)


def test_plain_unet_strided_first_conv_and_decoder_kernels() -> None:
    net = build_network("unet", topo_3d_aniso(), 1, 2)
    assert net.encoder[1][0].conv.stride == (1, 2, 2)
    assert net.encoder[1][1].conv.stride == (1, 1, 1)
    assert net.encoder[0][0].conv.kernel_size == (1, 3, 3)
    # deepest decoder stage upsamples with the bottleneck's stride, convs with stage 2's kernel
    assert net.decoder.up[0].kernel_size == (2, 2, 2) and net.decoder.up[0].stride == (2, 2, 2)
    assert net.decoder.blocks[-1][0].conv.kernel_size == (1, 3, 3)


def test_resenc_blocks_per_stage() -> None:
    assert blocks_per_stage(3) == [1, 3, 4]
    assert blocks_per_stage(7) == [1, 3, 4, 6, 6, 6, 6]
    net = build_network("resenc", topo_3d_aniso(), 1, 2)
    n_blocks = [sum(isinstance(m, BasicResidualBlock) for m in stage.modules()) for stage in net.encoder]
    assert n_blocks == [1, 3, 4, 6]
    first = net.encoder[1][0]
    assert first.conv1.stride == (1, 2, 2) and isinstance(first.skip, nn.Sequential)
    assert isinstance(net.encoder[1][1].skip, nn.Identity)


def test_vnet_kernels_dropout_and_prelu() -> None:
    assert vnet_kernel([1, 3, 3]) == [1, 5, 5] and vnet_kernel([3, 3]) == [5, 5]
    assert encoder_convs(5) == [1, 2, 3, 3, 3]
    net = VNet(topo_3d_aniso(), 1, 2, dropout_p=0.3)
    kernels = [m.kernel_size for m in net.enc.modules() if isinstance(m, nn.Conv3d) and m.kernel_size != (1, 1, 1)]
    assert (1, 5, 5) in kernels and (5, 5, 5) in kernels and (3, 3, 3) not in kernels
    assert [len(stage.convs) for stage in net.enc] == [1, 2, 3, 3]
    drop_p = [getattr(d, "p", 0.0) for d in net.enc_drop]
    assert drop_p == [0.0, 0.0, 0.3, 0.3]
    assert any(isinstance(m, nn.PReLU) for m in net.modules())
    assert not any(isinstance(m, nn.LeakyReLU) for m in net.modules())
    net2d = build_network("vnet", topo_2d(), 1, 2)
    assert net2d.enc[1].convs[0][0].kernel_size == (5, 5)
    assert isinstance(net2d.enc_drop[1], nn.Dropout2d) and net2d.enc_drop[1].p == 0.5
