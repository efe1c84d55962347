"""Mixed precision (--amp): the dtype each device gets, bf16 sliding window close to float32, bf16 training step."""

import pytest
import torch
from torch import nn

from autoseg.cli import main
from autoseg.inference.sliding_window import SlidingWindowSettings, predict_sliding_window
from autoseg.networks.precision import amp_dtype, autocast, cpu_has_native_bf16

from conftest import write_blob_dataset


def test_amp_dtype_per_device_and_mode():
    assert amp_dtype("cpu", "off") is None and amp_dtype("cpu", False) is None
    assert amp_dtype("cpu", "on") is torch.bfloat16 and amp_dtype("cpu", True) is torch.bfloat16
    assert amp_dtype("cpu", "auto") is (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert amp_dtype("mps", "on") is None
    with pytest.raises(ValueError, match="amp mode"):
        amp_dtype("cpu", "fast")
    with autocast("cpu", torch.bfloat16):
        assert nn.Linear(4, 4)(torch.ones(1, 4)).dtype is torch.bfloat16
    with autocast("cpu", None):
        assert nn.Linear(4, 4)(torch.ones(1, 4)).dtype is torch.float32


def test_bf16_sliding_window_is_close_to_float32():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(8, 3, 3, padding=1)).eval()
    data = torch.randn(1, 12, 20, 20).numpy()
    settings = dict(patch_size=[8, 16, 16], step=0.5, mirror=True)
    fp32 = predict_sliding_window([net], data, 3, SlidingWindowSettings(**settings, amp="off"))
    bf16 = predict_sliding_window([net], data, 3, SlidingWindowSettings(**settings, amp="on"))
    assert bf16.dtype == fp32.dtype and bf16.shape == fp32.shape
    diff = (bf16.float() - fp32.float()).abs()
    assert 0 < diff.max() < 0.05  # bf16 really ran, and stays within a few percent of float32
    agree = (bf16.argmax(0) == fp32.argmax(0)).float().mean()
    assert agree > 0.97


def test_bf16_training_keeps_float32_weights(autoseg_env):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=4)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "-np", "1"]) == 0
    assert main(["train", "-f", "0", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0",
                 "--no-validation", "--amp", "on"]) == 0
    fold = autoseg_env["res"] / "Dataset003_Liver" / "3d_fullres" / "fold_0"
    ck = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    floats = [v for v in ck["network"].values() if v.is_floating_point()]
    assert floats and all(v.dtype is torch.float32 and torch.isfinite(v).all() for v in floats)
    assert (fold / "training.json").read_text().count('"amp": "on"') == 1
