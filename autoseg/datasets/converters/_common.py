"""Helpers shared by the converters: source checks, natural ordering, atomic copies and writes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.io.images import Geometry, image_suffix, read_sitk, write_image
from autoseg.io.json_io import atomic_path

NNUNET_ENDING = ".nii.gz"


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value: ``liver_2`` before ``liver_10``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def is_hidden(path: Path) -> bool:
    """macOS resource forks (``._x.nii.gz``) and other dot files, which are never data."""
    return path.name.startswith(".")


def require_folder(src: Path, what: str) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise AutosegError(f"{src}: not a folder; give the {what} folder")
    return src


def read_3d(path: Path) -> sitk.Image:
    """Read an image that must be 3D (a 4D image with one volume is reduced to 3D).

    4D multi-volume (multi-modal) images are refused: autoseg's converters handle one channel.
    """
    img = read_sitk(path)
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3:
        raise AutosegError(f"{path}: {img.GetDimension()}D image of size {list(img.GetSize())}; "
                           "only single-channel 3D images can be converted, split channels first")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise AutosegError(f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel; give greyscale 3D images")
    return img


def header_dimension(path: Path) -> tuple[int, list[int]]:
    """(dimension, size in x,y,z[,t] order) from the header alone, without reading voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise AutosegError(f"{path}: cannot read image header, the file is corrupt or not an image; replace it") from None
    return reader.GetDimension(), list(reader.GetSize())


def write_sitk(img: sitk.Image, path: Path) -> None:
    """Write an image keeping its pixel type and geometry, atomically."""
    write_image(sitk.GetArrayFromImage(img), Geometry.from_sitk(img), path)


def copy_as_nifti(src: Path, dst: Path) -> None:
    """Byte-copy ``src`` when it is already ``.nii.gz`` and 3D; otherwise re-write it as 3D ``.nii.gz``."""
    dim, _ = header_dimension(src)
    if image_suffix(src) != NNUNET_ENDING or dim != 3:
        write_sitk(read_3d(src), dst)
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def as_label_image(seg: sitk.Image, image: sitk.Image, seg_path: Path, allowed: tuple[int, ...]) -> sitk.Image:
    """A uint8 label on ``image``'s grid; refuses other sizes and values outside ``allowed``.

    Edge case: a label whose header differs slightly (origin, direction) from its image is given
    the image's geometry, since it was drawn on that voxel grid.
    """
    if seg.GetSize() != image.GetSize():
        raise AutosegError(f"{seg_path}: label size {list(seg.GetSize())} differs from its image {list(image.GetSize())}; "
                           "pair each segmentation with its own volume")
    arr = sitk.GetArrayFromImage(seg)
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        raise AutosegError(f"{seg_path}: label values {bad[:5]} not in {list(allowed)}; fix the segmentation")
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(image)
    return out
