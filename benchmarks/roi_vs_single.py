"""Tumour detection: the two-stage model (stage 1 + ``3d_roi_fullres``) vs one ``3d_fullres`` model,
at the same total CPU training time (issue 12).

Both models learn from the same synthetic cases (``autoseg synthetic --size medium`` by default)
and the same plans (``plan_and_preprocess --target``). The single-stage model trains
``3d_fullres`` for ``--train-budget``; the two-stage model splits the same budget between its
first stage (``--stage1-share`` of it) and ``3d_roi_fullres`` (the rest). Each model lives in its
own results folder (``AUTOSEG_RESULTS``), trains on all training cases (fold ``all``, no fold
validation), predicts the same held-out test cases with mirroring TTA, and is scored by
``autoseg evaluate -l 1 2`` against ``labelsTs``. Printed, one row per model: training and
prediction wall times, liver and tumour Dice, tumour voxel precision/recall, and lesion
precision/recall pooled over the test cases (a reference lesion counts as found when a predicted
tumour voxel touches it; a predicted lesion is a true one when it touches a reference lesion).

One training is one draw: the same command gives another model each run (a time budget ends
training at another iteration): three runs of the seed-0 command gave two-stage tumour Dice 0.552-0.672.
``--seed 0 1 2`` trains both models once on each seed's data (``WORK/seed_N``, each a complete work
folder with ``rows.json``) and adds each model's mean over the seeds to the table.

Every step is an ordinary ``autoseg`` command in a fresh process. Run (about 45 minutes on 2
cores: 2 x 15 minutes of training, then 25 test cases predicted by each model)::

    python benchmarks/roi_vs_single.py --work /tmp/roi_vs_single --train-budget 15m
    python benchmarks/roi_vs_single.py --work /tmp/roi_vs_single3x --train-budget 15m --seed 0 1 2  # ~2 h 15 min

A smoke run (a few minutes; untrained models, the figures mean nothing)::

    python benchmarks/roi_vs_single.py --work /tmp/roi_vs_single_smoke --size small --train-cases 4 \\
        --test-cases 1 --train-budget 0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import add_comparison_args, run_autoseg  # noqa: E402

DATASET = "Dataset043_RoiVsSingle"


def run(args: list[str], env: dict, log: Path) -> float:
    """``python -m autoseg ARGS`` (``_measure.run_autoseg``), its wall time printed and returned."""
    took = run_autoseg(args, env, log)
    print(f"  {' '.join(args[:5]):<60} {took:7.0f} s", flush=True)
    return took


def seconds(budget: str) -> float:
    """'12m', '90s', '1h30m' -> seconds (the same forms as ``train --time-budget``)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", budget)
    if not parts or "".join(n + u for n, u in parts) != budget:
        raise SystemExit(f"--train-budget {budget}: use forms like 90s, 12m, 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def schedule(budget_s: float) -> list[str]:
    """``--time-budget`` in whole seconds; 0 = one epoch of one iteration (a smoke run)."""
    return ["--time-budget", f"{int(round(budget_s))}s"] if budget_s > 0 else ["--epochs", "1", "--iters-per-epoch", "1"]


def train(configurations: list[tuple[str, float]], seed: int, env: dict, logs: Path, tag: str) -> float:
    """Train each (configuration, budget s); returns the total wall time and prints the budget accuracy."""
    total = 0.0
    for conf, budget_s in configurations:
        log = logs / f"{tag}_train_{conf}.log"
        total += run(["train", "-d", DATASET, "-c", conf, "-f", "all", "--no-validation", "--seed", str(seed),
                      *schedule(budget_s)], env, log)
        found = re.search(r"trained (\d+) epochs in (\d+) s \(time budget (\d+) s\)", log.read_text())
        if found:
            epochs, took, budget = (int(g) for g in found.groups())
            print(f"    {conf}: {epochs} epochs, training took {took} s of a {budget} s budget ({100 * (took / budget - 1):+.1f} %)")
    return total


def score(configuration: str, env: dict, logs: Path, tag: str, work: Path) -> dict:
    """Predict the test cases with ``configuration`` (fold all, TTA) and evaluate them."""
    raw, out = Path(env["AUTOSEG_RAW"]) / DATASET, work / "predictions" / tag
    predict_s = run(["predict", "-d", DATASET, "-c", configuration, "-f", "all", "-i", str(raw / "imagesTs"), "-o", str(out),
                     "--overwrite"], env, logs / f"{tag}_predict.log")
    run(["evaluate", "-r", str(raw / "labelsTs"), "-p", str(out), "-l", "1", "2"], env, logs / f"{tag}_evaluate.log")
    mean = json.loads((out / "summary.json").read_text())["mean"]
    liver, tumour = mean["1"], mean["2"]
    return {"predict_s": predict_s, "liver": liver["Dice"], "tumour": tumour["Dice"], "t_prec": tumour["precision"],
            "t_rec": tumour["recall"],
            "l_prec": tumour["lesion_tp_pred"] / tumour["lesion_n_pred"] if tumour["lesion_n_pred"] else float("nan"),
            "l_rec": tumour["lesion_detected"] / tumour["lesion_n_ref"] if tumour["lesion_n_ref"] else float("nan")}


def one_seed(a: argparse.Namespace, seed: int, work: Path) -> dict:
    """Both models trained and scored on the data of one seed, in ``work``; their rows (also written
    to ``work/rows.json``)."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, AUTOSEG_RAW=str(work / "raw"), AUTOSEG_PREPROCESSED=str(work / "pre"))
    run(["synthetic", "-d", DATASET, "-n", str(a.train_cases), "--num-test", str(a.test_cases), "--size", a.size,
         "--seed", str(seed)], env, logs / "synthetic.log")
    run(["plan_and_preprocess", "-d", DATASET, "-c", "3d_fullres", "3d_lowres", "3d_roi_fullres", "--target", a.target,
         "-np", "1"], env, logs / "plan.log")
    roi = json.loads((Path(env["AUTOSEG_PREPROCESSED"]) / DATASET / "plans.json").read_text())["configurations"].get("3d_roi_fullres")
    if roi is None:
        raise SystemExit("3d_roi_fullres was not planned for this data (the foreground fills too much of the image)")
    total = 0.0 if a.train_budget == "0" else seconds(a.train_budget)
    first, rows = roi["previous_stage"], {}
    single_env = dict(env, AUTOSEG_RESULTS=str(work / "res_single"))
    two_env = dict(env, AUTOSEG_RESULTS=str(work / "res_two_stage"))
    train_s = train([("3d_fullres", total)], seed, single_env, logs, "single")
    rows["single-stage 3d_fullres"] = {"train_s": train_s, **score("3d_fullres", single_env, logs, "single", work)}
    train_s = train([(first, total * a.stage1_share), ("3d_roi_fullres", total * (1 - a.stage1_share))], seed, two_env, logs, "two")
    rows[f"two-stage {first} + 3d_roi_fullres"] = {"train_s": train_s, **score("3d_roi_fullres", two_env, logs, "two", work)}
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    return rows


ROW_KEYS = ["train_s", "predict_s", "liver", "tumour", "t_prec", "t_rec", "l_prec", "l_rec"]


def cells(r: dict, bold: bool = False) -> str:
    """The figures of one row, markdown cells: seconds whole, scores to 3 decimals (bold if asked)."""
    b = "**" if bold else ""
    return " | ".join(f"{r[k]:.0f}" if k.endswith("_s") else f"{b}{r[k]:.3f}{b}" for k in ROW_KEYS)


def print_table(per_seed: dict[int, dict]) -> None:
    """One row per model and seed; with several seeds also each model's mean over them (lesion
    figures as the mean of the per-seed ratios)."""
    print("| model | data seed | training s | prediction s | liver Dice | tumour Dice | tumour precision | tumour recall | "
          "lesion precision | lesion recall |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in next(iter(per_seed.values())):
        for seed, rows in per_seed.items():
            print(f"| {name} | {seed} | {cells(rows[name])} |")
        if len(per_seed) > 1:
            mean = {k: sum(by_seed[name][k] for by_seed in per_seed.values()) / len(per_seed) for k in ROW_KEYS}
            print(f"| **{name}, mean** | {len(per_seed)} seeds | {cells(mean, bold=True)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_comparison_args(p, test_cases=25)  # 25 held-out cases hold 47 lesions (5 held only 8)
    p.add_argument("--train-budget", default="12m", help="total training time of each model; 0 = untrained (smoke run)")
    p.add_argument("--stage1-share", type=float, default=1 / 3, help="the first stage's share of the two-stage budget")
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="data seed(s); several: one training of both models per seed, in WORK/seed_N, and the means")
    a = p.parse_args()
    seeds = list(dict.fromkeys(a.seed))
    print(f"load average at start: {os.getloadavg()}")
    per_seed = {s: one_seed(a, s, a.work if len(seeds) == 1 else a.work / f"seed_{s}") for s in seeds}
    print(f"\nsynthetic --size {a.size}: {a.train_cases} training / {a.test_cases} test cases per seed, --target {a.target}, "
          f"fold all, {a.train_budget} of training per model (two-stage: {a.stage1_share:.2f} of it for its first stage), "
          f"mirroring TTA; load average at end: {os.getloadavg()}\n")
    print_table(per_seed)


if __name__ == "__main__":
    main()
