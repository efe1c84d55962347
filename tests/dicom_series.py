"""Write small synthetic CT DICOM series with SimpleITK (test helper)."""

from __future__ import annotations

import locale
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.io.images import Geometry


def write_dicom_series(folder: Path, image_zyx: np.ndarray, geometry: Geometry, reverse_files: bool = False) -> Path:
    """One int16 CT series, one file per z slice. ``reverse_files``: file 0 / instance 1 is the last z slice.

    GDCM's writer sets the process locale to "C" (LC_CTYPE included, so later text decoding
    of subprocess output and files falls back to ASCII); the locale is restored afterwards.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write(folder, image_zyx, geometry, reverse_files)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write(folder: Path, image_zyx: np.ndarray, geometry: Geometry, reverse_files: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    img = geometry.apply_to(sitk.GetImageFromArray(image_zyx.astype(np.int16)))
    d = np.asarray(geometry.direction).reshape(3, 3)
    orientation = "\\".join(f"{v:.6f}" for v in np.concatenate([d[:, 0], d[:, 1]]))
    uid = "1.2.826.0.1.3680043.2.1125." + str(int(time.time() * 1e3) % 10**9)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    nz = image_zyx.shape[0]
    for k in range(nz):
        n = nz - 1 - k if reverse_files else k
        sl = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0060": "CT", "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0008|0018": f"{uid}.3.{k + 1}", "0020|000d": f"{uid}.1", "0020|000e": f"{uid}.2", "0020|0052": f"{uid}.4",
                "0010|0010": "Test^Patient", "0010|0020": "P1", "0008|0020": "20240101", "0008|0030": "120000",
                "0020|0011": "3", "0020|0013": str(n + 1), "0020|0037": orientation,
                "0020|0032": "\\".join(f"{v:.6f}" for v in pos), "0018|0050": f"{geometry.spacing_zyx[0]:.6f}",
                "0028|1050": "40", "0028|1051": "400"}
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{n:04d}.dcm"))
        writer.Execute(sl)
    return folder
