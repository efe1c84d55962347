"""2D PNG slice stacks -> one 3D case per patient in the raw nnU-Net v2 layout.

Source layout::

    images/<patient>_<slice>.png    greyscale or RGB (RGB is reduced to luminance)
    masks/<patient>_<slice>.png     grey 0 = background, 127 = liver, 255 = lesion

Slices are stacked in numeric order (``p_9`` below ``p_10``); the patient id is everything
before the last underscore. PNG grey levels are not Hounsfield units, so dataset.json gets
``"intensity_kind": "grey"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from autoseg.datasets.converters._common import NNUNET_ENDING, is_hidden, natural_key, require_folder
from autoseg.datasets.layout import DatasetInfo, save_dataset_info
from autoseg.errors import AutosegError
from autoseg.io.images import Geometry, write_image

PNG_LABELS = {"background": 0, "liver": 1, "tumor": 2}
MASK_GREYS = np.array([0, 127, 255])  # grey level of label 0, 1, 2
MASK_TOLERANCE = 2


def _read_grey(path: Path) -> np.ndarray:
    """(Y, X) grey levels; RGB(A)/palette images become luminance, 16-bit stays 16-bit."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "L"):
                arr = np.array(im)
            elif im.mode == "LA":
                arr = np.array(im)[..., 0]
            else:
                arr = np.array(im.convert("L"))
    except OSError as e:
        raise AutosegError(f"{path}: cannot read PNG ({e}); replace the file") from None
    if arr.ndim != 2:
        raise AutosegError(f"{path}: expected a 2D image, got shape {arr.shape}")
    return arr


def mask_to_labels(grey: np.ndarray, path: Path) -> np.ndarray:
    """Map mask grey levels 0/127/255 (+-2) to labels 0/1/2 (uint8, same shape).

    Edge case: a mask whose only non-zero values are 1 or 2 (labels saved directly instead of
    grey levels) would silently become background under the +-2 rule, so it is refused.
    """
    values = np.unique(grey)
    if values.max() in (1, 2):
        raise AutosegError(f"{path}: mask holds label values {values.tolist()}; expected grey 0/127/255 (liver 127, lesion 255)")
    nearest = np.argmin(np.abs(values[:, None].astype(np.int64) - MASK_GREYS[None]), axis=1)
    off = np.abs(values.astype(np.int64) - MASK_GREYS[nearest]) > MASK_TOLERANCE
    if off.any():
        raise AutosegError(f"{path}: mask grey level(s) {values[off][:5].tolist()} are not 0, 127 or 255 (+-{MASK_TOLERANCE}); "
                           "re-export masks without smoothing or JPEG compression")
    lut = np.zeros(int(values.max()) + 1, np.uint8)
    lut[values] = nearest
    return lut[grey]


def _group(images_dir: Path) -> dict[str, list[tuple[int, Path]]]:
    """{patient: [(slice number, image path), ...] in slice order}."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p in images_dir.iterdir():
        if is_hidden(p) or not p.is_file() or p.suffix.lower() != ".png":
            continue
        patient, _, number = p.stem.rpartition("_")
        if not patient or not number.isdigit():
            raise AutosegError(f"{p}: name must be <patient>_<slice number>.png, e.g. patient01_12.png; rename it")
        groups.setdefault(patient, []).append((int(number), p))
    for patient, slices in groups.items():
        slices.sort()
        numbers = [n for n, _ in slices]
        if len(set(numbers)) != len(numbers):
            dup = next(p for (n, p) in slices if numbers.count(n) > 1)
            raise AutosegError(f"{dup}: slice number {int(dup.stem.rpartition('_')[2])} appears twice for patient {patient}; rename one")
    return groups


def convert_png(src: Path, out_dir: Path, spacing_xyz: tuple[float, float, float]) -> DatasetInfo:
    """Convert ``src/images`` + ``src/masks`` PNG slices into 3D cases in ``out_dir``.

    ``spacing_xyz`` is (x, y, z) in mm: pixel width, pixel height, slice distance. Geometry:
    origin 0, identity direction (row 0 of a PNG = anterior, column 0 = patient right).
    Every image needs a mask of the same name and size; a patient's slices must share a size.
    """
    src = require_folder(Path(src), "PNG export (with images/ and masks/)")
    images_dir, masks_dir = src / "images", src / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise AutosegError(f"{src}: expected subfolders images/ and masks/ holding <patient>_<slice>.png files")
    spacing = tuple(float(s) for s in spacing_xyz)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise AutosegError(f"spacing {spacing_xyz}: give three positive numbers x y z in mm")
    groups = _group(images_dir)
    if not groups:
        raise AutosegError(f"{images_dir}: no PNG slices found; expected <patient>_<slice>.png files")
    wanted = {p.name for slices in groups.values() for _, p in slices}
    for m in masks_dir.iterdir():
        if m.suffix.lower() == ".png" and not is_hidden(m) and m.name not in wanted:
            raise AutosegError(f"{m}: mask has no image {images_dir / m.name}; add the image or remove the mask")
    out_dir = Path(out_dir)
    for patient in tqdm(sorted(groups, key=natural_key), desc="PNG patients", unit="case"):
        images, labels = [], []
        for _, img_path in groups[patient]:
            mask_path = masks_dir / img_path.name
            if not mask_path.is_file():
                raise AutosegError(f"{img_path}: no mask {mask_path}; add it or remove the image")
            img, mask = _read_grey(img_path), _read_grey(mask_path)
            if images and img.shape != images[0].shape:
                raise AutosegError(f"{img_path}: size {img.shape} differs from the patient's first slice {images[0].shape}; "
                                   "export all slices of a patient at one size")
            if mask.shape != img.shape:
                raise AutosegError(f"{mask_path}: mask size {mask.shape} differs from its image {img.shape}")
            images.append(img)
            labels.append(mask_to_labels(mask, mask_path))
        volume = np.stack(images)
        geom = Geometry(shape_zyx=list(volume.shape), spacing_zyx=list(spacing[::-1]))
        write_image(volume, geom, out_dir / "imagesTr" / f"{patient}_0000{NNUNET_ENDING}")
        write_image(np.stack(labels), geom, out_dir / "labelsTr" / f"{patient}{NNUNET_ENDING}")
    info = DatasetInfo(name=src.name, channel_names={"0": "grey"}, labels=dict(PNG_LABELS), numTraining=len(groups),
                       file_ending=NNUNET_ENDING, description=f"converted from PNG slices ({src})", intensity_kind="grey")
    save_dataset_info(info, out_dir)
    return info
