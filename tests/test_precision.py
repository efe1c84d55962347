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


# -- CUDA choice with the capability queries patched (no GPU needed) -----------------------------

def _fake_gpu(monkeypatch, major: int, bf16_supported: bool, hip: str | None = None) -> None:
    """A visible GPU of compute capability ``major``.x whose ``is_bf16_supported()`` answers ``bf16_supported``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    monkeypatch.setattr(torch.version, "hip", hip)


@pytest.mark.parametrize("major, bf16_supported, hip, expected", [
    (9, True, None, torch.bfloat16),    # Hopper: native bf16
    (8, True, None, torch.bfloat16),    # Ampere: native bf16
    (7, True, None, torch.float16),     # Volta/Turing: newer torch says True (emulated) -> float16 + scaler
    (6, False, None, torch.float16),    # Pascal on an older torch: no bf16 at all
    (9, True, "6.0", torch.bfloat16),   # ROCm: bf16 where torch says so
])
def test_cuda_amp_dtype_native_bf16_else_float16(monkeypatch, major, bf16_supported, hip, expected):
    import autoseg.networks.precision as precision

    _fake_gpu(monkeypatch, major, bf16_supported, hip)
    assert precision.cuda_has_native_bf16() is (expected is torch.bfloat16)
    assert amp_dtype("cuda", "auto") is expected and amp_dtype("cuda", "on") is expected
    assert amp_dtype("cuda", "off") is None


@pytest.mark.filterwarnings("ignore:.*GradScaler")
def test_grad_scaler_only_for_cuda_float16(monkeypatch):
    from autoseg.networks.precision import make_grad_scaler

    assert make_grad_scaler("cuda", torch.bfloat16) is None
    assert make_grad_scaler("cuda", None) is None
    assert make_grad_scaler("cpu", torch.float16) is None
    scaler = make_grad_scaler("cuda", torch.float16)  # a disabled scaler here (no CUDA), a real one on a GPU
    assert type(scaler) is torch.amp.GradScaler
    # torch < 2.3 has no torch.amp.GradScaler: the CUDA one is used instead
    monkeypatch.delattr(torch.amp, "GradScaler")
    old = make_grad_scaler("cuda", torch.float16)
    assert isinstance(old, torch.cuda.amp.GradScaler)


def test_cudnn_benchmark_switched_on_for_cuda_only(monkeypatch):
    from autoseg.networks.precision import enable_cudnn_benchmark

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    enable_cudnn_benchmark("cpu")
    enable_cudnn_benchmark(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    enable_cudnn_benchmark("cuda")
    assert torch.backends.cudnn.benchmark is True


# -- The torch floor (pyproject: torch>=2.1) -----------------------------------------------------

# Names newer than torch 2.1 and the release that added them (as far as known). autoseg may use them only through a
# guard (getattr with a fallback), never as a plain attribute; the tests above run those guards
# with the name patched away.
NEWER_THAN_FLOOR = {
    "torch.OutOfMemoryError": "2.5",
    "torch.amp.GradScaler": "2.3",
    "torch.serialization.add_safe_globals": "2.4",
    "torch.get_default_device": "2.3",
    "torch.accelerator": "2.6",
    "torch.amp.custom_fwd": "2.4",
    "torch.nn.attention": "2.2",
    "torch.distributed.device_mesh": "2.2",
}
NEWER_KEYWORDS = {("is_bf16_supported", "including_emulation"): "> 2.1", ("init_process_group", "device_id"): "2.3"}


def _attribute_chains(tree):
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, cur = [node.attr], node.value
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                parts.append(cur.id)
                yield node, ".".join(reversed(parts))


def test_torch_floor_is_pyproject_and_no_newer_name_is_used_unguarded():
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    floor = re.search(r'"torch>=([0-9.]+)"', (root / "pyproject.toml").read_text())
    assert floor and floor.group(1) == "2.1", "update NEWER_THAN_FLOOR when the torch floor moves"
    offenders = []
    for path in sorted((root / "autoseg").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node, chain in _attribute_chains(tree):
            for name, since in NEWER_THAN_FLOOR.items():
                if chain == name or chain.startswith(name + "."):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} {chain} (torch {since})")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = getattr(node.func, "attr", getattr(node.func, "id", ""))
                for kw in node.keywords:
                    if (func, kw.arg) in NEWER_KEYWORDS:
                        offenders.append(f"{path.relative_to(root)}:{node.lineno} {func}({kw.arg}=) (torch {NEWER_KEYWORDS[func, kw.arg]})")
    assert not offenders, "names newer than the torch floor, use them through a guard:\n" + "\n".join(offenders)


@pytest.mark.filterwarnings("ignore:.*GradScaler")
def test_code_paths_run_with_the_newer_names_patched_away(monkeypatch):
    """What the floor version lacks, removed: amp choice, scaler, OOM error type still work."""
    from autoseg.inference.sliding_window import out_of_memory_error
    from autoseg.networks.precision import make_grad_scaler

    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # 2.1's signature: no including_emulation
    assert out_of_memory_error() is torch.cuda.OutOfMemoryError
    assert isinstance(make_grad_scaler("cuda", torch.float16), torch.cuda.amp.GradScaler)
    _fake_gpu(monkeypatch, 7, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype("cuda", "auto") is torch.float16
