"""CPU runtimes for the network's forward passes: PyTorch float32, PyTorch bfloat16 autocast, ONNX Runtime, OpenVINO.

Usage, from the repo root::

    python benchmarks/cpu_runtimes.py [--patch 32 64 64] [--spacing 3.278 1.416 1.416] [--repeats 5] \
        [--case-shape 48 96 96] [--large 300 512 512 --large-spacing 1.0 0.8 0.8] [--tta-case] [--bf16-emulated] \
        [--whole-large] [--runtimes torch-fp32 torch-bf16 onnxruntime openvino]

What it measures, per runtime, in this process (threads = ``torch.get_num_threads()`` for all):

* ``load s``: building the runtime network (ONNX export in memory + session / compile);
* ``forward s``: one patch batch through the network (``--batch``, default the predictor's CPU
  batch: 2 windows, or 2 mirrored copies of one window with TTA), **per window** (the batch's
  time / batch), median of ``--repeats`` after one warm-up (min in brackets), wall and process CPU seconds;
  the runtimes take turns in each repeat, so changes of machine load hit them alike;
* ``case s``: :func:`predict_sliding_window` on a whole small preprocessed case
  (``--case-shape``, default 48 x 96 x 96 = 8 windows at step 0.5), without TTA (the faster of two
  runs: the first also pays one-off setup); with
  ``--tta-case`` also with mirroring TTA (8 passes per window);
* ``Dice``: the small case's argmax mask against PyTorch float32's (mean over foreground
  classes; the input is a synthetic CT patch, so the mask has structure);
* ``512 case s (extrapolated)``: the large CT's sliding-window time, **extrapolated** as
  windows x (passes x median forward + per-window overhead), the overhead measured by running
  the small case's sliding window with a network that returns zeros;
  windows from the plan's spacing and patch (step 0.5) exactly as ``predict`` lays them out;
  ``--whole-large`` also runs it whole without TTA (a synthetic CT at the plan's spacing), to check.

The network is the plan-sized plain U-Net for ``--patch``/``--spacing`` (``make_topology``: 32
x 64 x 64 at 3.278 x 1.416 x 1.416 mm gives the 5-stage 32..320 U-Net of docs/benchmarks.md's
prediction benchmark), with seeded random weights: forward time depends on the network's
shape, not on its weights' values; Dice between runtimes on random weights checks numerics.

With ``--model RESULTS/DatasetXXX -c CONF`` the network is a trained fold's (``--fold``), the
plan's patch and spacing are used, the small case is a preprocessed case of that dataset (cropped
to ``--case-shape`` around its centre) and Dice is against PyTorch float32's mask there: with
trained weights the Dice says whether a runtime keeps the masks, which random weights
(near-tied logits) cannot.

PyTorch bfloat16 (``predict --amp auto`` on CPUs with avx512_bf16/AMX) is skipped on a CPU
without native bf16 (it is emulated there and takes minutes per forward) unless
``--bf16-emulated``. OpenVINO runs at its default inference precision (bf16 on AMX CPUs, f32
elsewhere; the table says which). ``onnxruntime-int8`` / ``openvino-int8``: the ONNX export
quantised to int8 by ONNX Runtime's static post-training quantisation (QDQ, per-channel weights,
activations calibrated on ``--calibration-patches`` patches of *another* case), run by that runtime.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoseg.inference import runtimes  # noqa: E402
from autoseg.inference.sliding_window import (CPU_WINDOW_BATCH, MAX_FORWARD_VOXELS, SlidingWindowSettings,  # noqa: E402
                                             predict_sliding_window, window_grid)
from autoseg.networks.builder import build_network  # noqa: E402
from autoseg.networks.precision import cpu_has_native_bf16  # noqa: E402
from autoseg.planners.topology import make_topology  # noqa: E402

NUM_CLASSES = 3


def cpu_line() -> str:
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, ISA: {' '.join(isa)}"


def versions() -> str:
    out = [f"torch {torch.__version__}"]
    for pkg in ("onnxruntime", "openvino"):
        if importlib.util.find_spec(pkg):
            out.append(f"{pkg} {__import__(pkg).__version__}")
    return ", ".join(out)


def synthetic_input(shape_zyx, spacing_zyx, seed: int = 0) -> np.ndarray:
    """(1, Z, Y, X) float32: a synthetic abdominal CT at the plan's spacing, CT-normalised."""
    from autoseg.datasets.synthetic import make_case
    img, _, _ = make_case(tuple(shape_zyx), tuple(spacing_zyx), np.random.default_rng(seed))
    return ((np.clip(img.astype(np.float32), -200, 300) - 50.0) / 100.0)[None]


def build_runtimes(net, patch, names, bf16_emulated: bool, calibration: list[np.ndarray]):
    """[(row name, network, amp, load seconds, note)] for the runtimes requested and installed."""
    rows = []
    for name in names:
        t0 = time.perf_counter()
        note = ""
        if name == "torch-fp32":
            rows.append((name, net, "off", 0.0, ""))
            continue
        if name == "torch-bf16":
            if not cpu_has_native_bf16() and not bf16_emulated:
                print(f"  {name}: skipped (no native bf16 on this CPU: emulated, minutes per forward; --bf16-emulated runs it)")
                continue
            rows.append((name, net, "on", 0.0, "" if cpu_has_native_bf16() else "emulated bf16"))
            continue
        backend = name.split("-")[0]
        if not runtimes.is_installed(backend):
            print(f"  {name}: skipped ({backend} not installed)")
            continue
        if name.endswith("-int8"):
            if not runtimes.is_installed("onnxruntime"):
                print(f"  {name}: skipped (the int8 model is made by onnxruntime.quantization)")
                continue
            wrapped = runtimes.BACKENDS[backend](int8_onnx(net, patch, calibration))
            note = "static QDQ int8"
        else:
            wrapped = runtimes.wrap_networks([net], backend, 1, patch)[0]
        if backend == "openvino":
            note = ", ".join(x for x in (note, f"precision {openvino_precision(wrapped)}") if x)
        rows.append((name, wrapped, "off", time.perf_counter() - t0, note))
    return rows


def int8_onnx(net, patch, calibration: list[np.ndarray]) -> bytes:
    """The network's ONNX export quantised to int8 by ONNX Runtime (static, QDQ, per-channel weights)."""
    import tempfile
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from autoseg.model.onnx_export import INPUT_NAME, export_network

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {INPUT_NAME: x}
    with tempfile.TemporaryDirectory(prefix="autoseg_int8_") as d:
        src, dst = Path(d) / "f32.onnx", Path(d) / "int8.onnx"
        src.write_bytes(export_network(net, 1, patch)[0])
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
        return dst.read_bytes()


def calibration_patches(volume: np.ndarray, patch, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random (1, C, *patch) float32 patches of ``volume`` (C, Z, Y, X) for int8 calibration."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lo = [int(rng.integers(0, max(0, s - p) + 1)) for s, p in zip(volume.shape[1:], patch)]
        sl = tuple(slice(a, a + p) for a, p in zip(lo, patch))
        out.append(np.ascontiguousarray(volume[(slice(None),) + sl], dtype=np.float32)[None])
    return out


def trained_setup(args):
    """(network, topology-free patch, spacing, small case, calibration volume) from a trained fold."""
    from autoseg.model.trained import TrainedModel
    from autoseg.preprocessing.case_store import list_preprocessed_cases, load_case
    from autoseg import paths
    model = TrainedModel(Path(args.model), args.configuration, [args.fold])
    net = model.load_networks("cpu")[0].eval()
    folder = paths.preprocessed_dataset_dir(Path(args.model).name) / model.config.data_identifier
    cases = list_preprocessed_cases(folder)
    if len(cases) < 2:
        raise SystemExit(f"{folder}: needs two preprocessed cases (one to measure, one to calibrate int8)")
    data = np.asarray(load_case(folder, cases[0])[0], dtype=np.float32)
    lo = [max(0, (s - c) // 2) for s, c in zip(data.shape[1:], args.case_shape)]
    data = np.ascontiguousarray(data[(slice(None),) + tuple(slice(a, a + c) for a, c in zip(lo, args.case_shape))])
    calib = np.asarray(load_case(folder, cases[1])[0], dtype=np.float32)
    print(f"trained network: {args.model} {args.configuration} fold {args.fold}; case {cases[0]} {list(data.shape[1:])}, "
          f"int8 calibration on {cases[1]}")
    return net, list(model.patch_size), list(model.config.spacing_mm), data, calib, model.num_classes


def openvino_precision(wrapped) -> str:
    """OpenVINO's default inference precision on this CPU (what ``openvino_network`` runs at)."""
    import openvino as ov
    value = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class NullNetwork(torch.nn.Module):
    """Zeros of the logits' shape: times the sliding window's own work (windows, blending, accumulation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((x.shape[0], NUM_CLASSES) + tuple(x.shape[2:]))


def time_forwards(rows, x: torch.Tensor, repeats: int) -> dict[str, tuple[float, float, float]]:
    """{name: (median wall s, min wall s, median CPU s)} of one forward; runtimes interleaved per repeat,
    so a change of machine load hits all of them alike."""
    from autoseg.networks.precision import amp_dtype, autocast
    wall: dict[str, list[float]] = {r[0]: [] for r in rows}
    cpu: dict[str, list[float]] = {r[0]: [] for r in rows}
    with torch.inference_mode():
        for rep in range(repeats + 1):
            for name, net, amp, _, _ in rows:
                with autocast("cpu", amp_dtype("cpu", amp)):
                    t, c = time.perf_counter(), time.process_time()
                    net(x)
                    if rep:  # repeat 0 is the warm-up (allocations, first-run setup)
                        wall[name].append(time.perf_counter() - t)
                        cpu[name].append(time.process_time() - c)
    return {n: (statistics.median(wall[n]), min(wall[n]), statistics.median(cpu[n])) for n in wall}


def time_case(net, data: np.ndarray, patch, amp: str, mirror: bool) -> tuple[float, np.ndarray]:
    pairs = not mirror and int(np.prod(patch)) * CPU_WINDOW_BATCH <= MAX_FORWARD_VOXELS  # predict's rule (Predictor.window_batch)
    settings = SlidingWindowSettings(patch_size=patch, step=0.5, mirror=mirror, device="cpu", amp=amp,
                                     batch_size=CPU_WINDOW_BATCH if pairs else 1)
    t = time.perf_counter()
    probs = predict_sliding_window([net], data, NUM_CLASSES, settings)
    return time.perf_counter() - t, probs.argmax(0).numpy()


def dice_mean(a: np.ndarray, b: np.ndarray) -> float:
    out = []
    for k in range(1, NUM_CLASSES):
        fa, fb = a == k, b == k
        s = fa.sum() + fb.sum()
        out.append(1.0 if s == 0 else 2.0 * (fa & fb).sum() / s)
    return float(np.mean(out))


def large_windows(args) -> tuple[list[int], int]:
    shape = [int(round(n * s / t)) for n, s, t in zip(args.large, args.large_spacing, args.spacing)]
    return shape, len(window_grid(shape, args.patch, 0.5)[1])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    p.add_argument("--spacing", type=float, nargs=3, default=[3.278, 1.416, 1.416], help="plan spacing z y x (mm)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--case-shape", type=int, nargs=3, default=[48, 96, 96], help="small preprocessed case z y x")
    p.add_argument("--large", type=int, nargs=3, default=[300, 512, 512], help="large CT z y x (voxels)")
    p.add_argument("--large-spacing", type=float, nargs=3, default=[1.0, 0.8, 0.8])
    p.add_argument("--runtimes", nargs="+", default=["torch-fp32", "torch-bf16", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8"])
    p.add_argument("--tta-case", action="store_true", help="also run the small case with mirroring TTA (8x the time)")
    p.add_argument("--bf16-emulated", action="store_true", help="measure torch bf16 even without native bf16")
    p.add_argument("--whole-large", action="store_true",
                   help="also run the large CT's whole sliding window (no TTA) for each runtime: measured, not extrapolated")
    p.add_argument("--batch", type=int, default=CPU_WINDOW_BATCH, help="patches per timed forward (default: predict's CPU batch)")
    p.add_argument("--model", help="results/DatasetXXX folder: time its trained network (-c, --fold) on its own cases")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--fold", default="0")
    p.add_argument("--calibration-patches", type=int, default=16, help="int8: calibration patches (from another case)")
    return p.parse_args()


def print_table(rows: list[dict]) -> None:
    """One row per runtime; the last column against torch fp32 (else the first runtime)."""
    base = next((r for r in rows if r["name"] == "torch-fp32"), rows[0])
    print(f"\nload average at end: {os.getloadavg()}\n")
    print("| runtime | load s | forward s per window: median (min) | forward CPU s per window | small case s, no TTA | small case s, TTA | "
          "Dice vs torch fp32 | 512 case s, no TTA (extrapolated) | 512 case s, TTA (extrapolated) | vs torch fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = r["name"] + (f" ({r['note']})" if r["note"] else "")
        tta = f"{r['tta']:.1f}" if r["tta"] == r["tta"] else "-"
        print(f"| {label} | {r['load']:.1f} | {r['fwd']:.3f} ({r['fwd_min']:.3f}) | {r['fwd_cpu']:.2f} | {r['case']:.1f} | {tta} | "
              f"{r['dice']:.4f} | {r['large']:.0f} | {r['large_tta']:.0f} | {r['large_tta'] / base['large_tta']:.2f} |")


def main() -> int:
    args = parse_args()
    print(f"CPU: {cpu_line()}\n{versions()}\nload average at start: {os.getloadavg()}")
    if args.model:
        net, patch, args.spacing, data, calib_volume, k = trained_setup(args)
        if k != NUM_CLASSES:
            raise SystemExit(f"--model: {k} classes; this benchmark's Dice and null network assume {NUM_CLASSES}")
        args.patch = patch
    else:
        topo, patch, _ = make_topology(args.spacing, args.patch)
        torch.manual_seed(0)
        net = build_network("unet", topo, 1, NUM_CLASSES, deep_supervision=False).eval()
        print(f"network: plain U-Net {topo.features_per_stage}, patch {patch}, random weights (seed 0)")
        data = synthetic_input(args.case_shape, args.spacing)
        calib_volume = synthetic_input(args.case_shape, args.spacing, seed=2)
    x = torch.from_numpy(data[:, :patch[0], :patch[1], :patch[2]].copy())[None].repeat(args.batch, 1, 1, 1, 1)
    n_small = len(window_grid(list(data.shape[1:]), patch, 0.5)[1])
    large_shape, n_large = large_windows(args)
    print(f"small case {list(data.shape[1:])}: {n_small} windows; large CT {args.large} at {args.large_spacing} mm -> "
          f"{large_shape} at the plan spacing: {n_large} windows; forwards timed at batch {args.batch}, shown per window")
    calibration = calibration_patches(calib_volume, patch, args.calibration_patches) \
        if any(n.endswith("-int8") for n in args.runtimes) else []

    built = build_runtimes(net, patch, args.runtimes, args.bf16_emulated, calibration)
    overhead = time_case(NullNetwork(), data, patch, "off", mirror=False)[0] / n_small
    print(f"sliding-window overhead without a network: {overhead:.3f} s per window")
    forwards = {n: tuple(v / args.batch for v in t) for n, t in time_forwards(built, x, args.repeats).items()}
    rows, reference = [], None
    for name, runner, amp, load_s, note in built:
        fwd, fwd_min, fwd_cpu = forwards[name]
        (t1, mask), (t2, _) = (time_case(runner, data, patch, amp, mirror=False) for _ in range(2))
        case_s = min(t1, t2)  # the first call also pays one-off setup (e.g. oneDNN kernels for a last, smaller batch)
        reference = mask if reference is None else reference
        tta_s = time_case(runner, data, patch, amp, mirror=True)[0] if args.tta_case else float("nan")
        rows.append(dict(name=name, note=note, load=load_s, fwd=fwd, fwd_min=fwd_min, fwd_cpu=fwd_cpu, case=case_s, tta=tta_s,
                         dice=dice_mean(mask, reference), large=n_large * (fwd + overhead),
                         large_tta=n_large * (8 * fwd + overhead)))
        print(f"  {name}: forward {fwd:.3f} s (min {fwd_min:.3f}, CPU {fwd_cpu:.3f}), small case {case_s:.1f} s"
              f"{f', with TTA {tta_s:.1f} s' if args.tta_case else ''}, Dice {rows[-1]['dice']:.4f}", flush=True)
    if args.whole_large:
        large = synthetic_input(large_shape, args.spacing, seed=1)
        for r, (name, runner, amp, _, _) in zip(rows, built):
            t = time_case(runner, large, patch, amp, mirror=False)[0]
            print(f"  {name}: whole 512 case {large_shape}, no TTA: {t:.0f} s measured vs {r['large']:.0f} s extrapolated",
                  flush=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
