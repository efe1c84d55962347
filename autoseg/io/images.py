"""Image IO through SimpleITK (NIfTI, NRRD, MHA, PNG, DICOM series).

Axis-order contract: arrays leave this module as (Z, Y, X) (or (C, Z, Y, X) for cases);
:class:`Geometry` keeps physical quantities in both orders, with the order in the name.
2D images are returned with a leading Z axis of length 1.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.io.dicom import itk_warnings_off, read_dicom_series
from autoseg.io.integrity import check_complete
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

    def cropped(self, box_zyx: list[list[int]] | list[tuple[int, int]]) -> "Geometry":
        """The grid of ``array[z0:z1, y0:y1, x0:x1]``: same spacing and direction, the origin moved to
        the box's first voxel (``origin + direction @ (spacing * index)`` in physical X, Y, Z)."""
        start_xyz = np.array([box_zyx[2][0], box_zyx[1][0], box_zyx[0][0]], dtype=float)
        spacing_xyz = np.array(self.spacing_zyx[::-1], dtype=float)
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        origin = np.asarray(self.origin_xyz, dtype=float) + d @ (spacing_xyz * start_xyz)
        return Geometry(shape_zyx=[int(b - a) for a, b in box_zyx], spacing_zyx=list(self.spacing_zyx),
                        origin_xyz=[float(o) for o in origin], direction=list(self.direction))

    def reversed_axes_zyx(self) -> list[int]:
        """Array axes (0 = Z) that run against the physical axis they mostly follow (the sign of the
        largest entry of their direction column): flipping them puts every scan the same way round,
        e.g. ``direction`` diag(-1, -1, 1) -> ``[1, 2]``."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return [2 - j for j in (2, 1, 0) if d[int(np.argmax(np.abs(d[:, j]))), j] < 0]

    def matches(self, other: "Geometry", tol: float = 1e-3) -> str | None:
        """None when both describe the same grid, else a short description of the difference."""
        if list(self.shape_zyx) != list(other.shape_zyx):
            return f"shape (z,y,x) {list(self.shape_zyx)} vs {list(other.shape_zyx)}"
        for name in ("spacing_zyx", "origin_xyz", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, atol=tol, rtol=tol):
                return f"{name.split('_')[0]} {np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}"
        return None


def missing_reason(path: Path) -> str:
    """Why ``path`` cannot be opened as a file: not found, a broken symbolic link or a link loop."""
    if not path.is_symlink():
        return "file not found"
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself); fix or remove the link"
        return f"broken symbolic link (points to {os.readlink(path)}, which does not exist); fix or remove the link"
    return "not a regular file"


def read_sitk(path: Path | str, series_uid: str | None = None) -> sitk.Image:
    """One image file, or a DICOM folder's series (``series_uid`` picks one of several).

    A file holding less voxel data than its header promises is refused (:func:`check_complete`).
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    if not path.is_file():
        raise AutosegError(f"{path}: {missing_reason(path)}")
    check_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1][:160] if str(e).strip() else "unknown reason"
        raise AutosegError(f"{path}: cannot read image, the file is corrupt or not an image ({reason}); replace it") from None


def _as_zyx(img: sitk.Image, path: Path | str) -> np.ndarray:
    """(Z, Y, X) voxels of a 2D or 3D image in its stored pixel type.

    A multi-component (vector, RGB) image is read only when its components are all equal (grey
    saved as RGB); else it is refused: a component is not silently picked.
    """
    arr = sitk.GetArrayFromImage(img)
    if (n := img.GetNumberOfComponentsPerPixel()) > 1:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, n)):
            raise AutosegError(f"{path}: {n} components per voxel (vector/RGB image); autoseg reads one value per voxel: "
                               "save each component as its own channel file (_0000, _0001, ...)")
        arr = np.ascontiguousarray(arr[..., 0])
    if img.GetDimension() == 2:
        return arr[None]
    if img.GetDimension() != 3:
        raise AutosegError(f"{path}: {img.GetDimension()}D image; autoseg reads 2D and 3D images (one channel per file)")
    return arr


def read_image(path: Path | str, dtype=np.float32, series_uid: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read one image as a (Z, Y, X) array and its geometry.

    Multi-component pixels are refused unless all components are equal (grey saved as RGB).
    A directory is read as a DICOM series (``series_uid`` picks one when it holds several).
    ``dtype=None`` keeps the stored pixel type.
    """
    img = read_sitk(path, series_uid)
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


def read_case(paths: Sequence[Path | str], series_uid: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case into a float32 (C, Z, Y, X) array.

    Every channel must share the first channel's grid; NaN/inf intensities are refused.
    ``series_uid``: the DICOM series to read when a path is a folder of several.
    """
    arrays, geom = [], None
    for p in paths:
        arr, g = read_image(p, series_uid=series_uid)
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
    """True when ``path`` is a folder holding at least one DICOM series (probed without ITK warnings)."""
    path = Path(path)
    if not path.is_dir():
        return False
    with itk_warnings_off():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def write_image(array_zyx: np.ndarray, geometry: Geometry, path: Path | str, compress: bool = True) -> None:
    """Write a (Z, Y, X) array with ``geometry`` atomically (temp name in the same folder, then rename)."""
    path = Path(path)
    if tuple(array_zyx.shape) != tuple(geometry.shape_zyx):
        raise ValueError(f"array shape {array_zyx.shape} does not match geometry {geometry.shape_zyx}")
    img = geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array_zyx)))
    with atomic_path(path, ".tmp" + image_suffix(path)) as tmp:
        sitk.WriteImage(img, tmp, useCompression=compress)
