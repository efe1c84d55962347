"""Export a fold's network to ONNX: the portable part of a trained model.

What the ONNX file holds: the network alone, deep supervision off, mapping a float32 patch
batch ``image`` (B, C, *spatial) to float32 ``logits`` (B, K, *spatial) (no softmax). Axes B
and spatial are dynamic when the exporter allows it (the TorchScript exporter does for autoseg's
U-Nets); each spatial size must then still be a multiple of the network's total stride per axis,
which the plan's patch size always is. If no dynamic export succeeds, the patch size is fixed
(``network_onnx.json`` says which), and sliding-window prediction feeds exactly that size.

What stays in autoseg: reading images, preprocessing (crop, transpose, resampling,
normalisation), the sliding window with Gaussian blending and mirroring TTA, fold ensembling,
softmax, export to the input grid and postprocessing. ``autoseg predict --model`` runs all of
them around the ONNX network, so the exported model needs autoseg but not its training code.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (TorchScript-based, no extra package) first;
if it fails, the dynamo exporter (needs ``onnxscript``) with dynamic shapes; then a fixed-size
dynamo export.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from autoseg.errors import AutosegError
from autoseg.io.json_io import atomic_path, load_dataclass, save_json

log = logging.getLogger(__name__)

ONNX_FILE = "network.onnx"
ONNX_INFO_FILE = "network_onnx.json"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
OPSET = 17


@dataclass
class OnnxInfo:
    """``network_onnx.json`` beside ``network.onnx``: how it was made and what it accepts."""

    input_name: str
    output_name: str
    num_input_channels: int
    num_classes: int
    patch_size: list[int]
    dynamic_spatial: bool  # False: only ``patch_size`` (and batch 1) are accepted
    exporter: str
    opset: int
    source_checkpoint: str
    torch_version: str


class _Logits(nn.Module):
    """The network with a single full-resolution logits tensor as output."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def _export_torchscript(net: nn.Module, example: torch.Tensor) -> bytes:
    axes = {0: "batch"} | {2 + i: f"spatial_{i}" for i in range(example.ndim - 2)}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of the TorchScript exporter and instance-norm training-mode hints
        torch.onnx.export(net, (example,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, dynamo=False)
    return buf.getvalue()


def _export_dynamo(net: nn.Module, example: torch.Tensor, dynamic: bool) -> bytes:
    shapes = None
    if dynamic:
        dims = {0: torch.export.Dim("batch")} | {2 + i: torch.export.Dim(f"spatial_{i}") for i in range(example.ndim - 2)}
        shapes = (dims,)
    program = torch.onnx.export(net, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=True,
                                dynamic_shapes=shapes, verbose=False)
    return program.model_proto.SerializeToString()


def export_network(net: nn.Module, num_input_channels: int, patch_size: Sequence[int]) -> tuple[bytes, str, bool]:
    """ONNX bytes of ``net`` (eval, CPU, float32) for (B, C, *patch) input; also the exporter used and
    whether spatial axes are dynamic. Raises AutosegError when every exporter fails."""
    net = _Logits(net).cpu().float().eval()
    if hasattr(net.net, "deep_supervision"):
        net.net.deep_supervision = False
    example = torch.zeros([1, num_input_channels] + [int(p) for p in patch_size])
    errors = []
    for name, fn in (("torchscript", lambda: _export_torchscript(net, example)),
                     ("dynamo", lambda: _export_dynamo(net, example, True)),
                     ("dynamo-static", lambda: _export_dynamo(net, example, False))):
        try:
            with torch.no_grad():
                return fn(), name.split("-")[0], not name.endswith("static")
        except Exception as e:  # try the next exporter; report all if none works
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            log.debug("ONNX export with %s failed", name, exc_info=e)
    raise AutosegError("cannot export the network to ONNX (" + "; ".join(errors) + "); the exporter needs the onnx "
                       "package (pip install onnx, or the 'onnx' extra), or use --runtime torch / export_model --format torch")


def write_onnx(net: nn.Module, num_input_channels: int, num_classes: int, patch_size: Sequence[int], folder: Path,
               source_checkpoint: str = "") -> Path:
    """Write ``folder/network.onnx`` and ``folder/network_onnx.json``; returns the ONNX path."""
    data, exporter, dynamic = export_network(net, num_input_channels, patch_size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / ONNX_FILE, ".onnx") as tmp:
        Path(tmp).write_bytes(data)
    info = OnnxInfo(INPUT_NAME, OUTPUT_NAME, int(num_input_channels), int(num_classes), [int(p) for p in patch_size], dynamic,
                    exporter, OPSET, source_checkpoint, torch.__version__)
    save_json(asdict(info), folder / ONNX_INFO_FILE)
    return folder / ONNX_FILE


def load_onnx_info(onnx_path: Path) -> OnnxInfo | None:
    p = Path(onnx_path).with_name(ONNX_INFO_FILE)
    return load_dataclass(OnnxInfo, p) if p.is_file() else None
