"""Two-stage (3d_roi_fullres) vs whole-image (3d_fullres) prediction of a large CT on the CPU.

Issue 12's target: the synthetic ``large`` CT (512 x 512 x 300, 0.8 mm), 1 fold, mirroring TTA,
2 cores: two-stage wall time <= 90 s per case end to end, peak RSS <= 2 GB, masks agreeing with
the whole-image model's to liver Dice >= 0.98 when both models are equally trained.

What it does, every step an ordinary ``autoseg`` command in a fresh process (measured with
``_measure.measure``: wall time and peak RSS of the whole process tree):

1. ``synthetic --size large`` (``--train-cases`` training cases + 1 test case), ``plan_and_preprocess``
   (``--target``), and training of the first stage, ``3d_fullres`` and ``3d_roi_fullres`` for
   ``--train-budget`` each (``--time-budget``; ``0`` trains one epoch of one iteration: untrained
   networks, fine for timing since a forward pass costs the same whatever the weights, but then
   the agreement figure means nothing and is not printed).
2. The parts of the two-stage path, timed one by one: reading the image, stage 1 on the whole image
   (``predict -c <first stage>``), the box (``roi_box`` on stage 1's mask), stage 2 inside the box
   with export (``predict -c 3d_roi_fullres --prev-stage-predictions``).
3. The two-stage path in one command (``predict -c 3d_roi_fullres``) and the whole-image model
   (``predict -c 3d_fullres``); liver/tumour Dice of the two-stage masks against the whole-image
   masks (``autoseg evaluate``) when trained.

Run (about an hour on 2 cores with the defaults, most of it training)::

    python benchmarks/roi_predict.py --work /tmp/roi_bench --train-budget 10m
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure  # noqa: E402

DATASET = "Dataset042_RoiBench"  # made with -d 42


def autoseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoseg", *args]


def step(title: str, cmd: list[str], env: dict, log_dir: Path) -> float:
    m = measure(cmd, env=env, log_path=log_dir / f"{title.replace(' ', '_')}.log")
    print(f"  {title:<34} {m.wall_s:8.1f} s   peak RSS {m.peak_rss_mb:7.0f} MB", flush=True)
    if m.returncode != 0:
        raise SystemExit(f"{title} failed (exit {m.returncode}); see {log_dir}")
    return m.wall_s


def prepare(a: argparse.Namespace, env: dict, logs: Path) -> str:
    """Data, plans and the three trained models; returns the first stage's configuration."""
    import json
    step("synthetic data", autoseg("synthetic", "-d", DATASET, "-n", str(a.train_cases), "--num-test", "1", "--size", "large"), env, logs)
    step("plan_and_preprocess", autoseg("plan_and_preprocess", "-c", "3d_fullres", "3d_lowres", "3d_roi_fullres",
                                        "--target", a.target, "-np", "1"), env, logs)
    plans = json.loads((Path(env["AUTOSEG_PREPROCESSED"]) / DATASET / "plans.json").read_text())
    roi = plans["configurations"].get("3d_roi_fullres")
    if roi is None:
        raise SystemExit("3d_roi_fullres was not planned for this data (the foreground fills too much of the image)")
    first = roi["previous_stage"]
    schedule = ["--time-budget", a.train_budget] if a.train_budget != "0" else ["--epochs", "1", "--iters-per-epoch", "1"]
    for conf in dict.fromkeys([first, "3d_fullres", "3d_roi_fullres"]):
        step(f"train {conf}", autoseg("train", "-c", conf, "-f", "0", "--no-validation", *schedule), env, logs)
    return first


def parts(first: str, image: Path, work: Path, env: dict, logs: Path) -> None:
    """The two-stage path's parts, one at a time."""
    import os
    os.environ.update(env)
    from autoseg.io.images import read_image
    from autoseg.preprocessing.roi import roi_box
    t0 = time.time()
    _, geom = read_image(image)
    print(f"  {'read the image (in-process)':<34} {time.time() - t0:8.1f} s")
    s1 = work / "stage1"
    step(f"stage 1 ({first}, whole image)", autoseg("predict", "-c", first, "-f", "0", "-i", str(image.parent),
                                                    "-o", str(s1), "--overwrite"), env, logs)
    mask, _ = read_image(next(s1.glob("*.nii.gz")))
    t0 = time.time()
    box, n = roi_box(mask, geom.spacing_zyx, 10.0)
    size = [b - a for a, b in box] if box else geom.shape_zyx
    print(f"  {'box (roi_box on the mask)':<34} {time.time() - t0:8.1f} s   {n} component(s), box {size} of {geom.shape_zyx}")
    step("stage 2 in the box + export", autoseg("predict", "-c", "3d_roi_fullres", "-f", "0", "-i", str(image.parent),
                                                "-o", str(work / "stage2"), "--prev-stage-predictions", str(s1), "--overwrite"), env, logs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/roi_bench"))
    p.add_argument("--train-cases", type=int, default=4)
    p.add_argument("--train-budget", default="10m", help="per model; 0 = untrained (timing only)")
    p.add_argument("--target", default="cpu", choices=["cpu", "gpu"])
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    logs = a.work / "logs"
    logs.mkdir(exist_ok=True)
    env = {"AUTOSEG_RAW": str(a.work / "raw"), "AUTOSEG_PREPROCESSED": str(a.work / "pre"), "AUTOSEG_RESULTS": str(a.work / "res")}
    import os
    env = {**os.environ, **env}
    first = prepare(a, env, logs)
    images = a.work / "raw" / DATASET / "imagesTs"
    image = sorted(images.glob("*_0000.nii.gz"))[0]
    print("\ntwo-stage path, part by part (1 fold, mirroring TTA):")
    parts(first, image, a.work, env, logs)
    print("\nend to end (1 fold, mirroring TTA):")
    two = step("two-stage: predict -c 3d_roi_fullres", autoseg("predict", "-c", "3d_roi_fullres", "-f", "0", "-i", str(images),
                                                              "-o", str(a.work / "two_stage"), "--overwrite"), env, logs)
    full = step("whole image: predict -c 3d_fullres", autoseg("predict", "-c", "3d_fullres", "-f", "0", "-i", str(images),
                                                              "-o", str(a.work / "whole"), "--overwrite"), env, logs)
    print(f"  two-stage / whole-image time: {two / full:.2f}x   [goal: two-stage <= 90 s]")
    if a.train_budget != "0":
        step("agreement (evaluate)", autoseg("evaluate", "-r", str(a.work / "whole"), "-p", str(a.work / "two_stage"),
                                             "-o", str(a.work / "agreement.json")), env, logs)
        print(f"  two-stage vs whole-image masks: {a.work / 'agreement.json'}  [goal: liver Dice >= 0.98]")


if __name__ == "__main__":
    main()
