"""``autoseg demo``: the whole pipeline on built-in synthetic data, sized for a 2-core CPU.

synthetic dataset -> plan_and_preprocess -> train fold 0 (a time budget) and predict its validation
cases -> choose postprocessing on them (find_best_configuration -f 0) -> predict the held-out test
cases -> evaluate -> HTML report. Everything goes under ``--out``
(default ``./autoseg_demo``), which becomes AUTOSEG_RAW/PREPROCESSED/RESULTS for the run.

The data is the ``demo`` synthetic preset (abdominal CT at real scale: about 52 x 160 x 160 voxels
of 2.5-2.8 mm in-plane and 4-5 mm slices, a 1.1-1.7 L liver, lesions of 5-25 mm radius) and the
plan is ``--target cpu`` (a training iteration of about a second on 2 cores). A second run in the
same ``--out`` reuses the data when ``--cases/--test-cases/--size/--seed`` are unchanged (as
stored in ``raw/Dataset001_Liver/synthetic.json``); otherwise the data, and everything made from
it under ``--out``, is made anew.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

DATASET = "Dataset001_Liver"


def prepare_data(out: Path, cases: int, test_cases: int, size: str, seed: int) -> str:
    """Make the demo's dataset under ``out/raw`` unless it exists with these options.

    Returns ``"kept"``, ``"generated"`` or ``"regenerated"``. Regenerating removes the old
    dataset's raw, preprocessed and results folders and the demo's predictions, summary and report
    under ``out`` first, so no model or score from the old cases survives.
    """
    from autoseg.datasets.synthetic import generate_dataset, generation_params, stored_params

    raw = out / "raw" / DATASET
    want = generation_params(cases, test_cases, seed, size)
    status = "generated"
    if (raw / "dataset.json").is_file():
        have = stored_params(raw)
        if have == want:
            return "kept"
        print(f"{raw}: made with {have or 'unknown options'}, not {want}: making the demo data anew "
              f"(removing its preprocessed data, results and predictions under {out})", flush=True)
        for d in (raw, out / "preprocessed" / DATASET, out / "results" / DATASET, out / "predictions"):
            shutil.rmtree(d, ignore_errors=True)
        for f in (out / "summary.json", out / "report.html"):
            f.unlink(missing_ok=True)
        status = "regenerated"
    generate_dataset(raw, cases, test_cases, seed=seed, size=size, name="Liver")
    return status


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="autoseg_demo", help="working folder (default ./autoseg_demo)")
    p.add_argument("--cases", type=int, default=16, help="synthetic training cases (default 16)")
    p.add_argument("--test-cases", type=int, default=4, help="held-out synthetic test cases (default 4)")
    p.add_argument("--size", default="demo", choices=["tiny", "small", "demo", "medium"],
                   help="synthetic case size (default demo: CT at real scale, 160 voxels in-plane)")
    p.add_argument("--time-budget", default="10m", help="training time for fold 0 (default 10m; see autoseg train --time-budget)")
    p.add_argument("--epochs", type=int, default=None, help="a fixed number of epochs instead of the time budget")
    p.add_argument("--iters-per-epoch", type=int, default=None, help="with --epochs: iterations per epoch (default 20)")
    p.add_argument("--target", default="cpu", choices=["cpu", "gpu"],
                   help="plan sized to ~1 s per training iteration on 2 CPU cores (default) or to --gpu-memory")
    p.add_argument("--gpu-memory", type=float, default=8.0, help="with --target gpu: memory budget in GB (default 8)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"])
    p.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="engine for predicting the test cases (see autoseg predict --runtime)")
    p.add_argument("--seed", type=int, default=0)


def _schedule(a: argparse.Namespace) -> list[str]:
    """``--epochs`` (a fixed schedule, e.g. a smoke run) or the time budget."""
    if a.epochs is not None:
        return ["--epochs", str(a.epochs), "--iters-per-epoch", str(a.iters_per_epoch or 20)]
    return ["--time-budget", a.time_budget] + (["--iters-per-epoch", str(a.iters_per_epoch)] if a.iters_per_epoch else [])


def run_demo(a: argparse.Namespace) -> int:
    from autoseg.cli import main
    from autoseg.errors import AutosegError
    from autoseg.io.json_io import load_json

    out = Path(a.out).resolve()
    for var, sub in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "preprocessed"), ("AUTOSEG_RESULTS", "results")):
        os.environ[var] = str(out / sub)
    t0 = time.time()
    raw = out / "raw" / DATASET
    print(f"\n=== synthetic data: autoseg synthetic -d Liver -n {a.cases} --num-test {a.test_cases} --size {a.size} "
          f"--seed {a.seed}", flush=True)
    status = prepare_data(out, a.cases, a.test_cases, a.size, a.seed)
    timings = [(f"synthetic data ({status})", time.time() - t0)]
    plan = ["plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "--target", a.target, "-np", "2"]
    steps: list[tuple[str, list[str]]] = [
        ("plan and preprocess", plan + (["--gpu-memory", str(a.gpu_memory)] if a.target == "gpu" else [])),
        ("train + validate fold 0", ["train", "-d", "Liver", "-c", "3d_fullres", "-f", "0", "--checkpoint-every", "5"]
         + _schedule(a)
         + (["--device", a.device] if a.device else [])),
        ("choose postprocessing", ["find_best_configuration", "-d", "Liver", "-f", "0", "-np", "2"]),
        ("predict test cases", ["predict", "-d", "Liver", "-c", "3d_fullres", "-f", "0", "-i", str(raw / "imagesTs"),
                                "-o", str(out / "predictions"), "--uncertainty", "--overwrite", "--runtime", a.runtime]
         + (["--device", a.device] if a.device else [])),
        ("evaluate", ["evaluate", "-r", str(raw / "labelsTs"), "-p", str(out / "predictions"), "-o", str(out / "summary.json"),
                      "--dataset-json", str(raw / "dataset.json")]),
        ("report", ["report", "-i", str(raw / "imagesTs"), "-p", str(out / "predictions"), "-r", str(raw / "labelsTs"),
                    "-u", str(out / "predictions" / "uncertainty"), "-o", str(out / "report.html"),
                    "--curves", str(out / "results" / "Dataset001_Liver" / "3d_fullres" / "fold_0" / "progress.png")]),
    ]
    for title, argv in steps:
        print(f"\n=== {title}: autoseg {' '.join(argv)}", flush=True)
        s = time.time()
        code = main(argv)
        timings.append((title, time.time() - s))
        if code != 0:
            raise AutosegError(f"demo step '{title}' failed (exit {code}); see the message above")
    summary = load_json(out / "summary.json")
    print("\n=== demo finished in %.1f min" % ((time.time() - t0) / 60))
    for title, sec in timings:
        print(f"  {title:<28}{sec:8.1f} s")
    print(f"\n{'label':<14}{'Dice':>8}{'IoU':>8}{'precision':>11}{'recall':>8}{'lesion recall':>15}{'lesion precision':>18}")
    for key, name in summary["label_names"].items():
        m = summary["mean"][key]
        lesions = "".join(f"{m[k]:>{w}.3f}" if k in m else f"{'':>{w}}" for k, w in (("lesion_recall", 15), ("lesion_precision", 18)))
        print(f"{name:<14}{m['Dice']:>8.3f}{m['IoU']:>8.3f}{m['precision']:>11.3f}{m['recall']:>8.3f}{lesions}")
    print(f"\nreport: {out / 'report.html'}")
    return 0
