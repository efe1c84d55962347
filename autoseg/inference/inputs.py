"""Find the cases to predict in ``-i IN`` and read them.

``IN`` may be:

* a folder of images (``.nii.gz .nii .nrrd .mha``, also ``.nhdr .mhd``). Multi-channel cases
  use nnU-Net's channel suffix: ``liver_7_0000.nii.gz``, ``liver_7_0001.nii.gz`` form case
  ``liver_7``. For a single-channel model, ``<case>.nii.gz`` without suffix is a case too,
  and a name whose ``_XXXX`` is not ``_0000`` (``liver_0007.nii.gz``) is kept whole;
* a single image file (``_0000`` is stripped from its name);
* a DICOM series folder (the case is named after the folder) or a folder of DICOM series
  folders (one case per series folder). A folder may mix images, DICOM files and series
  folders; every one of them is a case. A folder holding several series gives one case per
  series, ``<folder>_<SeriesDescription>`` (or ``<folder>_<SeriesInstanceUID>`` when the
  descriptions are missing or not distinct), characters other than ``A-Za-z0-9.-`` as ``_``.

Output names: case id + the input's file ending (``.mhd`` -> ``.mha``, ``.nhdr`` -> ``.nrrd``,
single-file formats; DICOM -> ``.nii.gz``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.io.dicom import series_in, series_names
from autoseg.io.images import Geometry, image_suffix, missing_reason, read_case

INPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd")
OUTPUT_SUFFIX = {".mhd": ".mha", ".nhdr": ".nrrd"}
_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


@dataclass
class InputCase:
    """One case to predict: its channel files in channel order (or one DICOM folder and,
    when that folder holds several series, the one to read)."""

    case_id: str
    files: list[Path]
    output_name: str
    series_uid: str | None = None

    @property
    def is_dicom(self) -> bool:
        return len(self.files) == 1 and self.files[0].is_dir()


def _stem(path: Path) -> tuple[str, str]:
    suffix = image_suffix(path)
    return path.name[: -len(suffix)], suffix


def _out_name(case_id: str, suffix: str) -> str:
    return case_id + OUTPUT_SUFFIX.get(suffix, suffix)


def _group_files(files: list[Path], num_channels: int) -> tuple[list[InputCase], list[str]]:
    """Cases from image files; problems (wrong channel sets) as one message per case."""
    suffixed: dict[str, dict[int, Path]] = {}
    plain: list[Path] = []
    for f in files:
        stem, _ = _stem(f)
        m = _CHANNEL.match(stem)
        if m:
            suffixed.setdefault(m.group(1), {})[int(m.group(2))] = f
        else:
            plain.append(f)
    cases: list[InputCase] = []
    problems: list[str] = []
    want = list(range(num_channels))
    for base, chans in sorted(suffixed.items()):
        if sorted(chans) == want:
            cases.append(InputCase(base, [chans[c] for c in want], _out_name(base, _stem(chans[0])[1])))
        elif num_channels == 1 and 0 not in chans:  # ids like liver_0007: the suffix is part of the name
            plain.extend(chans.values())
        else:
            first = chans[min(chans)]
            problems.append(f"{first.parent / base}: case '{base}' has channel files {sorted(chans)} but the model takes "
                            f"{num_channels} channel(s) {['_%04d' % c for c in want]}; provide exactly those files")
    for f in plain:
        stem, suffix = _stem(f)
        if num_channels != 1:
            problems.append(f"{f}: case '{stem}' has 1 image without a _XXXX channel suffix but the model takes "
                            f"{num_channels} channels; name them {stem}_0000{suffix} .. {stem}_{num_channels - 1:04d}{suffix}")
        else:
            cases.append(InputCase(stem, [f], _out_name(stem, suffix)))
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        problems.append(f"{files[0].parent}: case id(s) {dup} come from more than one file (e.g. 'a.nii.gz' and 'a_0000.nii.gz'); keep one")
        cases = [c for c in cases if c.case_id not in dup]
    return cases, problems


def discover_cases(path: Path | str, num_channels: int) -> tuple[list[InputCase], list[str]]:
    """The cases under ``path`` sorted by id, and one problem line per case that cannot be formed.

    Raises AutosegError when ``path`` does not exist or holds nothing to predict.
    """
    path = Path(path).expanduser()
    if path.is_symlink() and not path.exists():
        raise AutosegError(f"{path}: {missing_reason(path)}")
    if not path.exists():
        raise AutosegError(f"{path}: input not found; pass an image file, a folder of images or a DICOM folder")
    if path.is_file():
        stem, suffix = _stem(path)
        if suffix not in INPUT_SUFFIXES:
            raise AutosegError(f"{path}: not an image file autoseg predicts ({', '.join(INPUT_SUFFIXES)})")
        m = _CHANNEL.match(stem)
        case_id = m.group(1) if m and m.group(2) == "0000" else stem
        if num_channels != 1:
            raise AutosegError(f"{path}: one file given but the model takes {num_channels} channels; "
                               f"pass the folder holding {case_id}_0000{suffix} .. {case_id}_{num_channels - 1:04d}{suffix}")
        return [InputCase(case_id, [path], _out_name(case_id, suffix))], []
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    images = [p for p in entries if p.is_file() and _stem(p)[1] in INPUT_SUFFIXES]
    others = [p for p in entries if p.is_file() and _stem(p)[1] not in INPUT_SUFFIXES]
    cases, problems = _group_files(images, num_channels)
    problems += [f"{p}: {missing_reason(p)}" for p in entries  # a dangling image link is reported, not skipped
                 if p.is_symlink() and not p.exists() and _stem(p)[1] in INPUT_SUFFIXES]
    taken = {c.case_id for c in cases}
    for d in ([path] if others else []) + [p for p in entries if p.is_dir()]:
        for case in _dicom_cases(d):
            if case.case_id in taken:
                problems.append(f"{d}: DICOM case '{case.case_id}' is also an image case's id; rename one")
                continue
            cases.append(case)
    if not cases and not problems:
        raise AutosegError(f"{path}: no images ({', '.join(INPUT_SUFFIXES)}) or DICOM series found; check the folder")
    return sorted(cases, key=lambda c: c.case_id), problems


def _dicom_cases(folder: Path) -> list[InputCase]:
    """One case per DICOM series directly in ``folder`` (none when it holds no series)."""
    series = series_in(folder)
    if len(series) == 1:
        return [InputCase(folder.name, [folder], folder.name + ".nii.gz")]
    return [InputCase(f"{folder.name}_{name}", [folder], f"{folder.name}_{name}.nii.gz", s.uid)
            for s, name in zip(series, series_names(series))]


def read_input_case(case: InputCase, num_channels: int) -> tuple[np.ndarray, Geometry]:
    """float32 (C, Z, Y, X) and the geometry of the first channel (all channels must share it)."""
    data, geometry = read_case(case.files, series_uid=case.series_uid)
    if data.shape[0] != num_channels:
        raise AutosegError(f"{case.files[0]}: case '{case.case_id}' has {data.shape[0]} channel(s) but the model takes {num_channels}")
    return data, geometry
