"""DICOM series in a folder: find them (quietly), name them, read one.

A folder may hold several series (e.g. arterial and venous phases). None is picked silently:
:func:`read_dicom_series` needs the series' UID when there is more than one, and
:func:`series_names` gives each a file-name-safe name for its output.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import SimpleITK as sitk

from autoseg.errors import AutosegError

SERIES_DESCRIPTION = "0008|103e"


@contextlib.contextmanager
def itk_warnings_off() -> Iterator[None]:
    """Silence ITK's warnings (e.g. GDCM's "No Series were found" on a folder without DICOM) for a probe."""
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


@dataclass
class DicomSeries:
    """One series of a folder: its SeriesInstanceUID, its SeriesDescription (may be empty) and files."""

    uid: str
    description: str
    files: list[str]


def series_in(folder: Path | str) -> list[DicomSeries]:
    """The DICOM series directly in ``folder`` (sorted by UID); empty when there is none."""
    with itk_warnings_off():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        out = []
        for uid in sorted(ids):
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            out.append(DicomSeries(uid, _description(files[0]) if files else "", files))
    return out


def _description(file: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData(SERIES_DESCRIPTION).strip() if reader.HasMetaDataKey(SERIES_DESCRIPTION) else ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.")[:64]


def series_names(series: list[DicomSeries]) -> list[str]:
    """A file-name-safe name per series: its description (``"ARTERIAL phase"`` -> ``ARTERIAL_phase``)
    when every series has a distinct non-empty one, else its SeriesInstanceUID."""
    desc = [_safe(s.description) for s in series]
    if all(desc) and len(set(desc)) == len(desc):
        return desc
    return [_safe(s.uid) for s in series]


def dicom_series_files(folder: Path | str, series_uid: str | None = None) -> list[str]:
    """The files of one DICOM series of ``folder``, in GDCM's slice order (rules of :func:`read_dicom_series`)."""
    return _one_series(Path(folder), series_uid).files


def read_dicom_series(folder: Path | str, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series of ``folder`` as a 3D image.

    ``series_uid`` picks the series; without it the folder must hold exactly one, else the
    error lists the series found (UID and description).
    """
    folder = Path(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(_one_series(folder, series_uid).files)
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise AutosegError(f"{folder}: cannot read DICOM series ({str(e).strip().splitlines()[-1][:160]})") from None


def _one_series(folder: Path, series_uid: str | None) -> DicomSeries:
    series = series_in(folder)
    if not series:
        raise AutosegError(f"{folder}: no DICOM series found in this folder")
    if series_uid is not None:
        series = [s for s in series if s.uid == series_uid]
        if not series:
            raise AutosegError(f"{folder}: no DICOM series with SeriesInstanceUID {series_uid}")
    if len(series) > 1:
        listed = "; ".join(f"{s.uid} '{s.description}' ({len(s.files)} files)" for s in series)
        raise AutosegError(f"{folder}: {len(series)} DICOM series in one folder ({listed}); "
                           "give each series its own folder")
    return series[0]
