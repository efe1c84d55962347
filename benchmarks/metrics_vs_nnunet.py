"""Dice/IoU of autoseg vs nnU-Net v2's evaluation on the same random label pairs.

nnU-Net v2 is a *reference only*, run in a subprocess under its throwaway venv
(benchmarks/nnunet_venv.md). Usage, from the repo root::

    python benchmarks/metrics_vs_nnunet.py --nnunet-python /work/nnunet_venv/bin/python [--cases 24]

Makes ``--cases`` reference/prediction pairs with labels 0 (background), 1 (liver), 2 (tumour)
as NIfTI in a temp dir, scores every case for labels 1, 2 and the region {1, 2} with
``nnunetv2.evaluation.evaluate_predictions.compute_metrics`` and with
``autoseg.evaluation.metrics``, and prints the largest absolute difference (target < 1e-6).
Exit status 1 when it is larger or when the two disagree on which values are NaN.

The pairs cover the edge cases that bite: a label empty in both (Dice/IoU NaN in both tools),
empty in the reference only or the prediction only (0), single-voxel lesions, a whole-volume
prediction, an all-background case.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REGIONS: list[tuple[int, ...]] = [(1,), (2,), (1, 2)]
SHAPE_ZYX = (20, 40, 44)
SPACING_ZYX = (2.5, 0.8, 0.8)

# Runs under the nnU-Net venv python: argv[1] = JSON list of [case_id, ref_file, pred_file],
# argv[2] = output JSON. Regions are passed to nnU-Net as int or tuple, exactly as its
# dataset.json "regions" mechanism does.
_NNUNET_SNIPPET = r"""
import json, sys
from nnunetv2.evaluation.evaluate_predictions import compute_metrics
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
regions = [1, 2, (1, 2)]
rw = SimpleITKIO()
out = {}
for case_id, ref, pred in json.load(open(sys.argv[1])):
    res = compute_metrics(ref, pred, rw, regions)
    out[case_id] = {"+".join(str(v) for v in ((r,) if isinstance(r, int) else r)):
                    {k: float(res["metrics"][r][k]) for k in ("Dice", "IoU", "TP", "FP", "FN")}
                    for r in regions}
json.dump(out, open(sys.argv[2], "w"), indent=1)
"""


def _ellipsoid(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean ellipsoid; ``centre``/``radii`` in voxels, (Z, Y, X)."""
    grid = np.indices(shape, dtype=np.float64)
    dist = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(len(shape)))
    return dist <= 1.0


def _random_reference(rng: np.random.Generator) -> np.ndarray:
    """Liver ellipsoid (1) with 0-3 tumour ellipsoids (2) and maybe single-voxel lesions inside it."""
    seg = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    shape = np.array(SHAPE_ZYX)
    liver = _ellipsoid(SHAPE_ZYX, shape / 2 + rng.uniform(-3, 3, 3), shape * rng.uniform(0.2, 0.4, 3))
    seg[liver] = 1
    liver_voxels = np.argwhere(liver)
    for _ in range(rng.integers(0, 4)):
        centre = liver_voxels[rng.integers(len(liver_voxels))]
        seg[_ellipsoid(SHAPE_ZYX, centre, rng.uniform(1.0, 4.0, 3)) & liver] = 2
    for _ in range(rng.integers(0, 3)):  # tiny lesions: one voxel each
        seg[tuple(liver_voxels[rng.integers(len(liver_voxels))])] = 2
    return seg


def _perturb(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible prediction: shifted, with random voxel flips and maybe a spurious small blob."""
    pred = np.roll(ref, tuple(int(s) for s in rng.integers(-2, 3, 3)), axis=(0, 1, 2)).copy()
    flips = rng.random(ref.shape) < rng.uniform(0.0, 0.02)
    pred[flips] = rng.integers(0, 3, int(flips.sum()))
    if rng.random() < 0.5:
        pred[tuple(rng.integers(0, s) for s in ref.shape)] = 2
    return pred


def make_pairs(n_cases: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n_cases`` (case_id, ref, pred) uint8 (Z, Y, X) pairs; the first few are fixed edge cases."""
    rng = np.random.default_rng(seed)
    pairs = []
    empty = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    no_tumour = _random_reference(rng)
    no_tumour[no_tumour == 2] = 1
    same = _random_reference(rng)
    same[tuple(np.argwhere(same == 1)[0])] = 2  # at least one tumour voxel: Dice 1, not NaN
    edge_cases = [
        ("all_background", empty, empty.copy()),                      # every region NaN
        ("tumour_absent_both", no_tumour, _perturb(no_tumour, rng) % 2),  # label 2 NaN
        ("tumour_missed", _random_reference(rng), no_tumour.copy()),  # pred empty for 2
        ("tumour_hallucinated", no_tumour.copy(), _random_reference(rng)),  # ref empty for 2
        ("everything_liver", _random_reference(rng), np.ones(SHAPE_ZYX, dtype=np.uint8)),
        ("identical", same, same.copy()),
    ]
    pairs.extend(edge_cases[:n_cases])
    for i in range(len(pairs), n_cases):
        ref = _random_reference(rng)
        pairs.append((f"random_{i:03d}", ref, _perturb(ref, rng)))
    return pairs


def _write_nifti(seg_zyx: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(seg_zyx)
    img.SetSpacing(tuple(float(s) for s in reversed(SPACING_ZYX)))  # SimpleITK wants (X, Y, Z)
    sitk.WriteImage(img, str(path), True)


def _autoseg_case(ref: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Adapter: autoseg's Dice/IoU (+ counts) for every region of one case, keyed "1", "2", "1+2".

    The one place that knows autoseg's metrics API; arrays are (Z, Y, X) label maps.
    """
    from autoseg.evaluation.metrics import compute_case_metrics

    res = compute_case_metrics(ref, pred, SPACING_ZYX, REGIONS, tumor_label=None, surface_distances_mm=False)
    return {key: {k: float(m[k]) for k in ("Dice", "IoU", "TP", "FP", "FN")} for key, m in res.items()}


def _nnunet_metrics(nnunet_python: str, files: list[list[str]], work: Path) -> dict:
    (work / "cases.json").write_text(json.dumps(files))
    out = work / "nnunet_metrics.json"
    subprocess.run([nnunet_python, "-c", _NNUNET_SNIPPET, str(work / "cases.json"), str(out)], check=True)
    return json.loads(out.read_text())


def compare(ours: dict, theirs: dict) -> tuple[float, list[str]]:
    """Largest |ours - theirs| over cases, regions and metrics; list of NaN-pattern mismatches."""
    worst, nan_mismatch = 0.0, []
    for case_id, regions in theirs.items():
        for key, metrics in regions.items():
            for name, ref_value in metrics.items():
                value = ours[case_id][key][name]
                if math.isnan(ref_value) or math.isnan(value):
                    if math.isnan(ref_value) != math.isnan(value):
                        nan_mismatch.append(f"{case_id}/{key}/{name}: autoseg {value} nnU-Net {ref_value}")
                    continue
                worst = max(worst, abs(value - ref_value))
    return worst, nan_mismatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnunet-python", required=True, help="python of the nnU-Net venv")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()

    from autoseg.io.images import read_image

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "ref").mkdir()
        (work / "pred").mkdir()
        files, ours = [], {}
        for case_id, ref, pred in make_pairs(args.cases, args.seed):
            ref_file, pred_file = work / "ref" / f"{case_id}.nii.gz", work / "pred" / f"{case_id}.nii.gz"
            _write_nifti(ref, ref_file)
            _write_nifti(pred, pred_file)
            files.append([case_id, str(ref_file), str(pred_file)])
            # Score what was written, read back through autoseg's own IO.
            ref_read, _ = read_image(ref_file, dtype=np.uint8)
            pred_read, _ = read_image(pred_file, dtype=np.uint8)
            ours[case_id] = _autoseg_case(ref_read, pred_read)
        theirs = _nnunet_metrics(args.nnunet_python, files, work)

    worst, nan_mismatch = compare(ours, theirs)
    n_nan = sum(math.isnan(m["Dice"]) for regions in theirs.values() for m in regions.values())
    print(f"{len(theirs)} cases x {len(REGIONS)} regions (labels 1, 2, region 1+2); "
          f"{n_nan} Dice values NaN (label empty in both) in nnU-Net")
    print(f"largest |autoseg - nnU-Net| over Dice, IoU, TP, FP, FN: {worst:.3g} (target < {args.tolerance:g})")
    for line in nan_mismatch:
        print(f"NaN mismatch: {line}")
    ok = worst < args.tolerance and not nan_mismatch
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
