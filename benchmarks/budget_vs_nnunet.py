"""Issue 11's target: autoseg with ``--time-budget`` (CPU plan) against nnU-Net v2 given the same training time.

nnU-Net v2 is a *reference only*, run from its throwaway venv (benchmarks/nnunet_venv.md).
Usage, from the repo root (estimated 1.5 h on 2 idle cores at the defaults: two 30-minute trainings, plus planning and predicting)::

    python benchmarks/budget_vs_nnunet.py [--budget 30m] [--nnunet-venv /work/nnunet_venv] \
        [--cases 20 --test-cases 5 --size medium] [--no-tta] [--workdir /tmp/autoseg_bench_budget] [--json out.json]

Steps (every tool command runs as its own process, timed by ``benchmarks/_measure.py``, memory sampled every 0.5 s):

1. The synthetic dataset (``autoseg.datasets.synthetic.generate_dataset``; default ``medium``,
   20 training + 5 held-out test cases) is written once as ``<workdir>/raw/Dataset003_Liver``.
2. autoseg: ``plan_and_preprocess -c 3d_fullres --target cpu -np 2``, ``train -f 0 --time-budget
   T`` (T = ``--train-budget``; default ``auto``: what the budget has left after plan + preprocess
   and ``--predict-reserve``, so that everything fits the budget) with the fold's validation, then
   ``find_best_configuration -f 0`` (postprocessing chosen on the validation cases, as ``autoseg
   demo`` does; ``--no-postprocessing``: neither), then ``predict -f 0`` of ``imagesTs`` (mirroring
   TTA unless ``--no-tta``). The wall time of each part is printed, and whether the sum stayed within ``--budget``
   (the issue: "everything it needs for prediction included in the 30 minutes").
3. nnU-Net (with ``--nnunet-venv``): **memory target rule**: autoseg's GPU planner reproduces
   nnU-Net v2.8.1's planner exactly (tests/test_planner.py), so the script plans 3d_fullres
   in-process for memory targets 0.1 .. 8 GB (x1.15 steps) from autoseg's own fingerprint and
   takes the *largest* target whose plan, under autoseg's CPU cost model
   (``planners/cost_model.py``), costs no more seconds per training iteration than autoseg's CPU
   plan (``expected_s_per_iter_cpu``) -- our planner's own rule, "the biggest patch that fits
   the time per iteration", applied to what nnU-Net can vary (patch and batch; its spacing and
   32-feature width stay fixed). The smallest target when none fits. nnU-Net then runs
   ``nnUNetv2_plan_and_preprocess -gpu_memory_target G -overwrite_plans_name nnUNetPlans_cpu``
   (its plan is printed beside the replica's); autoseg's ``splits_final.json`` is copied in.
   Epochs: nnU-Net gets autoseg's iterations per epoch and validation iterations (read from
   autoseg's ``training.json``); a 2-epoch warm-up run of ``--nnunet-warmup-iters`` iterations
   measures its epoch time (the second epoch, scaled to the full epoch length), then fold 0
   trains ``floor(T / epoch time)`` epochs (``nnUNetTrainer_autosegBench`` of
   ``train_vs_nnunet.py``: epoch length and count from the environment, no final validation)
   and predicts the same test cases (final checkpoint, step 0.5, TTA as autoseg's).
4. Both prediction folders are scored by the same ``autoseg evaluate -r labelsTs``. Liver and
   tumour Dice are its means over cases; lesion figures are pooled over all test cases:
   recall = detected reference lesions / reference lesions (all, and those >= 10 mm),
   precision = predicted lesions touching a reference lesion / predicted lesions. A lesion is a
   26-connected component of the tumour label (as in ``autoseg evaluate``); a reference lesion
   is detected when any predicted tumour voxel overlaps it; its size is the radius of the sphere
   of the same volume, ``(3 V / 4 pi)^(1/3)`` with ``V`` = voxels x voxel volume (mm^3). Goals
   (issue 11): autoseg tumour Dice >= 0.40, recall >= 0.5 for lesions >= 10 mm, liver Dice >= 0.92.

Exit status 1 when an autoseg command fails; a failing nnU-Net command only fails its row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_vs_nnunet import PLANS_NAME, TRAINER, Bench, epoch_times, install_trainer, torch_threads  # noqa: E402

MIN_LESION_RADIUS_MM = 10.0
MEASURE_INTERVAL_S = 0.5  # memory sampling of the process tree: 0.05 s cost ~10 % of a core over a long run
GOALS = {"tumour_dice": 0.40, "recall_10mm": 0.5, "liver_dice": 0.92}
MEMORY_GRID_GB = [round(0.1 * 1.15 ** k, 3) for k in range(32) if 0.1 * 1.15 ** k <= 8.0]


def write_dataset(b: Bench, a: argparse.Namespace) -> None:
    """The raw dataset, once per (cases, test cases, size, seed); a change starts the workdir over."""
    from autoseg.datasets.synthetic import generate_dataset

    stamp = b.workdir / "dataset.json"
    want = {"cases": a.cases, "test_cases": a.test_cases, "size": a.size, "seed": a.seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return
    shutil.rmtree(b.raw, ignore_errors=True)
    generate_dataset(b.raw, n_train=a.cases, n_test=a.test_cases, seed=a.seed, size=a.size)
    stamp.write_text(json.dumps(want))


def timed(b: Bench, tool: str, cmd: list[str], log: str, times: dict, key: str, **env: str) -> None:
    m = b.run(tool, cmd, log, **env)
    times[key] = m.wall_s
    print(f"  {tool:<8} {key:<18} {m.wall_s:7.1f} s   peak RSS {m.peak_rss_mb:6.0f} MB   load {os.getloadavg()[0]:.1f}", flush=True)


def run_autoseg(b: Bench, a: argparse.Namespace) -> dict:
    """Plan + preprocess, train within the budget, predict; returns wall times and the training config."""
    for d in (b.as_pp, b.as_fold.parent.parent):
        shutil.rmtree(d, ignore_errors=True)
    t: dict = {}
    timed(b, "autoseg", b.autoseg_cmd("plan_and_preprocess", "-d", "3", "-c", "3d_fullres", "--target", "cpu", "-np", "2"),
          "autoseg_preprocess.txt", t, "plan_preprocess_s")
    train_budget = a.budget_s - t["plan_preprocess_s"] - a.predict_reserve_s if a.train_budget == "auto" else a.train_budget_s
    if train_budget <= 0:
        sys.exit(f"no training time left: plan + preprocess took {t['plan_preprocess_s']:.0f} s of a {a.budget_s:.0f} s budget")
    t["train_budget_s"] = train_budget
    validation = [] if a.postprocessing else ["--no-validation"]
    timed(b, "autoseg", b.autoseg_cmd("train", "-d", "3", "-c", "3d_fullres", "-f", "0", "--time-budget", f"{train_budget:.0f}s",
                                      *validation, "--device", a.device), "autoseg_train.txt", t, "train_s")
    t["postprocess_s"] = 0.0
    if a.postprocessing:  # as autoseg demo: postprocessing chosen on the fold's validation cases
        timed(b, "autoseg", b.autoseg_cmd("find_best_configuration", "-d", "3", "-f", "0", "-np", "2"),
              "autoseg_find_best.txt", t, "postprocess_s")
    out = b.workdir / "pred_autoseg"
    shutil.rmtree(out, ignore_errors=True)
    cmd = b.autoseg_cmd("predict", "-i", str(b.raw / "imagesTs"), "-o", str(out), "-d", "3", "-c", "3d_fullres", "-f", "0",
                        "--device", a.device, *(["--no-tta"] if a.no_tta else []))
    timed(b, "autoseg", cmd, "autoseg_predict.txt", t, "predict_s")
    t["total_s"] = t["plan_preprocess_s"] + t["train_s"] + t["postprocess_s"] + t["predict_s"]
    t["within_budget"] = t["total_s"] <= a.budget_s
    cfg = json.loads((b.as_fold / "training.json").read_text())
    t["training"] = {k: cfg.get(k) for k in ("epochs", "iters_per_epoch", "val_iters", "time_budget_s", "measured_train_iter_s",
                                             "measured_val_iter_s", "batch_size", "num_workers")}
    plan = json.loads((b.as_pp / "plans.json").read_text())["configurations"]["3d_fullres"]
    t["plan"] = {k: plan[k] for k in ("patch_size", "batch_size", "spacing_mm", "expected_s_per_iter_cpu")}
    t["plan"]["features_per_stage"] = plan["topology"]["features_per_stage"]
    print(f"  autoseg CPU plan: {t['plan']}\n  autoseg training: {t['training']}")
    print(f"  autoseg total {t['total_s']:.0f} s (plan+preprocess {t['plan_preprocess_s']:.0f}, train {t['train_s']:.0f} "
          f"(+ fold validation unless --no-postprocessing), postprocessing {t['postprocess_s']:.0f}, predict {t['predict_s']:.0f}) vs budget {a.budget_s:.0f} s: {'HELD' if t['within_budget'] else 'NOT HELD'}")
    return {"times": t, "pred": out}


def choose_memory_target(b: Bench, cpu_s_per_iter: float) -> tuple[float, dict]:
    """The nnU-Net memory target (GB) by the rule of the docstring, and the replica's plan at it."""
    from autoseg.datasets.layout import load_dataset_info
    from autoseg.fingerprint.fingerprint import DatasetFingerprint
    from autoseg.planners.planner import plan_experiment

    info = load_dataset_info(b.raw)
    fp = DatasetFingerprint.load(b.as_pp / "dataset_fingerprint.json")
    chosen = None
    for g in MEMORY_GRID_GB:
        c = plan_experiment(info, fp, gpu_memory_gb=g, configurations=("3d_fullres",), target="gpu").configurations["3d_fullres"]
        plan = {"gpu_memory_gb": g, "patch_size": c.patch_size, "batch_size": c.batch_size, "spacing_mm": c.spacing_mm,
                "expected_s_per_iter_cpu": c.expected_s_per_iter_cpu}
        if chosen is None or c.expected_s_per_iter_cpu <= cpu_s_per_iter:
            chosen = plan
    assert chosen is not None
    return chosen["gpu_memory_gb"], chosen


def nnunet_train(b: Bench, a: argparse.Namespace, epochs: int, iters: int, val_iters: int, tag: str, t: dict, key: str) -> list[float]:
    shutil.rmtree(b.nn_fold.parent, ignore_errors=True)
    cmd = [str(b.bindir / "nnUNetv2_train"), "3", "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS_NAME, "-device", a.device]
    timed(b, "nnU-Net", cmd, f"nnunet_train_{tag}.txt", t, key, nnUNet_n_proc_DA=str(a.workers), AUTOSEG_BENCH_EPOCHS=str(epochs),
          AUTOSEG_BENCH_ITERS=str(iters), AUTOSEG_BENCH_VAL_ITERS=str(val_iters))
    return epoch_times("nnU-Net", b.nn_fold)


def run_nnunet(b: Bench, a: argparse.Namespace, ours: dict) -> dict:
    """Plan with the chosen memory target, warm up, train the epochs that fit, predict."""
    t: dict = {}
    g, replica = choose_memory_target(b, ours["plan"]["expected_s_per_iter_cpu"])
    print(f"  nnU-Net memory target {g} GB (replica plan: {replica})")
    shutil.rmtree(b.nn_pp, ignore_errors=True)
    timed(b, "nnU-Net", [str(b.bindir / "nnUNetv2_plan_and_preprocess"), "-d", "3", "-c", "3d_fullres", "-gpu_memory_target", str(g),
                         "-overwrite_plans_name", PLANS_NAME, "-np", "2", "-npfp", "2", "--no_pbar"], "nnunet_preprocess.txt",
          t, "plan_preprocess_s")
    conf = json.loads((b.nn_pp / f"{PLANS_NAME}.json").read_text())["configurations"]["3d_fullres"]
    t["plan"] = {"gpu_memory_gb": g, "patch_size": conf["patch_size"], "batch_size": conf["batch_size"], "spacing_mm": conf["spacing"],
                 "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"]}
    same = conf["patch_size"] == replica["patch_size"] and conf["batch_size"] == replica["batch_size"]
    print(f"  nnU-Net plan: {t['plan']} ({'as the replica planned' if same else 'DIFFERS from the replica'})")
    shutil.copy(b.as_pp / "splits_final.json", b.nn_pp / "splits_final.json")
    install_trainer(b.bindir)
    iters, val_iters = ours["training"]["iters_per_epoch"], ours["training"]["val_iters"]
    w = a.nnunet_warmup_iters
    warm = nnunet_train(b, a, 2, w, max(1, round(w * val_iters / iters)), "warmup", t, "warmup_s")
    epoch_s = warm[-1] * iters / w
    epochs = max(1, math.floor(ours["train_budget_s"] / epoch_s))
    print(f"  nnU-Net warm-up epoch times {warm} s -> {epoch_s:.1f} s per epoch of {iters} + {val_iters} iterations -> {epochs} epochs")
    times = nnunet_train(b, a, epochs, iters, val_iters, "budget", t, "train_s")
    t["training"] = {"epochs": epochs, "iters_per_epoch": iters, "val_iters": val_iters, "epoch_s_estimate": epoch_s,
                     "epoch_times_sum_s": sum(times)}
    out = b.workdir / "pred_nnunet"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(b.bindir / "nnUNetv2_predict"), "-i", str(b.raw / "imagesTs"), "-o", str(out), "-d", "3", "-c", "3d_fullres",
           "-p", PLANS_NAME, "-tr", TRAINER, "-f", "0", "-chk", "checkpoint_final.pth", "-device", a.device, "-step_size", "0.5",
           "-npp", "1", "-nps", "1", *(["--disable_tta"] if a.no_tta else [])]
    timed(b, "nnU-Net", cmd, "nnunet_predict.txt", t, "predict_s")
    t["total_s"] = t["plan_preprocess_s"] + t["train_s"] + t["predict_s"]
    return {"times": t, "pred": out}


def lesion_table(ref: np.ndarray, pred: np.ndarray, spacing_zyx) -> list[tuple[float, bool]]:
    """``(equivalent radius mm, detected)`` of every reference lesion (26-connected tumour component)."""
    from autoseg.model.postprocessing import connected_components

    ref_cc, n = connected_components(ref == 2)
    if n == 0:
        return []
    voxel_mm3 = float(np.prod(spacing_zyx))
    sizes = np.bincount(ref_cc.ravel(), minlength=n + 1)
    hit = np.zeros(n + 1, bool)
    hit[np.unique(ref_cc[pred == 2])] = True
    return [((3 * sizes[i] * voxel_mm3 / (4 * math.pi)) ** (1 / 3), bool(hit[i])) for i in range(1, n + 1)]


def ratio(k: float, n: float) -> float:
    return k / n if n else float("nan")


def score(b: Bench, pred: Path) -> dict:
    """``autoseg evaluate`` of one prediction folder, plus pooled lesion recall by size and precision."""
    from autoseg.io.images import read_label

    summary_path = pred.parent / f"{pred.name}_summary.json"
    b.run("autoseg", b.autoseg_cmd("evaluate", "-r", str(b.raw / "labelsTs"), "-p", str(pred), "-o", str(summary_path),
                                   "--dataset-json", str(b.raw / "dataset.json"), "-np", "1"), f"evaluate_{pred.name}.txt")
    s = json.loads(summary_path.read_text())
    lesions = []
    for case in s["metric_per_case"]:
        ref, geom = read_label(case["reference_file"])
        lesions += lesion_table(ref, read_label(case["prediction_file"])[0], geom.spacing_zyx)
    n_ref = sum(c["metrics"]["2"].get("lesion_n_ref", 0) for c in s["metric_per_case"])
    if n_ref != len(lesions):
        print(f"  warning: {len(lesions)} reference lesions here, {n_ref} in autoseg evaluate's summary", file=sys.stderr)
    big = [hit for r, hit in lesions if r >= MIN_LESION_RADIUS_MM]
    n_pred = sum(c["metrics"]["2"].get("lesion_n_pred", 0) for c in s["metric_per_case"])
    tp_pred = sum(c["metrics"]["2"].get("lesion_tp_pred", 0) for c in s["metric_per_case"])
    return {"liver_dice": s["mean"]["1"]["Dice"], "tumour_dice": s["mean"]["2"]["Dice"],
            "recall_all": ratio(sum(h for _, h in lesions), len(lesions)), "n_lesions": len(lesions),
            "recall_10mm": ratio(sum(big), len(big)), "n_lesions_10mm": len(big),
            "lesion_precision": ratio(tp_pred, n_pred), "n_pred_lesions": int(n_pred), "summary": str(summary_path)}


def print_table(rows: dict[str, dict | None], budget_s: float) -> None:
    head = (f"{'tool':<9} {'train s':>8} {'predict s':>9} {'total s':>8} {'liver Dice':>10} {'tumour Dice':>11} "
            f"{'recall':>11} {'recall>=10mm':>13} {'lesion prec':>12}")
    print("\n" + head)
    for tool, r in rows.items():
        if r is None or "scores" not in r:
            print(f"{tool:<9} {r.get('status', 'not run') if r else 'not run'}")
            continue
        t, s = r["times"], r["scores"]
        print(f"{tool:<9} {t['train_s']:8.0f} {t['predict_s']:9.0f} {t['total_s']:8.0f} {s['liver_dice']:10.3f} {s['tumour_dice']:11.3f} "
              f"{s['recall_all']:6.2f} ({s['n_lesions']:2d}) {s['recall_10mm']:7.2f} ({s['n_lesions_10mm']:2d}) "
              f"{s['lesion_precision']:6.2f} ({s['n_pred_lesions']:2d})")
    print(f"(total = plan+preprocess+train+predict; recall: detected / reference lesions, (n) reference lesions; "
          f"lesion prec: (n) predicted lesions; budget {budget_s:.0f} s)")
    s, t = rows["autoseg"]["scores"], rows["autoseg"]["times"]
    checks = {f"autoseg total within the {budget_s:.0f} s budget": t["within_budget"],
              f"tumour Dice >= {GOALS['tumour_dice']}": s["tumour_dice"] >= GOALS["tumour_dice"],
              f"lesion recall (>= {MIN_LESION_RADIUS_MM:.0f} mm) >= {GOALS['recall_10mm']}": s["recall_10mm"] >= GOALS["recall_10mm"],
              f"liver Dice >= {GOALS['liver_dice']}": s["liver_dice"] >= GOALS["liver_dice"]}
    for name, ok in checks.items():
        print(f"  goal {name}: {'yes' if ok else 'NO'}")
    rows["autoseg"]["goals"] = checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from autoseg.trainers.budget import parse_duration
    from autoseg.trainers.commands import default_workers

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", default="30m", help="time budget: 90s, 30m, 1h30m (default 30m)")
    p.add_argument("--train-budget", default="auto",
                   help="autoseg's --time-budget and nnU-Net's training time (default auto: --budget minus "
                        "plan+preprocess minus --predict-reserve)")
    p.add_argument("--no-postprocessing", dest="postprocessing", action="store_false",
                   help="skip fold 0's validation and find_best_configuration (autoseg then applies no postprocessing)")
    p.add_argument("--predict-reserve", default="5m", help="with --train-budget auto: time kept for fold validation, postprocessing and predict (default 5m)")
    p.add_argument("--nnunet-venv", type=Path, default=None, help="nnU-Net v2 venv folder (without it nnU-Net is not run)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/autoseg_bench_budget"))
    p.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    p.add_argument("--cases", type=int, default=20, help="synthetic training cases (default 20)")
    p.add_argument("--test-cases", type=int, default=5, help="held-out test cases (default 5)")
    p.add_argument("--size", default="medium", help="synthetic size preset (default medium)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tta", action="store_true", help="predict without mirroring (both tools)")
    p.add_argument("--device", default="cpu", help="device of both tools (default cpu)")
    p.add_argument("--workers", type=int, default=default_workers(), help="nnU-Net's nnUNet_n_proc_DA (default: autoseg's default)")
    p.add_argument("--nnunet-warmup-iters", type=int, default=10, help="iterations per epoch of nnU-Net's 2-epoch warm-up (default 10)")
    a = p.parse_args(argv)
    a.budget_s, a.predict_reserve_s = parse_duration(a.budget), parse_duration(a.predict_reserve)
    a.train_budget = a.train_budget or a.budget
    a.train_budget_s = None if a.train_budget == "auto" else parse_duration(a.train_budget)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    venv = a.nnunet_venv.resolve() if a.nnunet_venv else Path("/nonexistent")
    b = Bench(a.workdir.resolve(), venv, require_nnunet=a.nnunet_venv is not None)
    b.interval_s = MEASURE_INTERVAL_S
    t0 = time.perf_counter()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch version / threads: autoseg {torch_threads(sys.executable)}"
          + (f", nnU-Net venv {torch_threads(str(b.bindir / 'python'))}" if a.nnunet_venv else ""), flush=True)
    write_dataset(b, a)
    rows: dict[str, dict | None] = {"autoseg": run_autoseg(b, a), "nnU-Net": None}
    rows["autoseg"]["scores"] = score(b, rows["autoseg"]["pred"])
    if a.nnunet_venv:
        try:
            rows["nnU-Net"] = run_nnunet(b, a, rows["autoseg"]["times"])
            rows["nnU-Net"]["scores"] = score(b, rows["nnU-Net"]["pred"])
        except SystemExit as e:  # Bench.run exits with the log's tail; keep the autoseg row
            print(f"nnU-Net failed: {e}", file=sys.stderr)
            rows["nnU-Net"] = {"status": "failed (see logs)"}
    print_table(rows, a.budget_s)
    print(f"\nbenchmark wall {time.perf_counter() - t0:.0f} s, load average now {os.getloadavg()[0]:.1f}; logs in {b.logs}")
    if a.json:
        out = {k: ({kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()} if v else "not run") for k, v in rows.items()}
        args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        a.json.write_text(json.dumps({"args": args, "rows": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
