"""``predict --output-format``: masks as NIfTI (default), DICOM SEG, or both.

A DICOM SEG is written for each case whose input was a DICOM series, as ``<case>.dcm`` beside
where the NIfTI mask goes, from the mask prediction wrote (so both hold the same labels on the
same slices; postprocessing included). With ``dicom-seg`` alone the NIfTI mask is removed
after the SEG is written. A case read from an image file cannot become a SEG (there are no
source instances to reference): with ``nifti`` also asked for it keeps its NIfTI mask and a
warning is printed, with ``dicom-seg`` alone it is reported as failed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg import __version__, paths
from autoseg.errors import AutosegError
from autoseg.inference.inputs import InputCase
from autoseg.io.dicom_seg import AlgorithmInfo, SegmentCode, load_segment_codes, parse_segment_codes, write_dicom_seg
from autoseg.io.images import read_image
from autoseg.io.json_io import load_json

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("nifti", "dicom-seg")
SEG_SUFFIX = ".dcm"
CODES_FILE = "segment_codes.json"


def seg_path(out_dir: Path, case: InputCase) -> Path:
    return Path(out_dir) / f"{case.case_id}{SEG_SUFFIX}"


def check_formats(formats: Sequence[str]) -> list[str]:
    bad = [f for f in formats if f not in OUTPUT_FORMATS]
    if bad or not formats:
        raise AutosegError(f"--output-format {' '.join(formats)}: choose one or both of {', '.join(OUTPUT_FORMATS)}")
    return list(dict.fromkeys(formats))


def segment_codes_for(dataset_dir: Path, configuration: str, codes_file: str | None) -> dict[str, SegmentCode]:
    """User codes, first found of: ``--segment-codes FILE``; the model's ``<Dataset>/segment_codes.json``
    (packed by ``export_model``); a ``"segment_codes"`` key in the configuration's or the raw
    dataset's dataset.json. None found: {} (built-in codes apply)."""
    if codes_file:
        return load_segment_codes(codes_file)
    if (Path(dataset_dir) / CODES_FILE).is_file():
        return load_segment_codes(Path(dataset_dir) / CODES_FILE)
    for dj in (Path(dataset_dir) / configuration / "dataset.json", paths.raw_dataset_dir(Path(dataset_dir).name) / "dataset.json"):
        data = load_json(dj) if dj.is_file() else {}
        if isinstance(data, dict) and "segment_codes" in data:
            return parse_segment_codes(data["segment_codes"], str(dj))
    return {}


def skip_done(cases: Sequence[InputCase], out_dir: Path, formats: Sequence[str], overwrite: bool) -> tuple[list[InputCase], list[str]]:
    """With ``dicom-seg`` alone no NIfTI stays behind, so a DICOM case is done when its SEG exists."""
    if overwrite or "nifti" in formats:
        return list(cases), []
    keep, skipped = [], []
    for c in cases:
        (skipped if c.is_dicom and seg_path(out_dir, c).is_file() else keep).append(c)
    return keep, [c.case_id for c in skipped]


def write_seg_outputs(cases: Sequence[InputCase], predicted: Sequence[str], out_dir: Path | str, formats: Sequence[str],
                      labels: Mapping[str, int], model_name: str, codes: Mapping[str, SegmentCode] | None = None) -> dict[str, str]:
    """Write the SEGs of the ``predicted`` case ids; returns {case id: message} of those that failed."""
    out_dir = Path(out_dir)
    failed: dict[str, str] = {}
    if "dicom-seg" not in formats:
        return failed
    algorithm = AlgorithmInfo("autoseg", __version__, model_name)
    done = set(predicted)
    for case in cases:
        if case.case_id not in done:
            continue
        mask_file = out_dir / case.output_name
        try:
            if not case.is_dicom:
                if "nifti" in formats:
                    log.warning("%s: input is not a DICOM series, so no DICOM SEG is written (its mask: %s)", case.case_id, mask_file)
                    continue
                raise AutosegError(f"{case.files[0]}: DICOM SEG needs a DICOM series as input; add --output-format nifti")
            mask, geometry = read_image(mask_file, np.uint8)
            write_dicom_seg(mask, geometry, case.files[0], labels, seg_path(out_dir, case), algorithm, codes)
            if "nifti" not in formats:
                mask_file.unlink()
        except AutosegError as e:
            failed[case.case_id] = str(e)
    return failed
