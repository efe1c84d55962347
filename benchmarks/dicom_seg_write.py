"""Time of writing and reading back a DICOM SEG for a big CT series (what --output-format dicom-seg adds).

Usage, from the repo root::

    python benchmarks/dicom_seg_write.py [--slices 300] [--workdir /tmp/autoseg_seg_bench]

Writes a synthetic 512 x 512 x N CT series (int16, one file per slice, SimpleITK) and its
liver/tumour labels once, then times :func:`autoseg.io.dicom_seg.write_dicom_seg` (reading the
series headers, matching slices by position, encoding the frames) and :func:`read_dicom_seg`,
checks the round trip is exact, and prints the SEG's size and frame count.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from autoseg.datasets.synthetic import make_case  # noqa: E402
from autoseg.io.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from autoseg.io.images import read_image  # noqa: E402
from dicom_series import write_dicom_series  # noqa: E402

LABELS = {"background": 0, "liver": 1, "tumor": 2}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/autoseg_seg_bench"))
    a = p.parse_args()
    series = a.workdir / f"ct_{a.slices}"
    labels_file = a.workdir / f"labels_{a.slices}.npy"
    if not labels_file.is_file():
        img, seg, geom = make_case((a.slices, 512, 512), (1.0, 0.8, 0.8), np.random.default_rng(0))
        write_dicom_series(series, img, geom)
        np.save(labels_file, seg)
    seg = np.load(labels_file)
    _, geom = read_image(series)
    print(f"series {series}: {geom.shape_zyx} voxels, load average {os.getloadavg()}")
    t = time.perf_counter()
    out = write_dicom_seg(seg, geom, series, LABELS, a.workdir / "seg.dcm")
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    back = read_dicom_seg(out, geom, LABELS)
    read_s = time.perf_counter() - t
    import pydicom
    frames = int(pydicom.dcmread(out, stop_before_pixels=True).NumberOfFrames)
    print(f"write {write_s:.1f} s, read back {read_s:.1f} s, {frames} frames, {out.stat().st_size / 1e6:.1f} MB, "
          f"round trip exact: {bool((back == seg).all())}")
    return 0 if (back == seg).all() else 1


if __name__ == "__main__":
    sys.exit(main())
