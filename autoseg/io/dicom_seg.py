"""DICOM Segmentation objects (DICOM SEG) out of and into label maps, through highdicom.

Writing: a (Z, Y, X) label map on the grid of a DICOM series (what ``autoseg predict`` writes
for a DICOM input) becomes one BINARY SEG object with one segment per foreground label. Each
segment has a name (the label's name in dataset.json), a SNOMED category and type code, and
the algorithm identification (autoseg, its version, the model). Each frame references the
source CT slice it lies on, so viewers (3D Slicer, OHIF, PACS) place it on the right slices.
Slices are matched by position, not by file order: an instance's ImagePositionPatient is
mapped into the mask's grid, so a series stored head-first or feet-first, or with shuffled
file names, gets the same frames. Empty frames are left out (highdicom's default).

Reading: :func:`read_dicom_seg` rasterises a SEG onto a given grid (the prediction's) by the
frames' plane positions; segment labels map to label values by name (case-insensitive,
``tumour`` = ``tumor``), else by segment number.

Codes: :data:`DEFAULT_CODES` covers liver and liver tumour; other datasets give theirs as
JSON (``predict --segment-codes FILE``, ``<results>/<Dataset>/segment_codes.json``, or a
``"segment_codes"`` key in dataset.json; see :mod:`autoseg.inference.seg_output`)::

    {"spleen": {"category": ["91723000", "SCT", "Anatomical Structure"],
                "type": ["78961009", "SCT", "Spleen"]}}

A label without a code gets category and type "Tissue" (SCT 85756007) and a warning.
highdicom and pydicom are optional: install ``autoseg[dicom]``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from autoseg.errors import AutosegError
from autoseg.io.images import Geometry, dicom_series_files
from autoseg.io.json_io import atomic_path, load_json

log = logging.getLogger(__name__)

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
POSITION_TOLERANCE = 0.05  # in voxels: how far an instance may lie from a grid slice


@dataclass(frozen=True)
class SegmentCode:
    """A segment's coded meaning: (code value, coding scheme, code meaning) triples."""

    category: tuple[str, str, str]
    type: tuple[str, str, str]


ANATOMICAL_STRUCTURE = ("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = ("49755003", "SCT", "Morphologically Abnormal Structure")
TISSUE = ("85756007", "SCT", "Tissue")
DEFAULT_CODES: dict[str, SegmentCode] = {
    "liver": SegmentCode(ANATOMICAL_STRUCTURE, ("10200004", "SCT", "Liver")),
    "tumor": SegmentCode(ABNORMAL_STRUCTURE, ("108369006", "SCT", "Neoplasm")),
    "liver tumor": SegmentCode(ABNORMAL_STRUCTURE, ("108369006", "SCT", "Neoplasm")),
    "lesion": SegmentCode(ABNORMAL_STRUCTURE, ("52988006", "SCT", "Lesion")),
}
FALLBACK_CODE = SegmentCode(TISSUE, TISSUE)


@dataclass
class AlgorithmInfo:
    """Who made the segmentation: goes into each segment's Algorithm Identification."""

    name: str = "autoseg"
    version: str = ""
    model: str = ""  # e.g. "Dataset003_Liver 3d_fullres folds 0,1,2,3,4"


def _need_highdicom():
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError:
        raise AutosegError("DICOM SEG needs highdicom and pydicom: pip install 'autoseg[dicom]' "
                           "(or pip install highdicom)") from None
    return highdicom


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ").replace("tumour", "tumor")


def parse_segment_codes(data: Any, source: str) -> dict[str, SegmentCode]:
    """``{"label name": {"category": [value, scheme, meaning], "type": [...]}}`` -> codes by normalised name."""
    if not isinstance(data, dict):
        raise AutosegError(f"{source}: segment codes must be a JSON object of label name -> {{category, type}}")
    out = {}
    for name, entry in data.items():
        try:
            cat, typ = entry["category"], entry["type"]
            if not (len(cat) == 3 and len(typ) == 3):
                raise ValueError
            out[_norm(name)] = SegmentCode(tuple(str(v) for v in cat), tuple(str(v) for v in typ))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            raise AutosegError(f"{source}: segment code for '{name}' must be {{\"category\": [value, scheme, meaning], "
                               f"\"type\": [value, scheme, meaning]}}") from None
    return out


def load_segment_codes(path: Path | str) -> dict[str, SegmentCode]:
    """Codes from a JSON file: the object itself, or its ``"segment_codes"`` key (a dataset.json)."""
    data = load_json(path)
    if isinstance(data, dict) and "segment_codes" in data:
        data = data["segment_codes"]
    return parse_segment_codes(data, str(path))


def code_for(name: str, extra: Mapping[str, SegmentCode] | None = None) -> SegmentCode:
    """The code of label ``name``: ``extra`` first, then :data:`DEFAULT_CODES`, else "Tissue" (with a warning)."""
    key = _norm(name)
    for table in (extra or {}, DEFAULT_CODES):
        if key in table:
            return table[key]
    log.warning("label '%s' has no DICOM segment code; writing category/type 'Tissue' (give codes with --segment-codes)", name)
    return FALLBACK_CODE


def read_series_datasets(folder: Path | str):
    """pydicom datasets of the series autoseg reads from ``folder`` (pixel data skipped)."""
    _need_highdicom()
    import pydicom
    out = []
    for f in dicom_series_files(folder):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # present but empty (seen in real CT): the default repertoire is meant
        out.append(ds)
    return out


def _to_index(geometry: Geometry, position_xyz) -> np.ndarray:
    """Continuous (x, y, z) voxel index of a physical point in ``geometry``'s grid."""
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    spacing_xyz = np.asarray(geometry.spacing_zyx[::-1], dtype=np.float64)
    return np.linalg.solve(d, np.asarray(position_xyz, np.float64) - np.asarray(geometry.origin_xyz)) / spacing_xyz


def slice_index(geometry: Geometry, position_xyz, orientation, rows: int, cols: int, what: str) -> int:
    """The z index in ``geometry`` of a slice whose first pixel is at ``position_xyz`` (mm, patient xyz).

    ``orientation`` is the slice's ImageOrientationPatient (row then column direction); it must
    be the grid's x and y axes, so that pixel (row r, column c) is voxel (k, r, c).
    """
    shape_z, shape_y, shape_x = geometry.shape_zyx
    ix, iy, iz = _to_index(geometry, position_xyz)
    k = int(round(iz))
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(np.asarray(orientation, np.float64), np.concatenate([d[:, 0], d[:, 1]]), atol=1e-3):
        raise AutosegError(f"{what}: slice orientation {np.round(np.asarray(orientation, float), 3).tolist()} differs from "
                           f"the image's axes; use the series it was made from")
    if (rows, cols) != (shape_y, shape_x) or abs(ix) > POSITION_TOLERANCE or abs(iy) > POSITION_TOLERANCE \
            or abs(iz - k) > POSITION_TOLERANCE or not 0 <= k < shape_z:
        raise AutosegError(f"{what}: slice at {np.round(position_xyz, 2).tolist()} mm ({rows}x{cols}) does not lie on "
                           f"the image grid (voxel index {np.round([ix, iy, iz], 2).tolist()}); use the series it was made from")
    return k


def _segment_descriptions(labels: Mapping[str, int], algorithm: AlgorithmInfo, codes: Mapping[str, SegmentCode] | None):
    hd = _need_highdicom()
    from pydicom.sr.codedict import codes as dcm_codes
    algo = hd.AlgorithmIdentificationSequence(name=algorithm.name, family=dcm_codes.cid7162.ArtificialIntelligence,
                                              version=algorithm.version or "unknown",
                                              parameters={"model": algorithm.model} if algorithm.model else None)
    out = []
    foreground = sorted((int(v), k) for k, v in labels.items() if int(v) != 0)
    for number, (_, name) in enumerate(foreground, start=1):
        code = code_for(name, codes)
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=hd.sr.CodedConcept(*code.category),
            segmented_property_type=hd.sr.CodedConcept(*code.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo))
    return out, [v for v, _ in foreground]


def write_dicom_seg(mask_zyx: np.ndarray, geometry: Geometry, series_folder: Path | str, labels: Mapping[str, int],
                    out_path: Path | str, algorithm: AlgorithmInfo | None = None,
                    codes: Mapping[str, SegmentCode] | None = None) -> Path:
    """Write ``mask_zyx`` (label values of ``labels``, on ``geometry`` = the series' grid) as one DICOM SEG.

    ``labels`` maps names to values (dataset.json's, background 0 included); foreground label
    i-th in ascending value order becomes segment i. Every instance of the series must lie on a
    slice of ``geometry`` (it does for the grid SimpleITK read from it). Returns ``out_path``.
    """
    hd = _need_highdicom()
    algorithm = algorithm or AlgorithmInfo()
    datasets = read_series_datasets(series_folder)
    if list(mask_zyx.shape) != list(geometry.shape_zyx):
        raise ValueError(f"mask shape {mask_zyx.shape} does not match geometry {geometry.shape_zyx}")
    index = [slice_index(geometry, ds.ImagePositionPatient, ds.ImageOrientationPatient, int(ds.Rows), int(ds.Columns),
                         str(series_folder)) for ds in datasets]
    descriptions, values = _segment_descriptions(labels, algorithm, codes)
    lut = np.zeros(256, dtype=np.uint8)
    for number, v in enumerate(values, start=1):
        lut[v] = number
    unknown = sorted(set(np.unique(mask_zyx).tolist()) - set(values) - {0})
    if unknown:
        raise AutosegError(f"{out_path}: mask holds label value(s) {unknown} that dataset.json's labels do not name")
    order = np.argsort(index)
    frames = lut[mask_zyx[np.asarray(index)[order]]]
    sources = [datasets[i] for i in order]
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines narrate every copied module
    with warnings.catch_warnings():  # single-component patient names ("JANCT000") are common and harmless here
        warnings.filterwarnings("ignore", message=".*person name.*")
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(),
            series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="autoseg", manufacturer_model_name=algorithm.model or algorithm.name,
            software_versions=algorithm.version or "unknown", device_serial_number="none",
            series_description=f"{algorithm.name} segmentation")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path, ".dcm") as tmp:
        seg.save_as(tmp)
    return out_path


def is_dicom_seg(path: Path | str) -> bool:
    """True for a file whose SOP class is Segmentation Storage (False for anything pydicom cannot read)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        import pydicom
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # not DICOM, or pydicom missing
        return False
    return str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS_UID


def segment_values(seg, labels: Mapping[str, int] | None) -> dict[int, int]:
    """Segment number -> label value: by name in ``labels`` (normalised), else the segment number itself."""
    by_name = {_norm(k): int(v) for k, v in (labels or {}).items()}
    out = {}
    for number in seg.segment_numbers:
        name = _norm(str(seg.get_segment_description(number).segment_label))
        out[int(number)] = by_name.get(name, int(number))
    return out


def read_dicom_seg(path: Path | str, geometry: Geometry, labels: Mapping[str, int] | None = None) -> np.ndarray:
    """A SEG file rasterised onto ``geometry``'s grid: uint8 (Z, Y, X) label values.

    Frames are placed by their plane position; voxels no frame covers are 0. Where segments
    overlap, the higher label value wins. Raises AutosegError when a frame is off the grid.
    """
    hd = _need_highdicom()
    try:
        seg = hd.seg.segread(str(path))
    except Exception as e:
        raise AutosegError(f"{path}: cannot read DICOM SEG ({type(e).__name__}: {str(e)[:120]})") from None
    values = segment_values(seg, labels)
    out = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber) \
            if "SegmentIdentificationSequence" in group else int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        pos = group.PlanePositionSequence[0].ImagePositionPatient
        orient = (group if "PlaneOrientationSequence" in group else shared).PlaneOrientationSequence[0].ImageOrientationPatient
        k = slice_index(geometry, pos, orient, int(seg.Rows), int(seg.Columns), str(path))
        v = values[number]
        plane = out[k]
        plane[(pixels[i] > 0) & (plane < v)] = v
    return out
