"""The best liver Dice a model working on a coarser grid can reach: a reference organ mask (all
foreground labels) resampled to ``--spacing`` and back to its own grid (linear interpolation of the
mask, then > 0.5, as a perfect coarse model's probabilities would be), scored against itself.

Issue 12: the CPU plan's whole-image ``3d_fullres`` of the large CT works at 7.1 x 3.6 x 3.6 mm, the
two-stage model's stage 2 at 2.5 x 1.28 x 1.28 mm; even perfect, the two can agree only to about the
lower of their two ceilings.

Run::

    python benchmarks/grid_ceiling.py /tmp/roi_bench/raw/Dataset042_RoiBench/labelsTs/liver_test_000.nii.gz \
        --spacing 7.1 3.6 3.6 --spacing 2.5 1.28 1.28
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk


def resample(image: sitk.Image, spacing_xyz: list[float], size_xyz: list[int]) -> sitk.Image:
    return sitk.Resample(image, [int(n) for n in size_xyz], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         spacing_xyz, image.GetDirection(), 0.0, sitk.sitkFloat32)


def ceiling(label_path: str, spacing_zyx: list[float]) -> tuple[float, list[int]]:
    ref = sitk.ReadImage(label_path)
    organ = sitk.Cast(sitk.GetImageFromArray((sitk.GetArrayFromImage(ref) > 0).astype(np.float32)), sitk.sitkFloat32)
    organ.CopyInformation(ref)
    coarse_spacing = list(reversed(spacing_zyx))
    coarse_size = [int(round(n * s / c)) for n, s, c in zip(ref.GetSize(), ref.GetSpacing(), coarse_spacing)]
    coarse = resample(organ, coarse_spacing, coarse_size)
    back = sitk.GetArrayFromImage(resample(coarse, list(ref.GetSpacing()), list(ref.GetSize()))) > 0.5
    truth = sitk.GetArrayFromImage(organ) > 0.5
    dice = 2.0 * float((truth & back).sum()) / float(truth.sum() + back.sum())
    return dice, list(reversed(coarse_size))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("label", help="a reference label map (NIfTI, NRRD, MHA)")
    p.add_argument("--spacing", nargs=3, type=float, action="append", required=True, metavar=("Z", "Y", "X"),
                   help="a grid in mm, z y x (repeat for several)")
    a = p.parse_args()
    for spacing in a.spacing:
        dice, shape = ceiling(a.label, spacing)
        print(f"{' x '.join(f'{s:g}' for s in spacing)} mm (grid {' x '.join(map(str, shape))}): organ Dice {dice:.4f}")


if __name__ == "__main__":
    main()
