"""Labels vs regions for liver ⊃ tumour at the same training budget (issue 13).

Two datasets hold the same synthetic CT cases (``autoseg synthetic``): one label-based
(``{"background": 0, "liver": 1, "tumor": 2}``: softmax over three classes) and one region-based
(``{"background": 0, "liver": [1, 2], "tumor": 2}``, ``regions_class_order [1, 2]``: one sigmoid
for liver incl. tumour, one for tumour). Both are planned (``--target``), trained on all training
cases (fold ``all``) with the same schedule, predict the same held-out test cases, and are scored
against ``labelsTs`` with ``autoseg evaluate -l 1 2``. Printed per model: mean Dice of liver
(label 1 alone), tumour (2) and liver ∪ tumour (1+2), with the training and prediction wall times.

Every step is an ordinary ``autoseg`` command in a fresh process. Run (the issue's comparison;
several hours on 2 CPU cores)::

    python benchmarks/regions_vs_labels.py --work /tmp/regions_bench --size medium --train-budget 1h

A smoke run (a minute; untrained models, the Dice figures mean nothing)::

    python benchmarks/regions_vs_labels.py --work /tmp/regions_smoke --size tiny --train-cases 3 --test-cases 1 \\
        --epochs 1 --iters-per-epoch 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import add_comparison_args, run_autoseg  # noqa: E402

LABELS = "Dataset061_LiverLabels"
REGIONS = "Dataset062_LiverRegions"
REGION_LABELS = {"background": 0, "liver": [1, 2], "tumor": 2}


run = run_autoseg


def make_datasets(a: argparse.Namespace, env: dict, logs: Path) -> None:
    """The synthetic label-based dataset, and a copy whose dataset.json declares regions."""
    run(["synthetic", "-d", LABELS, "-n", str(a.train_cases), "--num-test", str(a.test_cases), "--size", a.size,
         "--seed", str(a.seed)], env, logs / "synthetic.log")
    raw = Path(env["AUTOSEG_RAW"])
    shutil.copytree(raw / LABELS, raw / REGIONS, dirs_exist_ok=True)
    dj = json.loads((raw / REGIONS / "dataset.json").read_text())
    dj.update(name=REGIONS, labels=REGION_LABELS, regions_class_order=[1, 2])
    (raw / REGIONS / "dataset.json").write_text(json.dumps(dj, indent=1))


def score(dataset: str, a: argparse.Namespace, env: dict, logs: Path) -> dict:
    """Plan, train, predict the test cases and evaluate one dataset; returns its figures."""
    raw, work = Path(env["AUTOSEG_RAW"]) / dataset, Path(a.work)
    run(["plan_and_preprocess", "-d", dataset, "-c", "3d_fullres", "--target", a.target, "-np", "1"], env, logs / f"{dataset}_plan.log")
    schedule = ["--time-budget", a.train_budget] if a.train_budget else ["--epochs", str(a.epochs), "--iters-per-epoch", str(a.iters_per_epoch)]
    train_s = run(["train", "-d", dataset, "-c", "3d_fullres", "-f", "all", "--no-validation", "--seed", str(a.seed), *schedule],
                  env, logs / f"{dataset}_train.log")
    out = work / "predictions" / dataset
    predict_s = run(["predict", "-d", dataset, "-c", "3d_fullres", "-f", "all", "-i", str(raw / "imagesTs"), "-o", str(out),
                     "--overwrite"], env, logs / f"{dataset}_predict.log")
    run(["evaluate", "-r", str(raw / "labelsTs"), "-p", str(out), "-l", "1", "2"], env, logs / f"{dataset}_evaluate.log")
    mean = json.loads((out / "summary.json").read_text())["mean"]
    return {"liver": mean["1"]["Dice"], "tumour": mean["2"]["Dice"], "liver+tumour": mean["1+2"]["Dice"],
            "train_s": train_s, "predict_s": predict_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_comparison_args(p, test_cases=4)
    p.add_argument("--train-budget", default=None, help="--time-budget of each model (e.g. 1h); else --epochs/--iters-per-epoch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--iters-per-epoch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    logs = a.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{k: str(a.work / sub) for k, sub in
                              (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res"))})
    make_datasets(a, env, logs)
    rows = {name: score(ds, a, env, logs) for name, ds in (("labels", LABELS), ("regions", REGIONS))}
    schedule = f"--time-budget {a.train_budget}" if a.train_budget else f"{a.epochs} epoch(s) x {a.iters_per_epoch} iterations"
    print(f"synthetic --size {a.size}: {a.train_cases} training / {a.test_cases} test cases, 3d_fullres --target {a.target}, "
          f"fold all, {schedule} each")
    print(f"{'model':<9}{'liver Dice':>12}{'tumour Dice':>13}{'liver+tumour':>14}{'train s':>9}{'predict s':>11}")
    for name, r in rows.items():
        print(f"{name:<9}{r['liver']:>12.4f}{r['tumour']:>13.4f}{r['liver+tumour']:>14.4f}{r['train_s']:>9.0f}{r['predict_s']:>11.0f}")


if __name__ == "__main__":
    main()
