"""On-disk format of a preprocessed case (one file set per case, memory-mappable).

::

    <preprocessed>/<Dataset>/<data_identifier>/
        <case>.npy        float32 (C, *spatial)  normalised, resampled, transposed image
        <case>_seg.npy    int8    (1, *spatial)  class map on the same grid (label values as classes 0..K-1, ignore = K; see datasets/labels.py)
        <case>.json       CaseProperties: everything needed to invert the preprocessing

``spatial`` is in the plan's transposed order. Files are written under temp names and
renamed; the ``.json`` is written last, so its presence marks a finished case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.io.images import Geometry
from autoseg.io.json_io import load_dataclass, save_json, atomic_path


@dataclass
class CaseProperties:
    """What preprocessing did to one case, so predictions can be mapped back exactly.

    ``bbox_zyx``: ``[[z0, z1], [y0, y1], [x0, x1]]`` crop box in the original (Z, Y, X) grid.
    ``flipped_axes``: spatial axes of the preprocessed grid (0 = first) that were flipped last, after
    resampling, so the case lies in canonical orientation (plans with ``canonical_orientation``).
    ``class_locations``: per foreground label (as string), up to N voxel coordinates
    ``[c, *spatial]`` in the preprocessed grid, used for foreground oversampling.
    """

    case_id: str
    original_geometry: Geometry
    bbox_zyx: list[list[int]]
    shape_after_crop_zyx: list[int]
    spacing_after_resampling: list[float]
    shape_after_resampling: list[int]
    class_locations: dict[str, list[list[int]]] = field(default_factory=dict)
    roi_box_zyx: list[list[int]] | None = None  # two-stage: this case is the box of a larger input ...
    roi_full_geometry: Geometry | None = None   # ... whose grid this is (the mask is pasted back there)
    roi_core_zyx: list[list[int]] | None = None  # training: the un-jittered box in the preprocessed grid
    flipped_axes: list[int] = field(default_factory=list)  # preprocessed axes flipped to canonical orientation

    @property
    def output_geometry(self) -> Geometry:
        """The grid a prediction of this case is written on: the whole input (also for a two-stage box)."""
        return self.roi_full_geometry if self.roi_full_geometry is not None else self.original_geometry


def case_paths(folder: Path, case_id: str) -> tuple[Path, Path, Path]:
    folder = Path(folder)
    return folder / f"{case_id}.npy", folder / f"{case_id}_seg.npy", folder / f"{case_id}.json"


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, ".tmp.npy") as tmp:
        np.save(tmp, arr)


def save_case(folder: Path, data: np.ndarray, seg: np.ndarray | None, props: CaseProperties) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d, s, j = case_paths(folder, props.case_id)
    _save_npy_atomic(d, np.ascontiguousarray(data, dtype=np.float32))
    if seg is not None:
        _save_npy_atomic(s, np.ascontiguousarray(seg, dtype=np.int8))
    save_json(props, j)


def is_case_done(folder: Path, case_id: str) -> bool:
    d, _, j = case_paths(folder, case_id)
    return d.is_file() and j.is_file()


def load_case(folder: Path, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Image (C, ...), label (1, ...) or None, and properties; arrays memory-mapped by default."""
    d, s, j = case_paths(folder, case_id)
    mode = "r" if mmap else None
    data = np.load(d, mmap_mode=mode)
    seg = np.load(s, mmap_mode=mode) if s.is_file() else None
    return data, seg, load_dataclass(CaseProperties, j)


def list_preprocessed_cases(folder: Path) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json")
                  if not p.name.startswith(".") and (folder / f"{p.stem}.npy").is_file())
