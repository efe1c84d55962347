"""The raw dataset layout, identical to nnU-Net v2's so existing datasets work unchanged.

::

    <raw>/DatasetNNN_Name/
        dataset.json                 channel_names, labels, numTraining, file_ending
        imagesTr/<case>_0000.nii.gz  one file per channel (_0000, _0001, ...)
        labelsTr/<case>.nii.gz
        imagesTs/<case>_0000.nii.gz  optional

``dataset.json`` may instead list files under a ``dataset`` key
(``{"case": {"images": [...], "label": "..."}}``, paths relative to the dataset folder).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from autoseg.datasets.labels import LabelDefinition
from autoseg.errors import AutosegError
from autoseg.io.json_io import load_json, save_json

log = logging.getLogger("autoseg")
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


@dataclass
class DatasetInfo:
    """The parsed ``dataset.json``.

    ``labels`` maps name -> value (``{"background": 0, "liver": 1, "tumor": 2}``), or to a list of
    values for a region (with ``regions_class_order``); what they mean is :attr:`label_definition`
    (:mod:`autoseg.datasets.labels`).
    ``intensity_kind`` is ``"CT"`` (Hounsfield units), ``"MR"`` or ``"grey"`` (arbitrary grey
    levels, e.g. PNG exports); it picks the normalisation when the plans do not override it.
    """

    name: str
    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]
    numTraining: int
    file_ending: str = ".nii.gz"
    description: str = ""
    intensity_kind: str = ""
    dataset: dict[str, dict] | None = None
    regions_class_order: list[int] | None = None

    @property
    def label_definition(self) -> LabelDefinition:
        return LabelDefinition.from_json(self.labels, self.regions_class_order)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def channel_kind(self, channel: int) -> str:
        """``CT``, ``MR`` or ``grey`` for one channel (from ``channel_names`` unless overridden)."""
        if self.intensity_kind:
            return self.intensity_kind
        name = self.channel_names[str(channel)].strip().lower()
        return "CT" if name == "ct" else ("grey" if name in ("grey", "gray", "png") else "MR")

    def to_json(self) -> dict:
        out = {"name": self.name, "description": self.description, "channel_names": self.channel_names,
               "labels": self.labels, "numTraining": self.numTraining, "file_ending": self.file_ending}
        if self.regions_class_order is not None:
            out["regions_class_order"] = self.regions_class_order
        if self.intensity_kind:
            out["intensity_kind"] = self.intensity_kind
        if self.dataset is not None:
            out["dataset"] = self.dataset
        return out


def load_dataset_info(folder: Path) -> DatasetInfo:
    """Read and check ``folder/dataset.json``; one clear error for a missing key or bad value."""
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise AutosegError(f"{path}: dataset.json missing; every dataset folder needs one (see README, raw layout)")
    data = load_json(path)
    if not isinstance(data, dict):
        raise AutosegError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise AutosegError(f"{path}: missing key(s) {', '.join(missing)}; add them (see README, raw layout)")
    labels = LabelDefinition.from_json(data["labels"], data.get("regions_class_order"), str(path))
    if not isinstance(data["channel_names"], dict) or not data["channel_names"]:
        raise AutosegError(f"{path}: 'channel_names' must be a non-empty object like {{\"0\": \"CT\"}}")
    return DatasetInfo(name=str(data.get("name", Path(folder).name)), channel_names={str(k): str(v) for k, v in data["channel_names"].items()},
                       labels=labels.labels, numTraining=int(data["numTraining"]), file_ending=str(data["file_ending"]),
                       description=str(data.get("description", "")), intensity_kind=str(data.get("intensity_kind", "")),
                       dataset=data.get("dataset"), regions_class_order=labels.regions_class_order)


def save_dataset_info(info: DatasetInfo, folder: Path) -> None:
    save_json(info.to_json(), Path(folder) / "dataset.json")


@dataclass
class CaseFiles:
    """One training (or test) case: its channel files in order and its label file (if any)."""

    case_id: str
    images: list[Path]
    label: Path | None = None


def _inside(folder: Path, rel: str, dj: Path) -> Path:
    p = (folder / rel).resolve()
    if folder.resolve() not in p.parents:
        raise AutosegError(f"{dj}: path '{rel}' points outside the dataset folder; use paths inside {folder}")
    return p


def list_cases(folder: Path, info: DatasetInfo, images_sub: str = "imagesTr", labels_sub: str | None = "labelsTr") -> list[CaseFiles]:
    """Cases of a raw dataset folder, sorted by id.

    Images are grouped by the ``_XXXX`` channel suffix; a case missing a channel file or
    (for training folders) a label gives a clear error. Hidden files (``._*``) are ignored.
    """
    folder = Path(folder)
    if info.dataset is not None and images_sub == "imagesTr":
        dj = folder / "dataset.json"
        out = []
        for cid, entry in sorted(info.dataset.items()):
            imgs = [_inside(folder, r, dj) for r in entry.get("images", [])]
            lab = _inside(folder, entry["label"], dj) if entry.get("label") else None
            out.append(CaseFiles(cid, imgs, lab))
        return out
    img_dir = folder / images_sub
    if not img_dir.is_dir():
        if images_sub == "imagesTr":
            raise AutosegError(f"{img_dir}: folder missing; put training images there as <case>_0000{info.file_ending}")
        return []
    fe = info.file_ending
    groups: dict[str, dict[int, Path]] = {}
    for p in sorted(img_dir.iterdir()):
        if p.name.startswith(".") or not p.name.endswith(fe):
            continue
        stem = p.name[: -len(fe)]
        if len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
            raise AutosegError(f"{p}: image name must end in _XXXX{fe} (channel index), e.g. case_0000{fe}")
        groups.setdefault(stem[:-5], {})[int(stem[-4:])] = p
    cases = []
    for cid, chans in sorted(groups.items()):
        want = list(range(info.num_channels))
        if sorted(chans) != want:
            raise AutosegError(f"{img_dir}/{cid}: has channel files {sorted(chans)} but dataset.json declares {info.num_channels} channel(s) {want}")
        label = None
        if labels_sub is not None:
            label = folder / labels_sub / f"{cid}{fe}"
            if not label.is_file():
                raise AutosegError(f"{label}: label missing for image {chans[0].name}; add it or remove the image")
        cases.append(CaseFiles(cid, [chans[c] for c in want], label))
    return cases


def warn_num_training(folder: Path, info: DatasetInfo, cases: list[CaseFiles]) -> bool:
    """Warn (and return True) when ``numTraining`` differs from the training cases found in ``folder``.

    The cases found are what is used; the warning says so, since a wrong count often means
    files were lost in a copy.
    """
    if info.numTraining == len(cases):
        return False
    log.warning("%s: numTraining is %d but %d training case(s) were found; using the %d found "
                "(check for missing files, then correct numTraining)", Path(folder) / "dataset.json",
                info.numTraining, len(cases), len(cases))
    return True
