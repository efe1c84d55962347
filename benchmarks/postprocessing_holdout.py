"""Postprocessing decided on one half of a set of predictions, scored on the other half (issue 12:
do the rules ``find_best_configuration`` chooses help, lesion recall included, on cases they were
not chosen on?).

For each ``--work`` folder of ``benchmarks/roi_vs_single.py`` and each model in its
``predictions/``: the rules (:func:`autoseg.evaluation.postprocessing.determine_postprocessing`, the
same call model selection makes on cross-validation predictions) are decided on the first half of
the test cases, written with those rules applied to the second half into ``<work>/holdout/<model>/``,
and both versions of the second half are scored by ``autoseg evaluate -l 1 2`` (liver/tumour Dice,
pooled lesion precision and recall).

Run::

    python benchmarks/postprocessing_holdout.py /tmp/roi_vs_single3 /tmp/roi_vs_single4 /tmp/roi_vs_single5
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from autoseg.evaluation.postprocessing import determine_postprocessing
from autoseg.io.images import read_image, write_image
from autoseg.model.postprocessing import apply_postprocessing


def copy_half(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, folder / f.name)


def evaluate(ref: Path, pred: Path) -> str:
    subprocess.run([sys.executable, "-m", "autoseg", "evaluate", "-r", str(ref), "-p", str(pred), "-l", "1", "2"],
                   check=True, capture_output=True)
    mean = json.loads((pred / "summary.json").read_text())["mean"]
    liver, tumour = mean["1"], mean["2"]
    return (f"liver {liver['Dice']:.3f}  tumour {tumour['Dice']:.3f}  lesion precision "
            f"{tumour['lesion_tp_pred'] / max(tumour['lesion_n_pred'], 1e-9):.3f}  lesion recall "
            f"{tumour['lesion_detected'] / max(tumour['lesion_n_ref'], 1e-9):.3f}")


def run(work: Path, model: Path) -> None:
    raw = next((work / "raw").iterdir())
    cases = sorted(model.glob("*.nii.gz"))
    first, second = cases[: len(cases) // 2], cases[len(cases) // 2:]
    out = work / "holdout" / model.name
    shutil.rmtree(out, ignore_errors=True)
    for name, files in (("decide_pred", first), ("raw_pred", second)):
        copy_half(files, out / name)
    copy_half([raw / "labelsTs" / f.name for f in first], out / "decide_ref")
    copy_half([raw / "labelsTs" / f.name for f in second], out / "score_ref")
    rules = determine_postprocessing(out / "decide_ref", out / "decide_pred", [1, 2])
    (out / "post_pred").mkdir()
    for f in second:
        seg, geometry = read_image(f, dtype=np.int16)
        write_image(apply_postprocessing(seg, rules).astype(np.uint8), geometry,
                    out / "post_pred" / f.name)
    print(f"  {model.name:<7} rules from {len(first)} cases: foreground LCC {rules.keep_largest_foreground}, label LCC "
          f"{rules.keep_largest_for_labels}")
    print(f"          {len(second)} other cases, as predicted:  {evaluate(out / 'score_ref', out / 'raw_pred')}")
    print(f"          {len(second)} other cases, with the rules: {evaluate(out / 'score_ref', out / 'post_pred')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", nargs="+", type=Path, help="work folders of benchmarks/roi_vs_single.py")
    a = p.parse_args()
    for work in a.work:
        print(work)
        for model in sorted(d for d in (work / "predictions").iterdir() if d.is_dir()):
            run(work, model)


if __name__ == "__main__":
    main()
