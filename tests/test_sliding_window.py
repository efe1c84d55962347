"""Sliding window: window positions, Gaussian blending, mirroring TTA, fold ensembles, uncertainty hook."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from autoseg.errors import AutosegError
from autoseg.inference.sliding_window import (
    SlidingWindowSettings,
    accumulator_dtype,
    gaussian_1d,
    gaussian_importance_map,
    mirror_combinations,
    predict_sliding_window,
    window_grid,
    window_starts,
)
from autoseg.inference.uncertainty import UncertaintyCollector, entropy_map, summarize


class MeanLogit(nn.Module):
    """Logits constant over the window: (mean of the input, 0, -mean); never mirror-symmetric in location."""

    def __init__(self, dim: int = 3):
        super().__init__()
        self.dim = dim
        self.deep_supervision = True

    def forward(self, x):
        m = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        out = torch.cat([m, torch.zeros_like(m), -m], 1).expand(-1, -1, *x.shape[2:])
        return [out, out[..., ::2]] if self.deep_supervision else out


class ConstantLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits.reshape(1, -1, *[1] * (x.ndim - 2)).expand(x.shape[0], -1, *x.shape[2:])


def fp32_settings(*args, **kw) -> SlidingWindowSettings:
    """Float32 settings: these tests check the blending arithmetic exactly (test_precision covers bf16)."""
    return SlidingWindowSettings(*args, amp="off", **kw)


def test_window_starts_hand_values():
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(11, 4, 0.5) == [0, 2, 4, 5, 7]  # spacing 1.75 rounded, last flush with the end
    assert window_starts(4, 4, 0.5) == [0]
    assert window_starts(3, 4, 0.5) == [0]  # smaller than the patch: padded by the caller
    assert window_starts(5, 1, 0.5) == [0, 1, 2, 3, 4]  # 2D slice axis: no duplicates
    assert window_starts(10, 4, 1.0) == [0, 3, 6]
    with pytest.raises(AutosegError):
        window_starts(10, 4, 0)


@pytest.mark.parametrize("shape,patch,step", [((20, 33, 40), (16, 16, 16), 0.5), ((7, 9, 30), (4, 9, 8), 0.3), ((1, 5, 5), (1, 4, 4), 1.0)])
def test_windows_cover_every_voxel(shape, patch, step):
    starts, windows = window_grid(shape, patch, step)
    covered = np.zeros(shape, int)
    for w in windows:
        covered[w] += 1
        assert all(s.stop <= n for s, n in zip(w, shape))
    assert covered.min() >= 1
    assert len(windows) == math.prod(len(s) for s in starts)


def test_gaussian_matches_formula():
    g = gaussian_1d(8)
    x = np.arange(8) - 3.5
    expected = np.exp(-0.5 * x**2) / np.exp(-0.5 * 0.5**2)  # sigma = 8 / 8 = 1, maximum 1
    np.testing.assert_allclose(g, expected, rtol=1e-12)
    m = gaussian_importance_map([4, 8, 6])
    assert m.shape == (4, 8, 6) and m.max() == pytest.approx(1.0) and m.min() > 0
    np.testing.assert_allclose(m[1, 3], gaussian_1d(4)[1] * gaussian_1d(8)[3] * gaussian_1d(6), rtol=1e-12)
    np.testing.assert_allclose(m, m[::-1, ::-1, ::-1])  # symmetric: flipped windows weigh the same


def test_one_patch_case_is_the_network_output():
    x = torch.randn(1, 1, 8, 8, 8)
    net = nn.Conv3d(1, 3, 3, padding=1)
    p = predict_sliding_window([net], x[0].numpy(), 3, fp32_settings([8, 8, 8], mirror=False))
    with torch.no_grad():
        expected = torch.softmax(net(x), 1)[0]
    torch.testing.assert_close(p, expected, atol=1e-6, rtol=1e-5)


def test_blending_equals_direct_gaussian_weighting():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, 6, 12, 10)).astype(np.float32)
    patch = (4, 8, 6)
    net = MeanLogit()
    out = predict_sliding_window([net], data, 3, fp32_settings(list(patch), step=0.5, mirror=False))
    assert net.deep_supervision is True  # restored after prediction
    g = gaussian_importance_map(patch)
    num = np.zeros((3,) + data.shape[1:])
    den = np.zeros(data.shape[1:])
    _, windows = window_grid(data.shape[1:], patch, 0.5)
    assert len(windows) > 4
    for w in windows:
        m = data[(slice(None),) + w].mean()
        num[(slice(None),) + w] += g * np.array([m, 0, -m])[:, None, None, None]
        den[w] += g
    logits = num / den
    expected = np.exp(logits) / np.exp(logits).sum(0)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_small_image_is_padded_and_cropped_back():
    data = np.random.default_rng(1).normal(size=(1, 3, 5, 6)).astype(np.float32)
    net = nn.Conv3d(1, 2, 3, padding=1)
    out = predict_sliding_window([net], data, 2, fp32_settings([4, 8, 8], mirror=False))
    assert out.shape == (2, 3, 5, 6)
    padded = np.zeros((1, 1, 4, 8, 8), np.float32)
    padded[0, :, 0:3, 1:6, 1:7] = data  # symmetric padding: before = pad // 2
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(padded)), 1)[0, :, 0:3, 1:6, 1:7]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_mirror_symmetric_model_is_unchanged_by_tta():
    data = np.random.default_rng(2).normal(size=(2, 6, 10, 12)).astype(np.float32)
    net = nn.Conv3d(2, 3, 1)  # a 1x1 conv commutes with every flip
    s = dict(patch_size=[4, 8, 8], step=0.5)
    with_tta = predict_sliding_window([net], data, 3, fp32_settings(**s, mirror=True))
    without = predict_sliding_window([net], data, 3, fp32_settings(**s, mirror=False))
    torch.testing.assert_close(with_tta, without, atol=1e-6, rtol=1e-5)


def test_tta_averages_flipped_back_logits():
    assert len(mirror_combinations(3)) == 8 and mirror_combinations(2) == [(), (0,), (1,), (0, 1)]
    torch.manual_seed(0)
    net = nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 4, 4, 4)
    out = predict_sliding_window([net], x[0].numpy(), 2, fp32_settings([4, 4, 4], mirror=True))
    with torch.no_grad():
        logits = sum(torch.flip(net(torch.flip(x, [2 + a for a in c])), [2 + a for a in c]) for c in mirror_combinations(3)) / 8
        plain = torch.softmax(net(x), 1)[0]
    torch.testing.assert_close(out, torch.softmax(logits, 1)[0], atol=1e-6, rtol=1e-5)
    assert (out - plain).abs().max() > 1e-3  # a generic conv is not mirror-symmetric


def test_2d_configuration_predicts_slice_by_slice():
    data = np.random.default_rng(3).normal(size=(1, 5, 8, 8)).astype(np.float32)
    net = nn.Conv2d(1, 3, 3, padding=1)
    out = predict_sliding_window([net], data, 3, fp32_settings([8, 8], mirror=False, batch_size=3))
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(data).permute(1, 0, 2, 3)), 1).permute(1, 0, 2, 3)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_fold_ensembles_mean_of_logits_and_weighted_probabilities():
    a, b = [2.0, 0.0, -1.0], [-1.0, 1.0, 0.5]
    nets = [ConstantLogits(a), ConstantLogits(b)]
    data = np.zeros((1, 4, 4, 4), np.float32)
    mean = predict_sliding_window(nets, data, 3, fp32_settings([4, 4, 4]))
    expected_mean = torch.softmax(torch.tensor([0.5, 0.5, -0.25]), 0)
    torch.testing.assert_close(mean[:, 0, 0, 0], expected_mean)
    weighted = predict_sliding_window(nets, data, 3, fp32_settings([4, 4, 4], ensemble="weighted", weights=[3, 1]))
    expected_w = 0.75 * torch.softmax(torch.tensor(a), 0) + 0.25 * torch.softmax(torch.tensor(b), 0)
    torch.testing.assert_close(weighted[:, 2, 1, 3], expected_w)
    with pytest.raises(AutosegError):
        predict_sliding_window(nets, data, 3, fp32_settings([4, 4, 4], ensemble="weighted", weights=[1, 2, 3]))


def test_accumulator_goes_half_precision_only_when_large():
    assert accumulator_dtype(3, (600, 512, 512)) == torch.float32  # 1.9 GB as float32
    assert accumulator_dtype(3, (1200, 512, 512)) == torch.float16


def test_uncertainty_collector_variance_and_pass_volumes():
    # pass 1: background prob 0.9 everywhere; pass 2: label 2 wins with background prob ~0.1
    nets = [ConstantLogits([math.log(9), 0.0, -30.0]), ConstantLogits([0.0, -30.0, math.log(9)])]
    data = np.zeros((1, 6, 7, 9), np.float32)
    hook = UncertaintyCollector(3)
    probs = predict_sliding_window(nets, data, 3, fp32_settings([4, 4, 4], mirror=False, ensemble="weighted",
                                                                         weights=[1, 1]), hook)
    var = hook.variance[hook.valid]
    assert var.shape == (6, 7, 9)
    np.testing.assert_allclose(var.numpy(), 0.16, atol=1e-5)  # ((0.9 - 0.1) / 2)^2
    vols = hook.pass_volumes_vox.numpy()
    np.testing.assert_allclose(vols, [[0, 0, 0], [378, 0, 378]], atol=1e-6)  # 6*7*9 voxels, padding excluded
    ent = entropy_map(probs)
    p = probs[:, 0, 0, 0].double()
    assert float(ent[0, 0, 0]) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-4)
    seg = np.full((6, 7, 9), 2, np.uint8)
    s = summarize("c", seg, var.numpy(), ent.numpy(), vols, voxel_ml=0.001, label_names={1: "liver", 2: "tumor"})
    assert s.volume_variation["foreground"] == pytest.approx(1.0)  # volumes [0, V]: std / mean = 1
    assert s.volume_ml_per_pass["tumor"] == [0.0, 0.378]
    assert s.mean_variance_in_foreground == pytest.approx(0.16, abs=1e-5)
    assert math.isnan(s.volume_variation["liver"])  # never predicted


def test_progress_bar_over_windows_only_for_many_windows(capsys):
    net = ConstantLogits([0.0, 1.0])
    predict_sliding_window([net], np.zeros((1, 4, 8, 8), np.float32), 2, fp32_settings([4, 4, 4], mirror=False))
    assert "sliding window" not in capsys.readouterr().err  # 9 windows: no bar
    predict_sliding_window([net], np.zeros((1, 4, 12, 12), np.float32), 2, fp32_settings([4, 4, 4], mirror=False))
    assert "sliding window:" in capsys.readouterr().err  # 5 x 5 windows: a bar (cleared at the end)


# -- GPU out-of-memory fallback (simulated on the CPU) -------------------------------------------

class OomOnCall(nn.Module):
    """Wraps a network; raises the out-of-memory error on call number ``fail_at`` (1-based) only."""

    def __init__(self, inner: nn.Module, fail_at: int, error: type[Exception]):
        super().__init__()
        self.inner, self.fail_at, self.error, self.calls = inner, fail_at, error, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.inner(x)


@pytest.fixture(params=["torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError only (torch < 2.5)"])
def oom_error(request, monkeypatch):
    """The error a CUDA allocation raises: on the installed torch, and with ``torch.OutOfMemoryError`` patched away."""
    if request.param.startswith("torch.cuda"):
        monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)
        return torch.cuda.OutOfMemoryError
    return torch.OutOfMemoryError


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(4, 3, 1)).eval()


def test_oom_fallback_releases_the_failed_attempt_and_matches_a_cpu_run(monkeypatch, caplog, oom_error):
    import weakref

    import autoseg.inference.sliding_window as sw

    net = _conv_net()
    data = torch.randn(1, 10, 12, 12).numpy()  # 8 windows
    settings = fp32_settings(patch_size=[8, 8, 8], step=0.5, mirror=True)
    direct = predict_sliding_window([net], data, 3, settings)

    # Pretend the device is a GPU: first the accumulator "on the device", then in CPU memory.
    monkeypatch.setattr(sw, "accumulator_devices", lambda device: [device, torch.device("cpu")])
    refs: list[weakref.ref] = []
    alive_at_retry: list[bool] = []
    real_new = sw.new_accumulator

    def tracked(num_classes, shape, device):
        if refs:  # the retry: the failed attempt's accumulator must already be freed (on a GPU: before empty_cache)
            alive_at_retry.append(refs[-1]() is not None)
        acc = real_new(num_classes, shape, device)
        refs.append(weakref.ref(acc))
        return acc

    monkeypatch.setattr(sw, "new_accumulator", tracked)
    failing = OomOnCall(net, fail_at=5, error=oom_error)  # after several windows were accumulated
    with caplog.at_level("WARNING"):
        fallback = predict_sliding_window([failing], data, 3, settings)
    assert len(refs) == 2 and alive_at_retry == [False]
    assert "redoing this case with it in CPU memory" in caplog.text
    assert torch.equal(fallback, direct)


def test_oom_on_the_cpu_or_twice_is_a_clear_error(monkeypatch, oom_error):
    import autoseg.inference.sliding_window as sw

    net, data = _conv_net(), torch.randn(1, 8, 8, 8).numpy()
    settings = fp32_settings(patch_size=[8, 8, 8], mirror=False)
    with pytest.raises(AutosegError, match="out of memory while predicting on the CPU"):
        predict_sliding_window([OomOnCall(net, 1, oom_error)], data, 3, settings)

    class AlwaysOom(nn.Module):
        def forward(self, x):
            raise oom_error("CUDA out of memory (simulated)")

    monkeypatch.setattr(sw, "accumulator_devices", lambda device: [device, torch.device("cpu")])
    with pytest.raises(AutosegError, match="GPU out of memory even for one patch"):
        predict_sliding_window([AlwaysOom()], data, 3, settings)
    other = RuntimeError("not a memory problem")

    class Broken(nn.Module):
        def forward(self, x):
            raise other

    with pytest.raises(RuntimeError, match="not a memory problem"):  # other errors are not retried
        predict_sliding_window([Broken()], data, 3, settings)


class RecordingConv(nn.Module):
    """A real 3D convolution that records the batch size of every forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(int(x.shape[0]))
        return self.conv(x)


def test_mirrored_copies_share_a_forward_and_give_the_same_result(monkeypatch):
    import autoseg.inference.sliding_window as sw

    data = np.random.default_rng(0).standard_normal((1, 10, 14, 12)).astype(np.float32)
    settings = SlidingWindowSettings(patch_size=[8, 8, 8], mirror=True)
    net = RecordingConv()
    paired = predict_sliding_window([net], data, 3, settings)
    assert set(net.batches) == {2}  # 8 flips of each window in 4 forwards of two
    monkeypatch.setattr(sw, "FORWARD_BATCH", 1)
    net.batches.clear()
    alone = predict_sliding_window([net], data, 3, settings)
    assert set(net.batches) == {1}
    assert torch.allclose(paired, alone, atol=1e-5)
    monkeypatch.setattr(sw, "FORWARD_BATCH", 2)
    monkeypatch.setattr(sw, "MAX_FORWARD_VOXELS", 8 * 8 * 8)  # two windows no longer fit: one at a time
    net.batches.clear()
    predict_sliding_window([net], data, 3, settings)
    assert set(net.batches) == {1}
