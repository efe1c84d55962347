"""Helpers shared by the converters: source checks, natural ordering, atomic copies and writes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.io.images import Geometry, image_suffix, read_header, read_volume, write_image
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


def copy_as_nifti(src: Path, dst: Path) -> None:
    """Byte-copy ``src`` when it is already ``.nii.gz`` and 3D; otherwise re-write it as 3D ``.nii.gz``."""
    dim, _ = read_header(src)
    if image_suffix(src) != NNUNET_ENDING or dim != 3:
        write_image(*read_volume(src), dst)
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def label_on_image_grid(seg: np.ndarray, seg_geometry: Geometry, image_geometry: Geometry, seg_path: Path,
                        allowed: tuple[int, ...]) -> np.ndarray:
    """A (Z, Y, X) uint8 label for the image's grid; refuses other sizes and values outside ``allowed``.

    Edge case: a label whose header differs slightly (origin, direction) from its image is meant
    to be written with the image's geometry, since it was drawn on that voxel grid.
    """
    if list(seg_geometry.shape_zyx) != list(image_geometry.shape_zyx):
        raise AutosegError(f"{seg_path}: label size {list(seg_geometry.shape_zyx[::-1])} differs from its image "
                           f"{list(image_geometry.shape_zyx[::-1])}; pair each segmentation with its own volume")
    values = np.unique(seg)
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        raise AutosegError(f"{seg_path}: label values {bad[:5]} not in {list(allowed)}; fix the segmentation")
    return seg.astype(np.uint8)
