"""``autoseg demo``: the whole pipeline on built-in synthetic data, sized for a 2-core CPU.

synthetic dataset -> plan_and_preprocess -> train fold 0 (short schedule) -> predict the
held-out test cases -> evaluate -> HTML report. Everything goes under ``--out``
(default ``./autoseg_demo``), which becomes AUTOSEG_RAW/PREPROCESSED/RESULTS for the run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="autoseg_demo", help="working folder (default ./autoseg_demo)")
    p.add_argument("--cases", type=int, default=16, help="synthetic training cases (default 16)")
    p.add_argument("--test-cases", type=int, default=4, help="held-out synthetic test cases (default 4)")
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "medium"], help="synthetic case size (default tiny)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--iters-per-epoch", type=int, default=20)
    p.add_argument("--gpu-memory", type=float, default=0.1,
                   help="memory budget that sizes the patch (default 0.1 GB: a CPU-sized network)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, default=0)


def run_demo(a: argparse.Namespace) -> int:
    from autoseg.cli import main
    from autoseg.errors import AutosegError
    from autoseg.io.json_io import load_json

    out = Path(a.out).resolve()
    for var, sub in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "preprocessed"), ("AUTOSEG_RESULTS", "results")):
        os.environ[var] = str(out / sub)
    t0 = time.time()
    steps: list[tuple[str, list[str]]] = []
    raw = out / "raw" / "Dataset001_Liver"
    if not (raw / "dataset.json").is_file():
        steps.append(("synthetic data", ["synthetic", "-d", "Liver", "-n", str(a.cases), "--num-test", str(a.test_cases),
                                         "--size", a.size, "--seed", str(a.seed)]))
    steps += [
        ("plan and preprocess", ["plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "--gpu-memory", str(a.gpu_memory), "-np", "2"]),
        ("train fold 0", ["train", "-d", "Liver", "-c", "3d_fullres", "-f", "0", "--epochs", str(a.epochs),
                          "--iters-per-epoch", str(a.iters_per_epoch), "--val-iters", "5", "--checkpoint-every", "5"]
         + (["--device", a.device] if a.device else [])),
        ("predict test cases", ["predict", "-d", "Liver", "-c", "3d_fullres", "-f", "0", "-i", str(raw / "imagesTs"),
                                "-o", str(out / "predictions"), "--uncertainty", "--overwrite"] + (["--device", a.device] if a.device else [])),
        ("evaluate", ["evaluate", "-r", str(raw / "labelsTs"), "-p", str(out / "predictions"), "-o", str(out / "summary.json"),
                      "--dataset-json", str(raw / "dataset.json")]),
        ("report", ["report", "-i", str(raw / "imagesTs"), "-p", str(out / "predictions"), "-r", str(raw / "labelsTs"),
                    "-u", str(out / "predictions" / "uncertainty"), "-o", str(out / "report.html"),
                    "--curves", str(out / "results" / "Dataset001_Liver" / "3d_fullres" / "fold_0" / "progress.png")]),
    ]
    timings = []
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
        print(f"  {title:<22}{sec:8.1f} s")
    print(f"\n{'label':<14}{'Dice':>8}{'IoU':>8}{'precision':>11}{'recall':>8}")
    for key, name in summary["label_names"].items():
        m = summary["mean"][key]
        print(f"{name:<14}{m['Dice']:>8.3f}{m['IoU']:>8.3f}{m['precision']:>11.3f}{m['recall']:>8.3f}")
    print(f"\nreport: {out / 'report.html'}")
    return 0
