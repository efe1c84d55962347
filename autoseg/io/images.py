"""Image IO through SimpleITK (NIfTI, NRRD, MHA, PNG, DICOM series).

Axis-order contract: arrays leave this module as (Z, Y, X) (or (C, Z, Y, X) for cases);
:class:`Geometry` keeps physical quantities in both orders, with the order in the name.
2D images are returned with a leading Z axis of length 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.io.json_io import atomic_path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png")


def image_suffix(path: Path | str) -> str:
    """The file ending that names the format (``.nii.gz`` counts as one)."""
    name = Path(path).name.lower()
    for suf in IMAGE_SUFFIXES:
        if name.endswith(suf):
            return suf
    return Path(path).suffix.lower()


@dataclass
class Geometry:
    """Where an image lies in the scanner: everything needed to write a mask that overlays it.

    ``shape_zyx`` and ``spacing_zyx`` are in array order; ``origin_xyz`` and ``direction``
    (row-major 3x3, ITK convention) stay in physical (X, Y, Z) order.
    """

    shape_zyx: list[int]
    spacing_zyx: list[float]
    origin_xyz: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    direction: list[float] = field(default_factory=lambda: [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Geometry":
        size = list(img.GetSize())
        spacing = list(img.GetSpacing())
        origin = list(img.GetOrigin())
        direction = list(img.GetDirection())
        if img.GetDimension() == 2:
            size, spacing, origin = size + [1], spacing + [1.0], origin + [0.0]
            direction = [direction[0], direction[1], 0.0, direction[2], direction[3], 0.0, 0.0, 0.0, 1.0]
        return cls(shape_zyx=size[::-1], spacing_zyx=[float(s) for s in spacing[::-1]],
                   origin_xyz=[float(o) for o in origin], direction=[float(d) for d in direction])

    def apply_to(self, img: sitk.Image) -> sitk.Image:
        img.SetSpacing([float(s) for s in self.spacing_zyx[::-1]])
        img.SetOrigin([float(o) for o in self.origin_xyz])
        img.SetDirection([float(d) for d in self.direction])
        return img

    def matches(self, other: "Geometry", tol: float = 1e-3) -> str | None:
        """None when both describe the same grid, else a short description of the difference."""
        if list(self.shape_zyx) != list(other.shape_zyx):
            return f"shape (z,y,x) {list(self.shape_zyx)} vs {list(other.shape_zyx)}"
        for name in ("spacing_zyx", "origin_xyz", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, atol=tol, rtol=tol):
                return f"{name.split('_')[0]} {np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}"
        return None


def read_sitk(path: Path | str) -> sitk.Image:
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if not path.is_file():
        raise AutosegError(f"{path}: file not found")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1][:160] if str(e).strip() else "unknown reason"
        raise AutosegError(f"{path}: cannot read image, the file is corrupt or not an image ({reason}); replace it") from None


def _as_zyx(img: sitk.Image, path: Path | str) -> np.ndarray:
    """(Z, Y, X) voxels of a 2D or 3D image in its stored pixel type (first component only)."""
    if img.GetNumberOfComponentsPerPixel() > 1:
        img = sitk.VectorIndexSelectionCast(img, 0)
    arr = sitk.GetArrayFromImage(img)
    if img.GetDimension() == 2:
        return arr[None]
    if img.GetDimension() != 3:
        raise AutosegError(f"{path}: {img.GetDimension()}D image; autoseg reads 2D and 3D images (one channel per file)")
    return arr


def read_image(path: Path | str, dtype=np.float32) -> tuple[np.ndarray, Geometry]:
    """Read one image as a (Z, Y, X) array and its geometry.

    Multi-component pixels (RGB PNG) are reduced to their first component. A directory is
    read as a DICOM series. ``dtype=None`` keeps the stored pixel type.
    """
    img = read_sitk(path)
    arr = _as_zyx(img, path)
    return (arr if dtype is None else arr.astype(dtype, copy=False)), Geometry.from_sitk(img)


def read_label(path: Path | str) -> tuple[np.ndarray, Geometry]:
    """A label map (Z, Y, X) in its stored type when that is an integer type, else float32.

    A uint8 file stays uint8: a quarter of the float32 array :func:`read_image` would make.
    """
    arr, geom = read_image(path, dtype=None)
    return (arr if arr.dtype.kind in "iub" else arr.astype(np.float32, copy=False)), geom


def read_header(path: Path | str) -> tuple[int, list[int]]:
    """(dimension, size in X, Y, Z[, T] order) from the header alone, without reading voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise AutosegError(f"{path}: cannot read image header, the file is corrupt or not an image; replace it") from None
    return reader.GetDimension(), list(reader.GetSize())


def read_volume(path: Path | str) -> tuple[np.ndarray, Geometry]:
    """One single-channel 3D image as (Z, Y, X) in its stored pixel type, with its geometry.

    A 4D image holding one volume is reduced to 3D; 4D multi-volume (multi-modal) images, 2D
    images and multi-component pixels are refused with a message naming ``path``.
    """
    img = read_sitk(path)
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3:
        raise AutosegError(f"{path}: {img.GetDimension()}D image of size {list(img.GetSize())}; "
                           "only single-channel 3D images can be converted, split channels first")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise AutosegError(f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel; give greyscale 3D images")
    return sitk.GetArrayFromImage(img), Geometry.from_sitk(img)


def read_case(paths: Sequence[Path | str]) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case into a float32 (C, Z, Y, X) array.

    Every channel must share the first channel's grid; NaN/inf intensities are refused.
    """
    arrays, geom = [], None
    for p in paths:
        arr, g = read_image(p)
        if geom is None:
            geom = g
        elif (diff := geom.matches(g)) is not None:
            raise AutosegError(f"{p}: channel grid differs from {paths[0]} ({diff}); resample channels to one grid")
        if not np.isfinite(arr).all():
            raise AutosegError(f"{p}: image contains NaN or infinite intensities; fix the file")
        arrays.append(arr)
    assert geom is not None
    return (arrays[0][None] if len(arrays) == 1 else np.stack(arrays)), geom  # one channel: a view, no copy


def is_dicom_folder(path: Path | str) -> bool:
    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def dicom_series_files(folder: Path | str) -> list[str]:
    """The files of the (first, largest) DICOM series in ``folder``, sorted along the slice normal (GDCM)."""
    folder = Path(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise AutosegError(f"{folder}: no DICOM series found in this folder")
    return list(max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids), key=len))


def read_dicom_series(folder: Path | str) -> sitk.Image:
    """Read the (first, largest) DICOM series in ``folder`` as one 3D image."""
    folder = Path(folder)
    files = dicom_series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise AutosegError(f"{folder}: cannot read DICOM series ({str(e).strip().splitlines()[-1][:160]})") from None


def write_image(array_zyx: np.ndarray, geometry: Geometry, path: Path | str, compress: bool = True) -> None:
    """Write a (Z, Y, X) array with ``geometry`` atomically (temp name in the same folder, then rename)."""
    path = Path(path)
    if tuple(array_zyx.shape) != tuple(geometry.shape_zyx):
        raise ValueError(f"array shape {array_zyx.shape} does not match geometry {geometry.shape_zyx}")
    img = geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array_zyx)))
    with atomic_path(path, image_suffix(path)) as tmp:
        sitk.WriteImage(img, tmp, useCompression=compress)
