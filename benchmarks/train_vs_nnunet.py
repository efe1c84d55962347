"""Training speed (iterations/s) and Dice after the same wall-clock budget: autoseg vs nnU-Net v2.

nnU-Net v2 is a *reference only*, run from its throwaway venv (benchmarks/nnunet_venv.md).
Usage, from the repo root::

    python benchmarks/train_vs_nnunet.py [--nnunet-venv /work/nnunet_venv] [--gpu-memory 0.6] \
        [--workers 1 2] [--epochs 3 --iters 10 --val-iters 2] [--repeats 1] \
        [--budget-s 600 --budget-workers 1] [--predict-step 1.0] [--workdir /tmp/autoseg_bench_train]

Steps (each tool always runs as its own command in a fresh process tree):

1. One synthetic raw dataset (``autoseg.datasets.synthetic``, training + held-out test cases) is
   written once as ``<workdir>/raw/Dataset003_Liver`` and serves both tools.
2. Both tools plan 3d_fullres with the same small memory target so the patch suits a CPU
   (``nnUNetv2_plan_and_preprocess -gpu_memory_target G -overwrite_plans_name nnUNetPlans_cpu``,
   ``autoseg plan_and_preprocess --gpu-memory G``; G = 0.6 gives patch 32x64x64, batch 2, a
   5-stage 32..320 U-Net on the medium preset). The script stops when patch, batch, spacing or
   topology differ. One ``splits_final.json`` (autoseg's 5-fold split) is written into both
   preprocessed folders, so fold 0 trains on the same 16 cases in both tools.
3. Speed: for every worker count W in ``--workers``, each tool trains fold 0 for ``--epochs``
   epochs of ``--iters`` training + ``--val-iters`` validation iterations
   (nnU-Net: ``nnUNetv2_train 3 3d_fullres 0 -tr nnUNetTrainer_autosegBench -p nnUNetPlans_cpu
   -device cpu`` with ``nnUNet_n_proc_DA=W``; autoseg: ``autoseg train --num-workers W
   --no-validation --device cpu``). Both then use W training-augmentation workers and 1
   validation worker. The epoch time each tool logs (training + validation iterations, before
   checkpointing/plotting) of every epoch after the first (warm-up) gives
   ``it/s = iters / epoch time``; the median over epochs and repeats is compared.
   ``nnUNetTrainer_autosegBench`` is a 15-line subclass this script writes into the venv's
   ``variants/benchmarking`` folder: epoch length/count from environment variables, no final
   validation.
4. Dice after a budget (``--budget-s`` > 0): each tool trains for ``floor(budget / its median
   epoch time)`` epochs (so the faster tool gets more epochs and its learning-rate schedule
   still ends), predicts the test cases (no TTA, sliding-window step ``--predict-step``, final
   checkpoint) and both prediction folders are scored by the *same* code,
   ``autoseg evaluate -r labelsTs``. Actual training wall times are printed: the machine is
   shared, so they drift from the budget.

Exit status 1 when a tool fails or the plans differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._measure import Measurement, measure  # noqa: E402

DATASET = "Dataset003_Liver"
PLANS_NAME = "nnUNetPlans_cpu"
TRAINER = "nnUNetTrainer_autosegBench"
TOOLS = ("nnU-Net", "autoseg")

TRAINER_SOURCE = '''"""Written by autoseg's benchmarks/train_vs_nnunet.py (benchmark only): nnUNetTrainer with its
epoch length and count from environment variables and no final validation of the fold."""
import os

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_autosegBench(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get('AUTOSEG_BENCH_EPOCHS', '2'))
        self.num_iterations_per_epoch = int(os.environ.get('AUTOSEG_BENCH_ITERS', '20'))
        self.num_val_iterations_per_epoch = int(os.environ.get('AUTOSEG_BENCH_VAL_ITERS', '5'))

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass
'''


class Bench:
    """Folders, environment and command lines of both tools for one work folder."""

    interval_s = 0.05  # how often measure() samples the process tree's memory

    def __init__(self, workdir: Path, venv: Path, require_nnunet: bool = True):
        self.workdir = workdir
        self.bindir = venv / "bin"
        self.raw = workdir / "raw" / DATASET
        self.nn_pp = workdir / "nnunet_preprocessed" / DATASET
        self.as_pp = workdir / "autoseg_preprocessed" / DATASET
        self.nn_fold = workdir / "nnunet_results" / DATASET / f"{TRAINER}__{PLANS_NAME}__3d_fullres" / "fold_0"
        self.as_fold = workdir / "autoseg_results" / DATASET / "3d_fullres" / "fold_0"
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        if require_nnunet and not (self.bindir / "nnUNetv2_train").exists():
            sys.exit(f"{self.bindir / 'nnUNetv2_train'}: not found; pass --nnunet-venv (see benchmarks/nnunet_venv.md)")

    def env(self, tool: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ, **extra)
        if tool == "nnU-Net":
            env.update(nnUNet_raw=str(self.raw.parent), nnUNet_preprocessed=str(self.nn_pp.parent),
                       nnUNet_results=str(self.workdir / "nnunet_results"))
        else:
            env.update(AUTOSEG_RAW=str(self.raw.parent), AUTOSEG_PREPROCESSED=str(self.as_pp.parent),
                       AUTOSEG_RESULTS=str(self.workdir / "autoseg_results"),
                       PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))  # this checkout's autoseg
        return env

    def run(self, tool: str, cmd: list[str], log_name: str, **extra_env: str) -> Measurement:
        """Run one command under :func:`measure`; exits with the log's tail when it fails.

        Also sets ``self.last_cpu_s``: user + system CPU seconds of the command's process tree
        (every process reaped by the time it ended, workers included; ``RUSAGE_CHILDREN`` grows
        when ``measure`` reaps the command). Unlike wall time it barely depends on how many other
        jobs share the cores.
        """
        log = self.logs / log_name
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = measure(cmd, env=self.env(tool, **extra_env), cwd=self.workdir, log_path=log, interval_s=self.interval_s)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.last_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if m.returncode != 0:
            sys.exit(f"{tool} failed (exit {m.returncode}): {' '.join(cmd)}\nsee {log}:\n" + log.read_text()[-3000:])
        return m

    def autoseg_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "autoseg", *args]


def prepare(b: Bench, a: argparse.Namespace) -> None:
    """Dataset, both plans + preprocessing, shared splits and the nnU-Net trainer (each once)."""
    from autoseg.datasets.synthetic import generate_dataset
    from autoseg.io.json_io import save_json
    from autoseg.datasets.splits import make_splits

    stamp = b.workdir / "prepared.json"
    want = {"cases": a.cases, "test_cases": a.test_cases, "size": a.size, "seed": a.seed, "gpu_memory": a.gpu_memory}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == want):
        for d in (b.raw, b.nn_pp, b.as_pp):
            shutil.rmtree(d, ignore_errors=True)
        generate_dataset(b.raw, n_train=a.cases, n_test=a.test_cases, seed=a.seed, size=a.size)
        g = str(a.gpu_memory)
        b.run("nnU-Net", [str(b.bindir / "nnUNetv2_plan_and_preprocess"), "-d", "3", "-c", "3d_fullres", "-gpu_memory_target", g,
                          "-overwrite_plans_name", PLANS_NAME, "-np", "2", "-npfp", "2", "--no_pbar"], "nnunet_preprocess.txt")
        b.run("autoseg", b.autoseg_cmd("plan_and_preprocess", "-d", "3", "-c", "3d_fullres", "--gpu-memory", g, "-np", "2"),
              "autoseg_preprocess.txt")
        ids = sorted(p.name[: -len(".nii.gz")] for p in (b.raw / "labelsTr").glob("*.nii.gz"))
        splits = make_splits(ids)
        for d in (b.nn_pp, b.as_pp):
            save_json(splits, d / "splits_final.json")
        stamp.write_text(json.dumps(want))
    install_trainer(b.bindir)


def install_trainer(bindir: Path) -> None:
    """Write ``nnUNetTrainer_autosegBench`` into the venv's nnunetv2 (``variants/benchmarking``), once."""
    target = bindir.parent / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "nnunetv2" \
        / "training" / "nnUNetTrainer" / "variants" / "benchmarking" / f"{TRAINER}.py"
    if not target.parent.is_dir():  # the venv's python may differ from ours
        found = list((bindir.parent / "lib").glob("python*/site-packages/nnunetv2/training/nnUNetTrainer/variants/benchmarking"))
        if not found:
            sys.exit(f"nnunetv2 not found under {bindir.parent / 'lib'}")
        target = found[0] / f"{TRAINER}.py"
    if not target.is_file() or target.read_text() != TRAINER_SOURCE:
        target.write_text(TRAINER_SOURCE)


def compare_plans(b: Bench) -> dict:
    """Print both 3d_fullres plans; exits when patch, batch, spacing or topology differ."""
    nn = json.loads((b.nn_pp / f"{PLANS_NAME}.json").read_text())["configurations"]["3d_fullres"]
    ours = json.loads((b.as_pp / "plans.json").read_text())["configurations"]["3d_fullres"]
    arch = nn["architecture"]["arch_kwargs"]
    topo = ours["topology"]
    pairs = {
        "patch": (nn["patch_size"], ours["patch_size"]),
        "batch": (nn["batch_size"], ours["batch_size"]),
        "spacing": ([round(s, 4) for s in nn["spacing"]], [round(s, 4) for s in ours["spacing_mm"]]),
        "features": (arch["features_per_stage"], topo["features_per_stage"]),
        "kernels": (arch["kernel_sizes"], topo["kernel_sizes"]),
        "strides": (arch["strides"], topo["strides"]),
        "convs": ((arch["n_conv_per_stage"], arch["n_conv_per_stage_decoder"]),
                  (topo["n_conv_per_stage_encoder"], topo["n_conv_per_stage_decoder"])),
    }
    print(f"3d_fullres plan: patch {ours['patch_size']}, batch {ours['batch_size']}, spacing {pairs['spacing'][1]} mm, "
          f"features {topo['features_per_stage']}, strides {topo['strides']}")
    differ = [k for k, (x, y) in pairs.items() if json.dumps(x) != json.dumps(y)]
    if differ:
        for k in differ:
            print(f"  {k}: nnU-Net {pairs[k][0]} vs autoseg {pairs[k][1]}")
        sys.exit("PLANS DIFFER: fix the memory target or edit one plans file")
    print("plans agree (patch, batch, spacing, topology)")
    return ours


def epoch_times(tool: str, fold: Path) -> list[float]:
    """Per-epoch times (s) from the tool's own log: nnU-Net 'Epoch time: X s', autoseg '... X.Ys'."""
    if tool == "nnU-Net":
        text = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
        return [float(v) for v in re.findall(r"Epoch time: ([\d.]+) s", text)]
    text = (fold / "training_log.txt").read_text()
    return [float(v) for v in re.findall(r"([\d.]+)s$", text, flags=re.M)]


def train(b: Bench, tool: str, workers: int, epochs: int, iters: int, val_iters: int, tag: str) -> tuple[Measurement, list[float]]:
    """One fresh training run of fold 0; returns its measurement and logged epoch times."""
    if tool == "nnU-Net":
        shutil.rmtree(b.nn_fold.parent, ignore_errors=True)
        cmd = [str(b.bindir / "nnUNetv2_train"), "3", "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS_NAME, "-device", "cpu"]
        m = b.run(tool, cmd, f"train_nnunet_{tag}.txt", nnUNet_n_proc_DA=str(workers), AUTOSEG_BENCH_EPOCHS=str(epochs),
                  AUTOSEG_BENCH_ITERS=str(iters), AUTOSEG_BENCH_VAL_ITERS=str(val_iters))
        return m, epoch_times(tool, b.nn_fold)
    shutil.rmtree(b.as_fold.parent, ignore_errors=True)
    cmd = b.autoseg_cmd("train", "-d", "3", "-c", "3d_fullres", "-f", "0", "--epochs", str(epochs), "--iters-per-epoch", str(iters),
                        "--val-iters", str(val_iters), "--num-workers", str(workers), "--device", "cpu", "--no-validation", "--restart")
    m = b.run(tool, cmd, f"train_autoseg_{tag}.txt")
    return m, epoch_times(tool, b.as_fold)


def speed(b: Bench, a: argparse.Namespace) -> tuple[dict, dict]:
    """Per (tool, workers): steady epoch times (epoch 0 dropped) and CPU seconds per steady epoch.

    CPU per epoch = (CPU of an ``a.epochs`` run - CPU of a 1-epoch run) / (a.epochs - 1): start-up,
    warm-up epoch and shutdown cancel out. The 1-epoch run is done once per (tool, workers).
    Runs alternate between the tools so that a change of machine load hits both.
    """
    steady: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    short: dict[tuple[str, int], float] = {}
    for rep in range(a.repeats):
        for w in a.workers:
            for tool in TOOLS:
                if (tool, w) not in short:
                    train(b, tool, w, 1, a.iters, a.val_iters, f"w{w}_short")
                    short[(tool, w)] = b.last_cpu_s
                load0 = os.getloadavg()[0]
                m, times = train(b, tool, w, a.epochs, a.iters, a.val_iters, f"w{w}_r{rep}")
                if len(times) != a.epochs:
                    sys.exit(f"{tool}: expected {a.epochs} epoch times in its log, found {times}")
                steady.setdefault((tool, w), []).extend(times[1:])
                cpu_epoch = (b.last_cpu_s - short[(tool, w)]) / (a.epochs - 1)
                cpu.setdefault((tool, w), []).append(cpu_epoch)
                print(f"  {tool:<8} workers {w} run {rep + 1}: epoch times {times} s, CPU {cpu_epoch:.0f} s/epoch "
                      f"(run {b.last_cpu_s:.0f} s, 1-epoch run {short[(tool, w)]:.0f} s), wall {m.wall_s:.0f} s, "
                      f"peak RSS {m.peak_rss_mb:.0f} MB, load {load0:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    return steady, cpu


def print_speed(steady: dict, cpu: dict, iters: int, val_iters: int) -> None:
    print(f"\n{'tool':<9} {'workers':>7} {'epoch s':>8} {'it/s':>7} {'ratio':>6} {'CPU s/it':>9} {'CPU ratio':>10}")
    for w in sorted({w for _, w in steady}):
        its = {t: iters / statistics.median(steady[(t, w)]) for t in TOOLS}
        cpu_it = {t: statistics.median(cpu[(t, w)]) / iters for t in TOOLS}
        for t in TOOLS:
            r = f"{its[t] / its['nnU-Net']:6.2f}" if t == "autoseg" else ""
            rc = f"{cpu_it['nnU-Net'] / cpu_it[t]:10.2f}" if t == "autoseg" else ""
            print(f"{t:<9} {w:7d} {statistics.median(steady[(t, w)]):8.1f} {its[t]:7.3f} {r:>6} {cpu_it[t]:9.2f} {rc:>10}")
    print(f"(it/s = {iters} training iterations / median epoch time, each epoch also runs {val_iters} validation "
          f"iterations; CPU s/it = CPU seconds of the process tree per epoch / {iters}; ratios = nnU-Net cost / "
          f"autoseg cost, > 1 means autoseg is faster; target >= 1.2)")


def predict_and_evaluate(b: Bench, tool: str, step: float) -> dict:
    """Predict imagesTs with the final checkpoint (no TTA); score with autoseg evaluate. Returns the summary."""
    out = b.workdir / f"pred_{'nnunet' if tool == 'nnU-Net' else 'autoseg'}"
    shutil.rmtree(out, ignore_errors=True)
    if tool == "nnU-Net":
        cmd = [str(b.bindir / "nnUNetv2_predict"), "-i", str(b.raw / "imagesTs"), "-o", str(out), "-d", "3", "-c", "3d_fullres",
               "-p", PLANS_NAME, "-tr", TRAINER, "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu",
               "-step_size", str(step), "--disable_tta", "-npp", "1", "-nps", "1"]
    else:
        cmd = b.autoseg_cmd("predict", "-i", str(b.raw / "imagesTs"), "-o", str(out), "-d", "3", "-c", "3d_fullres", "-f", "0",
                            "--device", "cpu", "--step", str(step), "--no-tta", "--no-postprocessing", "--export-threads", "1", "--overwrite")
    m = b.run(tool, cmd, f"predict_{out.name}.txt")
    print(f"  {tool:<8} predicted {len(list(out.glob('*.nii.gz')))} test cases in {m.wall_s:.0f} s")
    summary = out / "autoseg_summary.json"
    b.run("autoseg", b.autoseg_cmd("evaluate", "-r", str(b.raw / "labelsTs"), "-p", str(out), "-o", str(summary),
                                   "--dataset-json", str(b.raw / "dataset.json"), "-np", "1"), f"evaluate_{out.name}.txt")
    return json.loads(summary.read_text())


def budget(b: Bench, a: argparse.Namespace, steady: dict[tuple[str, int], list[float]]) -> None:
    """Train each tool for the epochs that fit ``a.budget_s``, predict the test cases, print Dice."""
    rows = []
    for tool in TOOLS:
        epoch_s = statistics.median(steady[(tool, a.budget_workers)])
        epochs = max(1, math.floor(a.budget_s / epoch_s))
        load0 = os.getloadavg()[0]
        m, times = train(b, tool, a.budget_workers, epochs, a.iters, a.val_iters, "budget")
        print(f"  {tool:<8} {epochs} epochs x {a.iters} it: epoch times sum {sum(times):.0f} s (budget {a.budget_s:.0f} s), "
              f"process wall {m.wall_s:.0f} s, load {load0:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
        s = predict_and_evaluate(b, tool, a.predict_step)
        rows.append((tool, epochs, sum(times), s["mean"]["1"]["Dice"], s["mean"]["2"]["Dice"], s["foreground_mean"]["Dice"]))
    print(f"\n{'tool':<9} {'epochs':>6} {'iters':>6} {'train s':>8} {'liver Dice':>11} {'tumour Dice':>12} {'mean Dice':>10}")
    for tool, epochs, secs, d1, d2, dm in rows:
        print(f"{tool:<9} {epochs:6d} {epochs * a.iters:6d} {secs:8.0f} {d1:11.3f} {d2:12.3f} {dm:10.3f}")


def torch_threads(python: str) -> str:
    res = subprocess.run([python, "-c", "import torch; print(torch.__version__, torch.get_num_threads())"],
                         capture_output=True, text=True)
    return res.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nnunet-venv", type=Path, default=Path("/work/nnunet_venv"), help="nnU-Net v2 venv folder")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/autoseg_bench_train"))
    p.add_argument("--cases", type=int, default=20, help="synthetic training cases (default 20)")
    p.add_argument("--test-cases", type=int, default=3, help="held-out test cases for the Dice (default 3)")
    p.add_argument("--size", default="medium", choices=["tiny", "small", "medium", "large"], help="synthetic size preset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-memory", type=float, default=0.6, help="memory target (GB) of both planners (default 0.6)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="data-augmentation worker counts to measure")
    p.add_argument("--epochs", type=int, default=3, help="epochs per speed run; the first is warm-up (default 3)")
    p.add_argument("--iters", type=int, default=10, help="training iterations per epoch (default 10)")
    p.add_argument("--val-iters", type=int, default=2, help="validation iterations per epoch (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="speed runs per tool and worker count")
    p.add_argument("--budget-s", type=float, default=600, help="training budget per tool for the Dice (0: skip)")
    p.add_argument("--budget-workers", type=int, default=None, help="workers for the budget runs (default: first of --workers)")
    p.add_argument("--predict-step", type=float, default=1.0, help="sliding-window step of both predictors (default 1.0)")
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is warm-up)")
    a.budget_workers = a.workers[0] if a.budget_workers is None else a.budget_workers
    if a.budget_workers not in a.workers:
        p.error("--budget-workers must be one of --workers")
    b = Bench(a.workdir.resolve(), a.nnunet_venv.resolve())
    t0 = time.perf_counter()
    prepare(b, a)
    compare_plans(b)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch version / default threads: "
          f"autoseg {torch_threads(sys.executable)}, nnU-Net venv {torch_threads(str(b.bindir / 'python'))} "
          f"(nnUNetv2_train -device cpu sets cpu_count threads)")
    steady, cpu = speed(b, a)
    print_speed(steady, cpu, a.iters, a.val_iters)
    if a.budget_s > 0:
        budget(b, a, steady)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
