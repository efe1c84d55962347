"""Prediction wall time and peak memory: autoseg vs nnU-Net v2, same plan-sized network, TTA on, same step.

nnU-Net v2 is a *reference only*, run from its throwaway venv (benchmarks/nnunet_venv.md).
Usage, from the repo root::

    python benchmarks/predict_vs_nnunet.py [--nnunet-venv /work/nnunet_venv] [--step 0.5] [-np 1] \
        [--large-slices 300 --large-spacing 1.5 0.8 0.8] [--repeats 1] [--workdir /tmp/autoseg_bench_train]

It shares its work folder and preparation with ``benchmarks/train_vs_nnunet.py``: one synthetic
dataset (medium preset, 20 training + 3 test cases), both tools planned with the same small
memory target (``--gpu-memory 0.6``: patch 32x64x64, a 5-stage 32..320 U-Net) and checked to
agree on patch, spacing and topology. Each tool needs a fold-0 ``checkpoint_final.pth``; when
``train_vs_nnunet.py`` left none, one epoch of one iteration is trained (prediction cost does not
depend on the weights' values, only on the network's size, which is the same).

Two inputs are predicted by each tool, in a fresh process tree with the output folder deleted:

* ``small``: the first ``--small-cases`` (default 1) of the dataset's held-out test cases
  (about 96 x 192 x 192 voxels each);
* ``large``: one synthetic abdominal CT of 512 x 512 x ``--large-slices`` voxels at
  ``--large-spacing`` (z y x, mm), flipped direction and non-zero origin.

Commands: ``nnUNetv2_predict -i IN -o OUT -d 3 -c 3d_fullres -p nnUNetPlans_cpu -f 0
-chk checkpoint_final.pth -device cpu -step_size S -npp NP -nps NP`` (mirroring TTA on by
default) and ``python -m autoseg predict -i IN -o OUT -d 3 -c 3d_fullres -f 0 --device cpu
--step S -np NP --no-postprocessing`` (mirroring TTA on by default; postprocessing off because
nnU-Net's predict does not apply any). Measured with :func:`benchmarks._measure.measure`: wall
time and peak summed RSS / PSS of the process tree. Prints a row per run, the ratios
autoseg / nnU-Net (target <= 0.5 for both), and checks that every output mask has the input's
exact size, spacing, origin and direction. Exit status 1 when a tool fails or a geometry differs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_vs_nnunet import PLANS_NAME, TOOLS, TRAINER, Bench, compare_plans, prepare, train  # noqa: E402


def ensure_checkpoints(b: Bench) -> None:
    """Train one epoch of one iteration for a tool that has no fold-0 final checkpoint yet."""
    for tool, fold in (("nnU-Net", b.nn_fold), ("autoseg", b.as_fold)):
        if (fold / "checkpoint_final.pth").is_file():
            print(f"  {tool:<8} uses {fold / 'checkpoint_final.pth'}")
            continue
        train(b, tool, 1, 1, 1, 1, "predict_ckpt")
        print(f"  {tool:<8} trained 1 epoch x 1 iteration for a checkpoint")


def make_large_case(folder: Path, slices: int, spacing_zyx: tuple[float, float, float], seed: int) -> Path:
    """One 512 x 512 x ``slices`` synthetic CT as ``folder/large_0000.nii.gz`` (written once)."""
    from autoseg.datasets.synthetic import make_case
    from autoseg.io.images import write_image

    path = folder / "large_0000.nii.gz"
    stamp = folder / f".made_{slices}_{'_'.join(map(str, spacing_zyx))}_{seed}"
    if path.is_file() and stamp.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    img, _, geom = make_case((slices, 512, 512), spacing_zyx, np.random.default_rng(seed), flip_direction=True,
                             origin_xyz=(-180.0, -200.0, 40.0))
    write_image(img, geom, path)
    stamp.touch()
    return folder


def small_input(images: Path, folder: Path, n: int) -> Path:
    """``folder`` with the first ``n`` held-out test images (copied once)."""
    files = sorted(images.glob("*_0000.nii.gz"))[:n]
    if sorted(p.name for p in folder.glob("*_0000.nii.gz")) != [p.name for p in files]:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, folder / f.name)
    return folder


def predict(b: Bench, tool: str, inp: Path, out: Path, step: float, np_: int, tag: str):
    shutil.rmtree(out, ignore_errors=True)
    if tool == "nnU-Net":
        cmd = [str(b.bindir / "nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", "3", "-c", "3d_fullres",
               "-p", PLANS_NAME, "-tr", TRAINER, "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu",
               "-step_size", str(step), "-npp", str(np_), "-nps", str(np_)]
    else:
        cmd = b.autoseg_cmd("predict", "-i", str(inp), "-o", str(out), "-d", "3", "-c", "3d_fullres", "-f", "0",
                            "--device", "cpu", "--step", str(step), "--export-threads", str(np_), "--no-postprocessing")
    return b.run(tool, cmd, f"predict_{tag}.txt")


def check_geometry(inp: Path, out: Path) -> list[str]:
    """Names of cases whose output mask differs from the input in size, spacing, origin or direction."""
    import SimpleITK as sitk

    bad = []
    for image in sorted(inp.glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        mask = out / f"{case}.nii.gz"
        if not mask.is_file():
            bad.append(f"{case} (missing)")
            continue
        a, m = sitk.ImageFileReader(), sitk.ImageFileReader()
        a.SetFileName(str(image))
        m.SetFileName(str(mask))
        a.ReadImageInformation()
        m.ReadImageInformation()
        same = (a.GetSize() == m.GetSize() and np.allclose(a.GetSpacing(), m.GetSpacing(), atol=1e-5)
                and np.allclose(a.GetOrigin(), m.GetOrigin(), atol=1e-4) and np.allclose(a.GetDirection(), m.GetDirection(), atol=1e-6))
        if not same:
            bad.append(case)
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nnunet-venv", type=Path, default=Path("/work/nnunet_venv"), help="nnU-Net v2 venv folder")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/autoseg_bench_train"), help="shared with train_vs_nnunet.py")
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--test-cases", type=int, default=3)
    p.add_argument("--size", default="medium", choices=["tiny", "small", "medium", "large"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-memory", type=float, default=0.6)
    p.add_argument("--step", type=float, default=0.5, help="sliding-window step of both tools (default 0.5)")
    p.add_argument("-np", dest="np_", type=int, default=1, help="preprocessing/export workers of both tools (default 1)")
    p.add_argument("--large-slices", type=int, default=300, help="slices of the 512 x 512 case (0: skip it)")
    p.add_argument("--large-spacing", type=float, nargs=3, default=[1.5, 0.8, 0.8], metavar=("Z", "Y", "X"))
    p.add_argument("--small-cases", type=int, default=1, help="how many of the held-out test cases form 'small' (default 1)")
    p.add_argument("--inputs", nargs="+", default=["small", "large"], choices=["small", "large"])
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    b = Bench(a.workdir.resolve(), a.nnunet_venv.resolve())
    t0 = time.perf_counter()
    prepare(b, a)
    compare_plans(b)
    ensure_checkpoints(b)
    inputs = {"small": small_input(b.raw / "imagesTs", b.workdir / f"predict_small_{a.small_cases}", a.small_cases)}
    if "large" in a.inputs and a.large_slices > 0:
        inputs["large"] = make_large_case(b.workdir / "predict_large", a.large_slices, tuple(a.large_spacing), a.seed)
    inputs = {k: v for k, v in inputs.items() if k in a.inputs}
    print(f"{os.cpu_count()} CPUs; step {a.step}, mirroring TTA on, -np {a.np_}")
    rows: dict[tuple[str, str], list] = {}
    failed = False
    for rep in range(a.repeats):
        for name, inp in inputs.items():
            for tool in TOOLS:
                out = b.workdir / f"predict_{name}_{'nnunet' if tool == 'nnU-Net' else 'autoseg'}"
                load0 = os.getloadavg()[0]
                m = predict(b, tool, inp, out, a.step, a.np_, f"{name}_{tool}_r{rep}")
                bad = check_geometry(inp, out)
                failed |= bool(bad)
                rows.setdefault((name, tool), []).append(m)
                print(f"  {name:<5} {tool:<8} run {rep + 1}: wall {m.wall_s:7.1f} s, peak RSS {m.peak_rss_mb:7.0f} MB, "
                      f"peak PSS {m.peak_pss_mb:7.0f} MB, CPU {b.last_cpu_s:7.0f} s, load {load0:.1f} -> "
                      f"{os.getloadavg()[0]:.1f}" + (f"  GEOMETRY DIFFERS: {bad}" if bad else ""), flush=True)
    print(f"\n{'input':<6} {'tool':<9} {'wall s':>8} {'peak RSS MB':>12} {'peak PSS MB':>12} {'time ratio':>11} {'RSS ratio':>10}")
    for name in inputs:
        med = {t: (statistics.median(m.wall_s for m in rows[(name, t)]),
                   statistics.median(m.peak_rss_mb for m in rows[(name, t)]),
                   statistics.median(m.peak_pss_mb for m in rows[(name, t)])) for t in TOOLS}
        for t in TOOLS:
            w, r, s = med[t]
            ratios = (f"{w / med['nnU-Net'][0]:11.2f} {r / med['nnU-Net'][1]:10.2f}" if t == "autoseg" else "")
            print(f"{name:<6} {t:<9} {w:8.1f} {r:12.0f} {s:12.0f} {ratios}")
    print("(ratios = autoseg / nnU-Net, medians over repeats; target <= 0.5 for time and peak RSS)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
