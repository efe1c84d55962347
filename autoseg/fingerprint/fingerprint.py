"""Extract the dataset fingerprint and check the dataset's integrity in one pass over the files.

Every case is read once: geometry and label checks happen on the arrays that also feed the
statistics, so a broken dataset is reported before anything is written.

Intensity statistics come from a bounded, seeded sample of foreground voxels:
``SAMPLE_BUDGET // num_cases`` voxels per case (at least ``MIN_PER_CASE``), so memory does
not grow with the dataset's size.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autoseg.datasets.layout import CaseFiles, DatasetInfo
from autoseg.errors import AutosegError
from autoseg.fingerprint.cropping import crop, nonzero_bbox
from autoseg.io.images import read_case, read_header, read_label
from autoseg.io.workers import die_with_parent, parent_gone, pool_context
from autoseg.io.json_io import load_dataclass, save_json

SAMPLE_BUDGET = 2_000_000
MIN_PER_CASE = 2_000


@dataclass
class IntensityStats:
    """Foreground intensity statistics of one channel (in the image's units, e.g. HU)."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float
    n_samples: int


@dataclass
class CaseFingerprint:
    case_id: str
    spacing_zyx: list[float]
    shape_zyx: list[int]
    shape_after_crop_zyx: list[int]
    crop_size_ratio: float
    labels_present: list[int] = field(default_factory=list)
    foreground_bbox_zyx: list[list[int]] | None = None  # all labels > 0 together, half-open, in the input grid


@dataclass
class DatasetFingerprint:
    dataset_name: str
    num_cases: int
    cases: list[CaseFingerprint]
    intensity_per_channel: dict[str, IntensityStats]
    median_relative_size_after_cropping: float
    samples_per_case: int
    seed: int

    def spacings(self) -> np.ndarray:
        return np.array([c.spacing_zyx for c in self.cases], dtype=float)

    def shapes_after_crop(self) -> np.ndarray:
        return np.array([c.shape_after_crop_zyx for c in self.cases], dtype=float)

    def save(self, path: Path | str) -> None:
        save_json(self, path)

    @classmethod
    def load(cls, path: Path | str) -> "DatasetFingerprint":
        return load_dataclass(cls, path)


def label_values(seg: np.ndarray, path: Path) -> list[int]:
    """Sorted distinct values of a label map (any real dtype), checked one z-slice at a time.

    Raises AutosegError naming ``path`` when a value is not an integer. Values are counted with
    ``bincount`` when their range is small (no sort, no full-size temporary).
    """
    if seg.dtype.kind == "f":
        for z in range(seg.shape[0]):
            if not np.all(np.mod(seg[z], 1) == 0):
                raise AutosegError(f"{path}: label map has non-integer values; labels must be integers")
    if seg.size == 0:
        return []
    lo, hi = int(seg.min()), int(seg.max())
    if hi - lo >= 65536:
        return sorted(int(v) for v in np.unique(seg))
    counts = np.zeros(hi - lo + 1, np.int64)
    for z in range(seg.shape[0]):
        counts += np.bincount((seg[z] - lo).astype(np.intp).ravel(), minlength=hi - lo + 1)
    return [int(v) + lo for v in np.flatnonzero(counts)]


def _case_fingerprint(case: CaseFiles, labels: list[int], n_samples: int, seed: int,
                      ignore: int | None = None) -> tuple[CaseFingerprint, np.ndarray, int]:
    """Check one case and return its fingerprint, foreground samples (C, n) and image dimension (2 or 3).

    ``labels``: the values a label file may hold; ``ignore``: the ignore label's value, which is not
    foreground (neither in the intensity samples nor in the foreground box)."""
    data, geom = read_case(case.images)
    ndim = read_header(case.images[0])[0]
    assert case.label is not None
    seg, lgeom = read_label(case.label)
    if (diff := geom.matches(lgeom)) is not None:
        raise AutosegError(f"{case.label}: label grid differs from image {case.images[0].name} ({diff}); resample the label onto the image grid")
    present = label_values(seg, case.label)
    undeclared = [v for v in present if v not in labels]
    if undeclared:
        raise AutosegError(f"{case.label}: label value(s) {undeclared} not declared in dataset.json labels {labels}; declare or remove them")
    fg_box = foreground_box(seg, ignore)
    bbox = nonzero_bbox(data)
    data_c, seg_c = crop(data, bbox), crop(seg[None], bbox)[0]
    fg = (seg_c > 0) if ignore is None else (seg_c > 0) & (seg_c != ignore)
    del seg, seg_c
    rng = np.random.default_rng(seed)
    n_fg = int(np.count_nonzero(fg))
    if n_fg:
        pick = rng.choice(n_fg, size=min(n_samples, n_fg), replace=False) if n_fg > n_samples else np.arange(n_fg)
        samples = data_c[:, fg][:, np.sort(pick)]
    else:
        samples = np.zeros((data.shape[0], 0), np.float32)
    shape_c = list(data_c.shape[1:])
    fp = CaseFingerprint(case.case_id, [float(s) for s in geom.spacing_zyx], list(geom.shape_zyx), shape_c,
                         float(np.prod(shape_c) / np.prod(geom.shape_zyx)), present, fg_box)
    return fp, samples, ndim


def foreground_box(seg: np.ndarray, ignore: int | None = None) -> list[list[int]] | None:
    """Half-open (Z, Y, X) box of ``seg > 0`` (the ``ignore`` value excluded); None for a case without foreground."""
    box = []
    fg = (seg > 0) if ignore is None else (seg > 0) & (seg != ignore)
    for axis in range(seg.ndim):
        nz = np.flatnonzero(fg.any(axis=tuple(a for a in range(seg.ndim) if a != axis)))
        if nz.size == 0:
            return None
        box.append([int(nz[0]), int(nz[-1]) + 1])
    return box


def _worker(args):
    if parent_gone():  # the parent was killed: stop
        os._exit(1)
    try:
        return _case_fingerprint(*args)
    except AutosegError as e:
        return e


def _stats(x: np.ndarray) -> IntensityStats:
    if x.size == 0:
        return IntensityStats(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    x = x.astype(np.float64)
    p005, p50, p995 = np.percentile(x, [0.5, 50, 99.5])
    return IntensityStats(float(x.mean()), float(x.std()), float(p50), float(x.min()), float(x.max()),
                          float(p005), float(p995), int(x.size))


def _mixed_dimensions(cases: list[CaseFiles], ndims: list[int]) -> list[str]:
    """One line per 2D case when the dataset also has 3D cases: its z-spacing of 1.0 would be made up."""
    if not (2 in ndims and 3 in ndims):
        return []
    return [f"{c.images[0]}: 2D image in a dataset of 3D images (a z-spacing would be made up and shift the plan); "
            "convert it to a 3D image with its real slice spacing, or remove the case" for c, d in zip(cases, ndims) if d == 2]


def extract_fingerprint(name: str, info: DatasetInfo, cases: list[CaseFiles], num_processes: int = 1, seed: int = 1234) -> DatasetFingerprint:
    """Check every case and compute the fingerprint. Raises AutosegError listing every faulty case.

    Also refused: 2D cases among 3D ones (their z-spacing would be made up).
    """
    if not cases:
        raise AutosegError(f"dataset {name}: no training cases found; add images to imagesTr and labels to labelsTr")
    per_case = max(MIN_PER_CASE, SAMPLE_BUDGET // len(cases))
    labels = info.label_definition
    jobs = [(c, labels.all_values, per_case, seed + i, labels.ignore_value) for i, c in enumerate(cases)]
    results = []
    bar = tqdm(total=len(jobs), desc="fingerprint", unit="case")
    if num_processes <= 1:
        for j in jobs:
            try:
                results.append(_case_fingerprint(*j))
            except AutosegError as e:
                results.append(e)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=num_processes, initializer=die_with_parent, mp_context=pool_context()) as ex:
            for r in ex.map(_worker, jobs):
                results.append(r)
                bar.update()
    bar.close()
    errors = [str(r) for r in results if isinstance(r, AutosegError)]
    errors = errors or _mixed_dimensions(cases, [r[2] for r in results])
    if errors:
        raise AutosegError("\n".join(errors))
    fps = [r[0] for r in results]
    stats = {}
    for ch in range(info.num_channels):
        stats[str(ch)] = _stats(np.concatenate([r[1][ch] for r in results]))
    return DatasetFingerprint(name, len(fps), fps, stats, float(np.median([f.crop_size_ratio for f in fps])), per_case, seed)
