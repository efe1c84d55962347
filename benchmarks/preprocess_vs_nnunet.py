"""Wall time and peak memory of ``plan_and_preprocess``: autoseg vs nnU-Net v2, same data, same -np.

nnU-Net v2 is a *reference only*, run from its throwaway venv (benchmarks/nnunet_venv.md).
Usage, from the repo root::

    python benchmarks/preprocess_vs_nnunet.py --nnunet-venv /work/nnunet_venv \
        [--cases 10] [--size small|medium|large] [-np 2] [--repeats 1] [--workdir /tmp/bench_pp]

One synthetic dataset (``autoseg.datasets.synthetic``) is written once as
``<workdir>/raw/Dataset003_Liver`` and serves both tools. Then, per repeat, each tool runs in a
fresh process tree with its output folder deleted first:

* ``nnUNetv2_plan_and_preprocess -d 3 -c 3d_fullres -npfp NP -np NP`` (fingerprint, planning of
  every configuration, 3d_fullres preprocessing; no ``--verify_dataset_integrity`` unless
  ``--nnunet-verify``, so nnU-Net does *less* checking than autoseg, which always checks);
* ``python -m autoseg plan_and_preprocess -d 3 -c 3d_fullres -np NP`` (the same stages).

Measured with :func:`benchmarks._measure.measure`: wall time, peak of the summed RSS (and PSS)
over the whole process tree sampled every 50 ms. Prints one table row per run, the ratios
autoseg / nnU-Net (target <= 0.5 for time and peak RSS), then checks the results agree:

* 3d_fullres spacing and patch size of both plans;
* preprocessed array shapes of every case (nnU-Net's ``.b2nd`` files are opened with blosc2
  under the venv python);
* for one case (``--compare-case``): the difference between the two preprocessed images and the
  Dice between the two preprocessed label maps, end to end; and, to isolate the resampling, both
  tools' resampling functions applied to the *same* cropped, normalised input (max/mean absolute
  difference, label Dice, single-thread time of each).

Exit status 1 when a tool fails or the plans/shapes disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._measure import Measurement, measure  # noqa: E402

DATASET = "Dataset003_Liver"
NNUNET_PLANS_FOLDER = "nnUNetPlans_3d_fullres"
LABELS = (1, 2)

# Under the venv python. argv[1]: nnU-Net's 3d_fullres folder, argv[2]: case to dump, argv[3]: out dir.
# Prints {case: [data_shape, seg_shape]} for every case; writes <case>_data.npy / _seg.npy.
_NNUNET_READ = r"""
import json, sys, os, glob
import blosc2, numpy as np
folder, dump_case, out = sys.argv[1:4]
shapes = {}
for f in sorted(glob.glob(os.path.join(folder, "*.b2nd"))):
    if f.endswith("_seg.b2nd"):
        continue
    case = os.path.basename(f)[:-5]
    d = blosc2.open(urlpath=f, mode="r")
    s = blosc2.open(urlpath=os.path.join(folder, case + "_seg.b2nd"), mode="r")
    shapes[case] = [list(d.shape), list(s.shape)]
    if case == dump_case:
        np.save(os.path.join(out, case + "_data.npy"), d[:])
        np.save(os.path.join(out, case + "_seg.npy"), s[:])
print(json.dumps(shapes))
"""

# Under the venv python. argv[1]: JSON with in/out .npy paths, new_shape, spacing, new_spacing.
# Runs nnU-Net's default 3d_fullres resampling (data: order 3, order_z 0; seg: order 1, order_z 0,
# separate-z decided from the spacings) single-threaded and prints the times.
_NNUNET_RESAMPLE = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
a = json.load(open(sys.argv[1]))
data, seg = np.load(a["data_in"]), np.load(a["seg_in"])
t0 = time.perf_counter()
d = resample_data_or_seg_to_shape(data, a["new_shape"], a["spacing"], a["new_spacing"], is_seg=False,
                                  order=3, order_z=0, force_separate_z=None)
t1 = time.perf_counter()
s = resample_data_or_seg_to_shape(seg, a["new_shape"], a["spacing"], a["new_spacing"], is_seg=True,
                                  order=1, order_z=0, force_separate_z=None)
t2 = time.perf_counter()
np.save(a["data_out"], d.astype(np.float32)); np.save(a["seg_out"], s.astype(np.int8))
print(json.dumps({"data_s": t1 - t0, "seg_s": t2 - t1}))
"""


def nnunet_executables(venv_or_python: str) -> tuple[Path, Path]:
    """(python, nnUNetv2_plan_and_preprocess) from a venv folder or its python's path."""
    p = Path(venv_or_python)
    bindir = p / "bin" if p.is_dir() else p.parent
    python, exe = bindir / "python", bindir / "nnUNetv2_plan_and_preprocess"
    for f in (python, exe):
        if not f.exists():
            sys.exit(f"{f}: not found; pass --nnunet-venv <venv folder> (see benchmarks/nnunet_venv.md)")
    return python, exe


def prepare_dataset(workdir: Path, size: str, cases: int, seed: int) -> Path:
    """Write the synthetic raw dataset once; re-used while (size, cases, seed) are unchanged."""
    from autoseg.datasets.synthetic import generate_dataset

    raw = workdir / "raw" / DATASET
    stamp = workdir / "raw" / "bench_dataset.json"
    want = {"size": size, "cases": cases, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want and (raw / "dataset.json").is_file():
        return raw
    shutil.rmtree(raw, ignore_errors=True)
    t0 = time.perf_counter()
    generate_dataset(raw, n_train=cases, n_test=0, seed=seed, size=size)
    print(f"synthetic dataset ({size}, {cases} cases) written in {time.perf_counter() - t0:.0f} s: {raw}")
    stamp.write_text(json.dumps(want))
    return raw


def run_tool(tool: str, workdir: Path, np_: int, nnunet_exe: Path, nnunet_verify: bool, run_idx: int,
             timeout_s: float | None = None) -> Measurement:
    """One measured run of ``tool`` ('nnU-Net' or 'autoseg') with a cleared output folder."""
    env = dict(os.environ)
    raw = str(workdir / "raw")
    if tool == "nnU-Net":
        out = workdir / "nnunet_preprocessed"
        env.update(nnUNet_raw=raw, nnUNet_preprocessed=str(out), nnUNet_results=str(workdir / "nnunet_results"))
        cmd = [str(nnunet_exe), "-d", "3", "-c", "3d_fullres", "-npfp", str(np_), "-np", str(np_)]
        if nnunet_verify:
            cmd.append("--verify_dataset_integrity")
    else:
        out = workdir / "autoseg_preprocessed"
        env.update(AUTOSEG_RAW=raw, AUTOSEG_PREPROCESSED=str(out), AUTOSEG_RESULTS=str(workdir / "autoseg_results"))
        cmd = [sys.executable, "-m", "autoseg", "plan_and_preprocess", "-d", "3", "-c", "3d_fullres", "-np", str(np_)]
    shutil.rmtree(out, ignore_errors=True)
    log = workdir / f"log_{tool}_{run_idx}.txt"
    m = measure(cmd, env=env, log_path=log, timeout_s=timeout_s)
    if m.returncode != 0:
        why = f"killed after {timeout_s:.0f} s" if m.returncode == -9 else f"exit {m.returncode}"
        sys.exit(f"{tool} failed ({why}); see {log}:\n" + log.read_text(errors='replace')[-2000:])
    return m


def print_table(rows: list[tuple[str, Measurement]]) -> dict[str, float]:
    """Print every run and the ratios of the medians; returns the ratios."""
    print(f"\n{'tool':<9} {'wall s':>8} {'peak RSS MB':>12} {'peak PSS MB':>12} {'max 1-proc RSS MB':>18} {'procs':>6}")
    for tool, m in rows:
        print(f"{tool:<9} {m.wall_s:8.1f} {m.peak_rss_mb:12.0f} {m.peak_pss_mb:12.0f} {m.max_single_rss_mb:18.0f} {m.peak_processes:6d}")
    med = {t: {k: statistics.median(getattr(m, k) for tt, m in rows if tt == t)
               for k in ("wall_s", "peak_rss_mb", "peak_pss_mb", "max_single_rss_mb")} for t in ("nnU-Net", "autoseg")}
    ratios = {k: med["autoseg"][k] / med["nnU-Net"][k] for k in med["autoseg"]}
    print(f"{'ratio':<9} {ratios['wall_s']:8.2f} {ratios['peak_rss_mb']:12.2f} {ratios['peak_pss_mb']:12.2f} "
          f"{ratios['max_single_rss_mb']:18.2f}   (autoseg / nnU-Net, medians; target <= 0.5 for time and RSS)")
    return ratios


def compare_plans(workdir: Path) -> tuple[bool, dict]:
    """Print both tools' 3d_fullres spacing and patch size; True when they agree."""
    nn = json.loads((workdir / "nnunet_preprocessed" / DATASET / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    ours = json.loads((workdir / "autoseg_preprocessed" / DATASET / "plans.json").read_text())["configurations"]["3d_fullres"]
    sp_nn, sp_ours = [round(float(s), 4) for s in nn["spacing"]], [round(float(s), 4) for s in ours["spacing_mm"]]
    print(f"\n3d_fullres  nnU-Net: spacing {sp_nn} patch {nn['patch_size']}")
    print(f"3d_fullres  autoseg: spacing {sp_ours} patch {ours['patch_size']}")
    same = np.allclose(sp_nn, sp_ours, rtol=1e-4) and list(nn["patch_size"]) == list(ours["patch_size"])
    print("plans agree" if same else "PLANS DIFFER")
    return same, ours


def compare_cases(workdir: Path, nnunet_python: Path, ours_plan: dict, case: str) -> bool:
    """Shapes of every case, then image difference and label Dice for ``case``; True when shapes agree."""
    ours_dir = workdir / "autoseg_preprocessed" / DATASET / ours_plan["data_identifier"]
    dump = workdir / "compare"
    shutil.rmtree(dump, ignore_errors=True)
    dump.mkdir(parents=True)
    res = subprocess.run([str(nnunet_python), "-c", _NNUNET_READ, str(workdir / "nnunet_preprocessed" / DATASET / NNUNET_PLANS_FOLDER),
                          case, str(dump)], capture_output=True, text=True, check=True)
    nn_shapes = json.loads(res.stdout)
    mismatches = []
    for c, (d_shape, s_shape) in sorted(nn_shapes.items()):
        ours_shape = list(np.load(ours_dir / f"{c}.npy", mmap_mode="r").shape)
        if ours_shape != d_shape or ours_shape[1:] != s_shape[1:]:
            mismatches.append(f"{c}: nnU-Net {d_shape}, autoseg {ours_shape}")
    print(f"\npreprocessed shapes: {len(nn_shapes) - len(mismatches)}/{len(nn_shapes)} cases equal")
    for line in mismatches:
        print("  " + line)
    if (dump / f"{case}_data.npy").is_file() and not any(line.startswith(case + ":") for line in mismatches):
        d_nn, s_nn = np.load(dump / f"{case}_data.npy"), np.load(dump / f"{case}_seg.npy")
        d_ours, s_ours = np.load(ours_dir / f"{case}.npy"), np.load(ours_dir / f"{case}_seg.npy")
        # Back to HU with each tool's own foreground statistics, so the two fingerprints' slightly
        # different mean/std do not show as a difference (their clipping bounds still can).
        nn_norm = json.loads((workdir / "nnunet_preprocessed" / DATASET / "nnUNetPlans.json").read_text())
        nn_norm = nn_norm["foreground_intensity_properties_per_channel"]["0"]
        ours_norm = ours_plan["normalization"][0]
        hu_ours = d_ours.astype(np.float64) * ours_norm["std"] + ours_norm["mean"]
        hu_nn = d_nn.astype(np.float64) * nn_norm["std"] + nn_norm["mean"]
        _report_difference(f"end to end, {case} (image mapped back to HU with each tool's own statistics)",
                           hu_ours, hu_nn, s_ours, s_nn, None)
    return not mismatches


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter, total = np.count_nonzero(a & b), np.count_nonzero(a) + np.count_nonzero(b)
    return 2 * inter / total if total else float("nan")


def _report_difference(title: str, d_ours: np.ndarray, d_nn: np.ndarray, s_ours: np.ndarray, s_nn: np.ndarray,
                       std_hu: float | None) -> None:
    """Print max/mean |image difference| (normalised units and HU, or HU when ``std_hu`` is None) and label Dice."""
    diff = np.abs(d_ours.astype(np.float64) - d_nn)
    dice = {lab: _dice(s_ours == lab, s_nn == lab) for lab in LABELS}
    if std_hu is None:
        units = f"max {diff.max():.1f} HU, mean {diff.mean():.2f} HU, 99.9th percentile {np.percentile(diff, 99.9):.1f} HU"
    else:
        units = (f"max {diff.max():.4f}, mean {diff.mean():.5f} normalised units = max {diff.max() * std_hu:.1f} HU, "
                 f"mean {diff.mean() * std_hu:.2f} HU, 99.9th percentile {np.percentile(diff, 99.9) * std_hu:.1f} HU")
    print(f"{title}:\n  image |autoseg - nnU-Net|: {units}\n"
          f"  label Dice autoseg vs nnU-Net: " + ", ".join(f"label {k} {v:.4f}" for k, v in dice.items())
          + f"; voxels differing {np.count_nonzero(s_ours != s_nn)} of {s_ours.size}")


def compare_resampling(workdir: Path, nnunet_python: Path, case: str) -> None:
    """Both tools' 3d_fullres resampling on the *same* cropped, transposed, normalised input."""
    import torch

    from autoseg.fingerprint.cropping import crop, nonzero_bbox
    from autoseg.io.images import read_case, read_image
    from autoseg.planners.plans import Plans
    from autoseg.preprocessing.normalization import normalize
    from autoseg.preprocessing.preprocessor import target_spacing
    from autoseg.planners.plans import compute_new_shape
    from autoseg.preprocessing.resampling import resample_image, resample_segmentation

    plans = Plans.load(workdir / "autoseg_preprocessed" / DATASET / "plans.json")
    config = plans.configurations["3d_fullres"]
    raw = workdir / "raw" / DATASET
    data, geom = read_case([raw / "imagesTr" / f"{case}_0000.nii.gz"])
    seg = read_image(raw / "labelsTr" / f"{case}.nii.gz", dtype=np.int16)[0][None]
    bbox = nonzero_bbox(data)
    tf = [0] + [1 + a for a in plans.transpose_forward]
    data = normalize(np.transpose(crop(data, bbox), tf), config.normalization)
    seg = np.ascontiguousarray(np.transpose(crop(seg, bbox), tf))
    spacing = [geom.spacing_zyx[i] for i in plans.transpose_forward]
    new_sp = target_spacing(plans, config, geom.spacing_zyx)
    new_shape = compute_new_shape(data.shape[1:], spacing, new_sp)
    d = workdir / "compare"
    d.mkdir(exist_ok=True)
    args = {"data_in": str(d / "rs_data_in.npy"), "seg_in": str(d / "rs_seg_in.npy"), "data_out": str(d / "rs_data_nn.npy"),
            "seg_out": str(d / "rs_seg_nn.npy"), "new_shape": new_shape, "spacing": spacing, "new_spacing": new_sp}
    np.save(args["data_in"], data)
    np.save(args["seg_in"], seg)
    (d / "rs_args.json").write_text(json.dumps(args))
    res = subprocess.run([str(nnunet_python), "-c", _NNUNET_RESAMPLE, str(d / "rs_args.json")], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit("nnU-Net resampling failed:\n" + res.stderr[-2000:])
    t_nn = json.loads(res.stdout.strip().splitlines()[-1])
    r = config.resampling
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    d_ours = resample_image(data, new_shape, spacing, new_sp, r.order_data, r.order_data_z, r.anisotropy_threshold)
    t1 = time.perf_counter()
    s_ours = resample_segmentation(seg, new_shape, spacing, new_sp, r.order_seg, r.order_seg_z, r.anisotropy_threshold)
    t2 = time.perf_counter()
    print(f"\nresampling only, {case}: {list(data.shape[1:])} @ {np.round(spacing, 3).tolist()} mm -> {new_shape} "
          f"@ {np.round(new_sp, 3).tolist()} mm, 1 thread")
    print(f"  time image / labels: autoseg {t1 - t0:.2f} / {t2 - t1:.2f} s, nnU-Net {t_nn['data_s']:.2f} / {t_nn['seg_s']:.2f} s")
    _report_difference("  same input, both resamplers", d_ours, np.load(args["data_out"]), s_ours, np.load(args["seg_out"]),
                       config.normalization[0].std)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nnunet-venv", default="/work/nnunet_venv", help="nnU-Net v2 venv folder or its bin/python")
    p.add_argument("--cases", type=int, default=10, help="synthetic training cases (default 10)")
    p.add_argument("--size", default="medium", choices=["small", "medium", "large"], help="synthetic size preset")
    p.add_argument("-np", dest="np_", type=int, default=2, help="processes for both tools (nnU-Net: -npfp and -np)")
    p.add_argument("--repeats", type=int, default=1, help="measured runs per tool (alternating); medians are compared")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/autoseg_bench_preprocess"))
    p.add_argument("--nnunet-verify", action="store_true", help="add --verify_dataset_integrity to nnU-Net's run")
    p.add_argument("--timeout", type=float, default=900, help="kill a run after this many seconds (default 900)")
    p.add_argument("--compare-case", default="liver_000", help="case for the array comparison (default liver_000)")
    a = p.parse_args(argv)
    nn_python, nn_exe = nnunet_executables(a.nnunet_venv)
    workdir = a.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prepare_dataset(workdir, a.size, a.cases, a.seed)
    print(f"{a.cases} cases, size {a.size}, -np {a.np_}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for i in range(a.repeats):
        for tool in ("nnU-Net", "autoseg"):
            m = run_tool(tool, workdir, a.np_, nn_exe, a.nnunet_verify, i, a.timeout)
            print(f"  run {i + 1}/{a.repeats} {tool}: {m.wall_s:.1f} s, peak RSS {m.peak_rss_mb:.0f} MB "
                  f"(load average now {os.getloadavg()[0]:.1f})", flush=True)
            rows.append((tool, m))
    print_table(rows)
    plans_ok, ours_plan = compare_plans(workdir)
    shapes_ok = compare_cases(workdir, nn_python, ours_plan, a.compare_case)
    compare_resampling(workdir, nn_python, a.compare_case)
    return 0 if plans_ok and shapes_ok else 1


if __name__ == "__main__":
    sys.exit(main())
