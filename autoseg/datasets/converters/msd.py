"""Medical Segmentation Decathlon task folder (e.g. ``Task03_Liver``) -> raw nnU-Net v2 layout.

MSD layout::

    Task03_Liver/dataset.json      "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"}
    Task03_Liver/imagesTr/liver_0.nii.gz   labelsTr/liver_0.nii.gz   imagesTs/liver_132.nii.gz
    Task03_Liver/imagesTr/._liver_0.nii.gz (macOS resource forks in the official tar: ignored)

MSD labels map value -> name; nnU-Net v2 maps name -> value, so they are reversed here. Label
names are kept as the task gives them ("cancer" for Task03).
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from autoseg.datasets.converters._common import NNUNET_ENDING, copy_as_nifti, is_hidden, natural_key, require_folder
from autoseg.datasets.layout import DatasetInfo, save_dataset_info
from autoseg.datasets.labels import LabelDefinition
from autoseg.errors import AutosegError
from autoseg.io.images import IMAGE_SUFFIXES, image_suffix, read_header
from autoseg.io.json_io import load_json


def _task_folder(src: Path) -> Path:
    """``src`` itself, or its single ``Task*`` subfolder when given the folder above it."""
    if (src / "dataset.json").is_file():
        return src
    tasks = [p for p in src.iterdir() if p.is_dir() and p.name.startswith("Task") and (p / "dataset.json").is_file()]
    if len(tasks) == 1:
        return tasks[0]
    raise AutosegError(f"{src}: no MSD dataset.json found; give the TaskNN_Name folder (with dataset.json, imagesTr, labelsTr)")


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not is_hidden(p) and image_suffix(p) in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def _case_id(path: Path) -> str:
    return path.name[: -len(image_suffix(path))]


def _check_single_channel(path: Path) -> None:
    dim, size = read_header(path)
    if dim == 4 and size[3] > 1:
        raise AutosegError(f"{path}: 4D image with {size[3]} volumes (multi-modal MSD task); "
                           "only single-channel tasks such as Task03_Liver can be converted")


def _labels_name_to_value(raw: object, dj: Path) -> dict[str, int]:
    try:
        labels = {str(name): int(value) for value, name in dict(raw).items()}  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AutosegError(f"{dj}: 'labels' must map values to names, e.g. {{\"0\": \"background\", \"1\": \"liver\"}}") from None
    if 0 not in labels.values():
        raise AutosegError(f"{dj}: 'labels' has no value 0 (background); add it")
    if len(labels) != len(dict(raw)):  # type: ignore[arg-type]
        raise AutosegError(f"{dj}: several label values share a name; give each value its own name")
    LabelDefinition.from_json(labels, None, str(dj))  # any values; an "ignore" name must be the highest
    return labels


def convert_msd(src: Path, out_dir: Path) -> DatasetInfo:
    """Convert an MSD task folder into ``out_dir`` (the ``DatasetNNN_Name`` folder).

    Training images become ``imagesTr/<case>_0000.nii.gz`` (byte copies when already
    ``.nii.gz``), labels ``labelsTr/<case>.nii.gz``, test images ``imagesTs``. Case ids are the
    MSD file names without extension (``liver_0``), ordered numerically.
    """
    src = require_folder(Path(src), "MSD task (TaskNN_Name)")
    task = _task_folder(src)
    dj = task / "dataset.json"
    meta = load_json(dj)
    if not isinstance(meta, dict) or "labels" not in meta:
        raise AutosegError(f"{dj}: not an MSD dataset.json (no 'labels'); give the TaskNN_Name folder")
    modality = {str(k): str(v) for k, v in dict(meta.get("modality", {"0": "CT"})).items()}
    if len(modality) != 1:
        raise AutosegError(f"{dj}: {len(modality)} modalities {list(modality.values())}; only single-channel tasks can be converted")
    labels = _labels_name_to_value(meta["labels"], dj)
    train, test = _images(task / "imagesTr"), _images(task / "imagesTs")
    if not train:
        raise AutosegError(f"{task / 'imagesTr'}: no training images found; expected imagesTr/<case>.nii.gz as in the MSD download")
    out_dir = Path(out_dir)
    jobs = []
    for img in train:
        lab = task / "labelsTr" / img.name
        if not lab.is_file():
            raise AutosegError(f"{lab}: label missing for training image {img}; restore it or remove the image")
        cid = _case_id(img)
        jobs += [(img, out_dir / "imagesTr" / f"{cid}_0000{NNUNET_ENDING}", True), (lab, out_dir / "labelsTr" / f"{cid}{NNUNET_ENDING}", False)]
    jobs += [(img, out_dir / "imagesTs" / f"{_case_id(img)}_0000{NNUNET_ENDING}", True) for img in test]
    for source, target, is_image in tqdm(jobs, desc="MSD files", unit="file"):
        if is_image:
            _check_single_channel(source)
        copy_as_nifti(source, target)
    info = DatasetInfo(name=str(meta.get("name", task.name)), channel_names=modality, labels=labels,
                       numTraining=len(train), file_ending=NNUNET_ENDING,
                       description=str(meta.get("description", f"converted from MSD {task.name}")))
    save_dataset_info(info, out_dir)
    return info
