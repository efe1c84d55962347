"""What a minimum lesion size would do to saved predictions (issue 12: is it the small false lesions
that cost the two-stage model tumour Dice?).

For each work folder of ``benchmarks/roi_vs_single.py`` (``raw/<dataset>/labelsTr``, ``labelsTs`` and
``predictions/<model>/``): the smallest 26-connected tumour (label 2) component of the training
labels, in mm³; then, for each model's predictions, tumour components smaller than ``--fraction``
of it set to background, and the mean tumour Dice (cases with neither reference nor predicted
tumour skipped) and the pooled lesion counts before -> after. Nothing is written.

Run::

    python benchmarks/min_lesion_size.py /tmp/roi_vs_single3 /tmp/roi_vs_single4 --fraction 0.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.evaluation.metrics import lesion_detection
from autoseg.model.postprocessing import connected_components

TUMOUR = 2


def read(path: Path) -> tuple[np.ndarray, float]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), float(np.prod(image.GetSpacing()))


def smallest_training_lesion(raw: Path) -> float:
    sizes = []
    for f in sorted((raw / "labelsTr").glob("*.nii.gz")):
        seg, voxel_mm3 = read(f)
        labelled, _ = connected_components(seg == TUMOUR)
        sizes += list(np.bincount(labelled.ravel())[1:] * voxel_mm3)
    return float(min(sizes))


def dice(ref: np.ndarray, pred: np.ndarray) -> float:
    total = ref.sum() + pred.sum()
    return float("nan") if total == 0 else 2.0 * float((ref & pred).sum()) / float(total)


def lesion_counts(ref: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    """(predicted lesions touching a reference one, predicted lesions, reference lesions found, reference lesions)."""
    d = lesion_detection(ref, pred)
    return d["lesion_tp_pred"], d["lesion_n_pred"], d["lesion_detected"], d["lesion_n_ref"]


def filtered(pred: np.ndarray, min_mm3: float, voxel_mm3: float) -> np.ndarray:
    labelled, n = connected_components(pred)
    sizes = np.bincount(labelled.ravel(), minlength=n + 1) * voxel_mm3
    small = np.nonzero(sizes < min_mm3)[0]
    return pred & ~np.isin(labelled, small[small > 0])


def score(raw: Path, pred_dir: Path, min_mm3: float) -> str:
    before, after, counts = [], [], np.zeros((2, 4), dtype=np.int64)
    for f in sorted(pred_dir.glob("*.nii.gz")):
        pred_seg, voxel_mm3 = read(f)
        ref = read(raw / "labelsTs" / f.name)[0] == TUMOUR
        pred = pred_seg == TUMOUR
        kept = filtered(pred, min_mm3, voxel_mm3)
        before.append(dice(ref, pred))
        after.append(dice(ref, kept))
        counts += np.array([lesion_counts(ref, pred), lesion_counts(ref, kept)])
    (b_tp, b_n, b_found, n_ref), (a_tp, a_n, a_found, _) = counts
    return (f"tumour Dice {np.nanmean(before):.3f} -> {np.nanmean(after):.3f}   lesion precision {b_tp}/{b_n} -> "
            f"{a_tp}/{a_n}   lesion recall {b_found}/{n_ref} -> {a_found}/{n_ref}   ({len(before)} cases)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", nargs="+", type=Path, help="work folders of benchmarks/roi_vs_single.py")
    p.add_argument("--fraction", type=float, default=0.5, help="of the smallest training lesion")
    a = p.parse_args()
    for work in a.work:
        raw = next((work / "raw").iterdir())
        min_mm3 = a.fraction * smallest_training_lesion(raw)
        print(f"{work}: smallest training lesion x {a.fraction:g} = {min_mm3:.0f} mm³")
        for pred_dir in sorted(p for p in (work / "predictions").iterdir() if p.is_dir()):
            print(f"  {pred_dir.name:<8} {score(raw, pred_dir, min_mm3)}")


if __name__ == "__main__":
    main()
