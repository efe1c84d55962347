"""ONNX export of a trained model and the optional CPU runtimes: same probabilities and masks as PyTorch."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.inference import runtimes
from autoseg.model.onnx_export import export_network
from autoseg.io.images import read_image

from conftest import write_blob_dataset

DATASET = "Dataset003_Liver"
REPO = Path(__file__).resolve().parents[1]
FAST = ["--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0", "--no-validation"]


@pytest.fixture
def trained(autoseg_env, tmp_path):
    """A 3d_fullres fold 0 trained 2 iterations on blobs, and 2 images to predict."""
    write_blob_dataset(autoseg_env["raw"] / DATASET, n=4)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "-np", "1"]) == 0
    assert main(["train", "-f", "0", "--epochs", "1", *FAST]) == 0
    images = tmp_path / "images"
    images.mkdir()
    for i in (0, 1):
        shutil.copy(autoseg_env["raw"] / DATASET / "imagesTr" / f"case_00{i}_0000.nii.gz", images)
    return autoseg_env, images


def _predict(args, out, in_subprocess: bool = False):
    cmd = ["predict", *args, "-o", str(out), "--device", "cpu", "--save-probabilities", "--export-threads", "1"]
    if in_subprocess:  # OpenVINO: kept out of the test process (a later fork-based test crashed after it ran here)
        r = subprocess.run([sys.executable, "-m", "autoseg", *cmd], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    else:
        assert main(cmd) == 0
    return {c: (read_image(out / f"{c}.nii.gz", np.uint8)[0], np.load(out / f"{c}_probabilities.npz")["probabilities"])
            for c in ("case_000", "case_001")}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a > 0, b > 0
    return 1.0 if not (fa.any() or fb.any()) else 2 * (fa & fb).sum() / (fa.sum() + fb.sum())


def _same(ref: dict, other: dict, atol: float) -> None:
    for case, (mask, probs) in ref.items():
        np.testing.assert_allclose(other[case][1].astype(np.float32), probs.astype(np.float32), atol=atol)
        assert (other[case][0] == mask).mean() > 0.999 and _dice(other[case][0], mask) >= 0.99


def test_onnx_model_zip_predicts_like_torch(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    env, images = trained
    reference = _predict(["-i", str(images), "--runtime", "torch", "--amp", "off"], tmp_path / "torch")
    z = tmp_path / "model_onnx.zip"
    assert main(["export_model", "-o", str(z), "--format", "onnx"]) == 0
    names = zipfile.ZipFile(z).namelist()
    assert f"{DATASET}/3d_fullres/fold_0/network.onnx" in names and not any(n.endswith(".pth") for n in names)
    shutil.rmtree(env["res"] / DATASET)  # the zip alone must suffice, no checkpoint anywhere
    via_onnx = _predict(["--model", str(z), "-i", str(images), "--runtime", "onnxruntime"], tmp_path / "onnx")
    _same(reference, via_onnx, atol=2e-3)
    assert main(["predict", "--model", str(z), "-i", str(images), "-o", str(tmp_path / "x"), "--runtime", "torch"]) != 0
    assert "ONNX networks only" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_on_checkpoints_matches_torch(trained, tmp_path, runtime):
    if importlib.util.find_spec(runtime) is None:
        pytest.skip(f"{runtime} not installed")
    _, images = trained
    reference = _predict(["-i", str(images), "--runtime", "torch", "--amp", "off", "--no-tta"], tmp_path / "torch")
    other = _predict(["-i", str(images), "--runtime", runtime, "--no-tta"], tmp_path / runtime, runtime == "openvino")
    # OpenVINO computes in bfloat16 on CPUs with native bf16: probabilities agree to bf16 precision
    _same(reference, other, atol=2e-3 if runtime == "onnxruntime" else 3e-2)


def test_exported_network_has_dynamic_spatial_axes():
    ort = pytest.importorskip("onnxruntime")
    from autoseg.networks.builder import build_network
    from autoseg.planners.plans import NetworkTopology
    topo = NetworkTopology(n_stages=2, features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]],
                           n_conv_per_stage_encoder=[1, 1], n_conv_per_stage_decoder=[1])
    torch.manual_seed(0)
    net = build_network("unet", topo, 1, 3, deep_supervision=True).eval()
    data, exporter, dynamic = export_network(net, 1, [8, 8, 8])
    assert dynamic and exporter in ("torchscript", "dynamo")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 8, 12, 16)  # other batch and spatial sizes than exported with
    net.deep_supervision = False
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, atol=1e-4)


def test_runtime_choice_never_needs_optional_packages(monkeypatch):
    monkeypatch.setattr(runtimes, "AUTO_CPU_RUNTIMES", ("openvino", "torch"))  # the product's order (conftest pins torch)
    monkeypatch.setattr(runtimes, "is_installed", lambda r: r == "torch")
    assert runtimes.choose_runtime("auto", "cpu", onnx_model=False) == "torch"
    assert runtimes.choose_runtime("auto", "cuda", onnx_model=False) == "torch"
    with pytest.raises(AutosegError, match="pip install onnxruntime"):
        runtimes.choose_runtime("onnxruntime", "cpu", onnx_model=False)
    with pytest.raises(AutosegError, match="install a runtime"):
        runtimes.choose_runtime("auto", "cpu", onnx_model=True)
    monkeypatch.setattr(runtimes, "is_installed", lambda r: True)
    monkeypatch.setattr(runtimes, "can_export_onnx", lambda: False)
    with pytest.raises(AutosegError, match="pip install onnx"):
        runtimes.choose_runtime("onnxruntime", "cpu", onnx_model=False)
    assert runtimes.choose_runtime("onnxruntime", "cpu", onnx_model=True) == "onnxruntime"  # no export needed
    assert runtimes.choose_runtime("auto", "cpu", onnx_model=False) == "torch"  # OpenVINO needs the ONNX export
    monkeypatch.setattr(runtimes, "can_export_onnx", lambda: True)
    assert runtimes.choose_runtime("auto", "cpu", onnx_model=False) == "openvino"  # the fastest measured on a CPU
    assert runtimes.choose_runtime("auto", "cuda", onnx_model=False) == "torch"
    assert runtimes.choose_runtime("auto", "cpu", onnx_model=True) == "openvino"
    with pytest.raises(AutosegError, match="--device cpu"):
        runtimes.choose_runtime("openvino", "cuda", onnx_model=False)
    monkeypatch.setattr(runtimes, "is_installed", lambda r: r != "openvino")
    assert runtimes.choose_runtime("auto", "cpu", onnx_model=False) == "torch"
    assert runtimes.choose_runtime("auto", "cpu", onnx_model=True) == "onnxruntime"


def test_runtime_network_falls_back_to_one_sample_for_fixed_batch_models():
    from autoseg.inference.runtimes import RuntimeNetwork

    calls = []

    def run(x):
        calls.append(x.shape[0])
        if x.shape[0] != 1:
            raise RuntimeError("input batch must be 1")
        return x * 2

    net = RuntimeNetwork(run, "fixed")
    x = torch.arange(6, dtype=torch.float32).reshape(3, 1, 2)
    assert torch.equal(net(x), x * 2)
    assert calls == [3, 1, 1, 1] and net.fixed_batch
    net(x)
    assert calls[4:] == [1, 1, 1]  # refused once: never tried again
