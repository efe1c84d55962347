"""Which engine runs the network's forward passes: ``predict --runtime {auto,torch,onnxruntime,openvino}``.

A runtime network is a callable ``nn.Module`` mapping a float32 patch batch (B, C, *spatial) on
the CPU to float32 logits (B, K, *spatial); the sliding window (blending, TTA, ensembling)
treats every runtime alike. Backends:

* ``torch``: the fold checkpoints in PyTorch (float32, or bfloat16 autocast per ``--amp``);
* ``onnxruntime``: ONNX Runtime's CPU execution provider, float32;
* ``openvino``: OpenVINO on the CPU; its default inference precision is bfloat16 on CPUs with
  AMX/avx512_bf16 and float32 elsewhere.

ONNX Runtime and OpenVINO are optional packages, imported only when chosen. For a torch model
(checkpoints) they run an ONNX export made in memory at load time (:mod:`onnx_export`); a model
exported with ``export_model --format onnx`` has no checkpoints and needs one of them.

``auto`` picks the fastest runtime measured that is installed (docs/benchmarks.md, "CPU
runtimes"): on a CPU, OpenVINO when it (and ``onnx``, for the in-memory export) is installed,
else torch; on a GPU, torch; for an ONNX model, OpenVINO, else ONNX Runtime. Prediction never
needs the optional packages. OpenVINO's thread pool does not survive ``fork()``: once it runs,
this process starts its later process pools (evaluation, preprocessing, data loading) with
"forkserver" (:func:`autoseg.io.workers.mark_fork_unsafe`).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from autoseg.errors import AutosegError
from autoseg.io.workers import mark_fork_unsafe
from autoseg.model.onnx_export import INPUT_NAME, export_network

if TYPE_CHECKING:  # only its folds, channels and patch size are used
    from autoseg.model.trained import TrainedModel

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
# docs/benchmarks.md "CPU runtimes": with predict's window pairs, OpenVINO's forward took 0.60-0.64x
# PyTorch float32's on a 2-core AVX2 CPU (masks: Dice >= 0.999 against it), ONNX Runtime
# 0.83-0.99x. int8 (static QDQ quantisation, run by OpenVINO) changed a trained network's masks
# (Dice 0.97 < 0.99), so it is not offered.
AUTO_CPU_RUNTIMES = ("openvino", "torch")  # auto's order for checkpoints on a CPU, fastest first
ONNX_RUNTIMES = ("openvino", "onnxruntime")  # auto's order for an ONNX model, fastest first
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def is_installed(runtime: str) -> bool:
    """torch always; the others when their package can be imported."""
    return runtime == "torch" or (runtime in _PACKAGES and importlib.util.find_spec(_PACKAGES[runtime]) is not None)


def can_export_onnx() -> bool:
    """The exporter needs the ``onnx`` package (checkpoints are exported in memory for non-torch runtimes)."""
    return importlib.util.find_spec("onnx") is not None


def is_onnx_model(model: "TrainedModel") -> bool:
    return any(Path(f.checkpoint).suffix == ".onnx" for f in model.folds)


def choose_runtime(requested: str, device: str, onnx_model: bool) -> str:
    """The runtime to use for ``requested`` (see module doc); AutosegError when it cannot run here."""
    if requested not in RUNTIMES:
        raise AutosegError(f"--runtime {requested}: choose one of {', '.join(RUNTIMES)}")
    if requested == "auto":
        if not onnx_model:
            return _auto_for_checkpoints(device)
        found = [r for r in ONNX_RUNTIMES if is_installed(r)]
        if not found:
            raise AutosegError("this model is ONNX (export_model --format onnx); install a runtime for it: "
                               "pip install onnxruntime (or openvino)")
        requested = found[0]
    if requested == "torch" and onnx_model:
        raise AutosegError("--runtime torch: this model holds ONNX networks only; use --runtime onnxruntime or openvino, "
                           "or export the model without --format onnx")
    if requested != "torch":
        if not is_installed(requested):
            raise AutosegError(f"--runtime {requested}: package '{_PACKAGES[requested]}' is not installed; "
                               f"pip install {_PACKAGES[requested]} or use --runtime torch")
        if device != "cpu":
            raise AutosegError(f"--runtime {requested} runs on the CPU; add --device cpu or use --runtime torch")
        if not onnx_model and not can_export_onnx():
            raise AutosegError(f"--runtime {requested}: checkpoints are exported to ONNX first, which needs the onnx "
                               f"package; pip install onnx or use --runtime torch")
    return requested


def _auto_for_checkpoints(device: str) -> str:
    """The first of :data:`AUTO_CPU_RUNTIMES` that can run here (torch always can); torch off the CPU."""
    if device != "cpu":
        return "torch"
    return next(r for r in AUTO_CPU_RUNTIMES if r == "torch" or (is_installed(r) and can_export_onnx()))


class RuntimeNetwork(nn.Module):
    """A non-torch engine behind ``nn.Module``'s call: numpy float32 in, torch float32 logits out."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], name: str):
        super().__init__()
        self._run, self.runtime = run, name
        self.fixed_batch = False  # set when a batch of several was refused (a fixed-shape export)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of batch ``x``; one sample at a time when the model was exported for batch 1 only."""
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        if arr.shape[0] > 1 and not self.fixed_batch:
            try:
                return torch.from_numpy(np.asarray(self._run(arr), dtype=np.float32))
            except Exception:  # noqa: BLE001 -- engines raise their own types for a shape they cannot take
                self.fixed_batch = True
        outs = [np.asarray(self._run(arr[i:i + 1]), dtype=np.float32) for i in range(arr.shape[0])]
        return torch.from_numpy(np.concatenate(outs))


def onnxruntime_network(onnx: bytes | str | Path, threads: int | None = None) -> RuntimeNetwork:
    """ONNX Runtime CPU session (float32, full graph optimisation) for an ONNX model (bytes or file)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx if isinstance(onnx, bytes) else str(onnx), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return RuntimeNetwork(lambda x: session.run(None, {name: x})[0], "onnxruntime")


def openvino_network(onnx: bytes | str | Path, threads: int | None = None, precision: str | None = None) -> RuntimeNetwork:
    """OpenVINO CPU compiled model; ``precision`` "f32"/"bf16" overrides its default inference precision."""
    import openvino as ov
    mark_fork_unsafe("openvino")
    core = ov.Core()
    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if isinstance(onnx, bytes):
        with tempfile.TemporaryDirectory(prefix="autoseg_ov_") as d:
            path = os.path.join(d, "network.onnx")
            Path(path).write_bytes(onnx)
            compiled = core.compile_model(core.read_model(path), "CPU", config)
    else:
        compiled = core.compile_model(core.read_model(str(onnx)), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    return RuntimeNetwork(lambda x: request.infer({INPUT_NAME: x})[output].copy(), "openvino")


BACKENDS: dict[str, Callable[[bytes | str | Path], RuntimeNetwork]] = {
    "onnxruntime": onnxruntime_network,
    "openvino": openvino_network,
}


def _backend(runtime: str, amp: str) -> Callable[[bytes | str | Path], RuntimeNetwork]:
    """The loader of ``runtime``; OpenVINO follows ``--amp``: off = f32, on = bf16, auto = its CPU default."""
    if runtime == "openvino" and amp in ("on", "off"):
        return lambda onnx: openvino_network(onnx, precision="bf16" if amp == "on" else "f32")
    return BACKENDS[runtime]


def wrap_networks(networks: Sequence[nn.Module], runtime: str, in_channels: int, patch_size: Sequence[int],
                  amp: str = "auto") -> list[nn.Module]:
    """``networks`` as they are for torch, else each exported to ONNX in memory and loaded into ``runtime``."""
    if runtime == "torch":
        return list(networks)
    load = _backend(runtime, amp)
    return [load(export_network(net, in_channels, patch_size)[0]) for net in networks]


def load_networks(model: "TrainedModel", device: str, runtime: str = "auto", amp: str = "auto") -> list[nn.Module]:
    """One network per fold of ``model`` on ``runtime`` (``auto``: see :func:`choose_runtime`)."""
    onnx_model = is_onnx_model(model)
    chosen = choose_runtime(runtime, device, onnx_model)
    if onnx_model:
        return [_backend(chosen, amp)(f.checkpoint) for f in model.folds]
    networks = model.load_networks(device)
    return wrap_networks(networks, chosen, model.num_input_channels, model.patch_size, amp)
