"""Cost and reach of the truncated-file check (:mod:`autoseg.io.integrity`).

Prints, for one ``.nii.gz`` (default: the shared example CT, else a synthetic 60 x 256 x 256
int16 volume written to a temp folder):

* the time of ``check_complete`` (header, then the whole gzip stream decompressed and CRC-checked) vs ITK's full read;
* how many of N random single-bit flips in the compressed data ``read_image`` (and ITK alone)
  refuses, reads as different voxels (silently wrong) or reads identically.

Usage::

    python3 benchmarks/file_checks.py [FILE.nii.gz] [--flips 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoseg.errors import AutosegError  # noqa: E402
from autoseg.io.images import read_image  # noqa: E402
from autoseg.io.integrity import _gunzipped_size, check_complete  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example_ct" / "example_ct.nii.gz"


def _best_of(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _flips(path: Path, n: int, tmp: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Outcomes of ``n`` single-bit flips for autoseg's ``read_image`` and for ITK alone."""
    rng = np.random.default_rng(0)
    data, ref = path.read_bytes(), read_image(path, dtype=None)[0]
    ours, itk = ({"refused": 0, "silently wrong": 0, "identical": 0} for _ in range(2))
    for _ in range(n):
        b = bytearray(data)
        b[int(rng.integers(100, len(data) - 8))] ^= 1 << int(rng.integers(0, 8))  # past the gzip header, before the trailer
        flipped = tmp / "flip.nii.gz"
        flipped.write_bytes(bytes(b))
        for out, read in ((ours, lambda: read_image(flipped, dtype=None)[0]),
                          (itk, lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(flipped))))):
            try:
                arr = read()
            except (AutosegError, RuntimeError):
                out["refused"] += 1
                continue
            out["identical" if arr.shape == ref.shape and np.array_equal(arr, ref) else "silently wrong"] += 1
    return ours, itk


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?", default=None)
    ap.add_argument("--flips", type=int, default=40)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = Path(a.file) if a.file else EXAMPLE
        if not path.is_file():
            path = tmp / "synthetic.nii.gz"
            vol = np.random.default_rng(0).normal(0, 100, (60, 256, 256)).astype(np.int16)
            sitk.WriteImage(sitk.GetImageFromArray(vol), str(path))
        n = _gunzipped_size(path)
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, {n / 1e6:.1f} MB decompressed)")
        check, itk = _best_of(lambda: check_complete(path)), _best_of(lambda: sitk.ReadImage(str(path)))
        print(f"check_complete {check * 1000:.0f} ms; ITK read {itk * 1000:.0f} ms; ratio {check / itk:.2f} (best of 5)")
        ours, itk = _flips(path, a.flips, tmp)
        print(f"{a.flips} single-bit flips: autoseg {ours}; ITK alone {itk}")


if __name__ == "__main__":
    main()
