"""LiTS (Liver Tumor Segmentation challenge) download -> raw nnU-Net v2 layout.

LiTS layout (searched recursively, so batch folders can stay as unpacked)::

    Training Batch 1/volume-0.nii      Training Batch 1/segmentation-0.nii
    Training Batch 2/volume-28.nii     Training Batch 2/segmentation-28.nii
    Test Data/test-volume-0.nii        (optional; becomes imagesTs/lits_test_0)

Labels: 0 background, 1 liver, 2 tumour. Cases are ``lits_N``, ordered by N as a number.
"""

from __future__ import annotations

import re
from pathlib import Path

from tqdm import tqdm

from autoseg.datasets.converters._common import NNUNET_ENDING, is_hidden, label_on_image_grid, require_folder
from autoseg.datasets.layout import DatasetInfo, save_dataset_info
from autoseg.errors import AutosegError
from autoseg.io.images import read_volume, write_image

LITS_LABELS = {"background": 0, "liver": 1, "tumor": 2}
_PATTERNS = {"volume": re.compile(r"^volume-(\d+)\.nii(\.gz)?$", re.I),
             "segmentation": re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$", re.I),
             "test": re.compile(r"^test-volume-(\d+)\.nii(\.gz)?$", re.I)}


def _find(src: Path) -> dict[str, dict[int, Path]]:
    """{kind: {N: path}} for every LiTS file below ``src``; the same N twice is an error."""
    found: dict[str, dict[int, Path]] = {k: {} for k in _PATTERNS}
    for path in sorted(src.rglob("*")):
        if is_hidden(path) or not path.is_file():
            continue
        for kind, pattern in _PATTERNS.items():
            m = pattern.match(path.name)
            if m:
                n = int(m.group(1))
                if n in found[kind]:
                    raise AutosegError(f"{path}: duplicate of {found[kind][n]} (both are {kind} {n}); keep one")
                found[kind][n] = path
    return found


def convert_lits(src: Path, out_dir: Path) -> DatasetInfo:
    """Convert a LiTS folder into ``out_dir`` (the ``DatasetNNN_Name`` folder).

    Volumes are re-written as compressed ``.nii.gz`` with their pixel type; segmentations as
    uint8 on their volume's grid (values must be 0, 1, 2). A volume without a segmentation,
    or the reverse, is an error naming the file.
    """
    src = require_folder(Path(src), "LiTS (with volume-N.nii / segmentation-N.nii files)")
    found = _find(src)
    vols, segs = found["volume"], found["segmentation"]
    if not vols:
        raise AutosegError(f"{src}: no LiTS volume-N.nii files found (searched all subfolders); give the unpacked LiTS folder")
    for n, vol in vols.items():
        if n not in segs:
            raise AutosegError(f"{vol}: no segmentation-{n}.nii found for this volume; add it or remove the volume")
    for n, seg in segs.items():
        if n not in vols:
            raise AutosegError(f"{seg}: no volume-{n}.nii found for this segmentation; add it or remove the segmentation")
    out_dir = Path(out_dir)
    jobs = [(n, False) for n in sorted(vols)] + [(n, True) for n in sorted(found["test"])]
    for n, is_test in tqdm(jobs, desc="LiTS cases", unit="case"):
        if is_test:
            write_image(*read_volume(found["test"][n]), out_dir / "imagesTs" / f"lits_test_{n}_0000{NNUNET_ENDING}")
            continue
        image, geometry = read_volume(vols[n])
        seg, seg_geometry = read_volume(segs[n])
        label = label_on_image_grid(seg, seg_geometry, geometry, segs[n], tuple(LITS_LABELS.values()))
        del seg
        write_image(image, geometry, out_dir / "imagesTr" / f"lits_{n}_0000{NNUNET_ENDING}")
        del image
        write_image(label, geometry, out_dir / "labelsTr" / f"lits_{n}{NNUNET_ENDING}")
    info = DatasetInfo(name="LiTS", channel_names={"0": "CT"}, labels=dict(LITS_LABELS), numTraining=len(vols),
                       file_ending=NNUNET_ENDING, description=f"converted from LiTS ({src})")
    save_dataset_info(info, out_dir)
    return info
