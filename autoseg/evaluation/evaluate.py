"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Files are matched by case id: the file name without its ending (``.nii.gz``, ``.nii``,
``.nrrd``, ``.mha``), so ``ref/liver_7.nii.gz`` pairs with ``pred/liver_7.nrrd``.

Which cases are evaluated: every prediction (nnU-Net's convention, so a fold's validation
folder can be evaluated against the full ``labelsTr``), or exactly ``case_ids`` when given.
A prediction without a reference, or a requested case without a prediction, is an error;
reference cases that simply have no prediction are listed under ``missing_predictions`` in
the summary so a half-finished prediction run is visible.

Outputs: ``summary.json`` (per-case and mean metrics, see :func:`evaluate_folders`) and a
per-case CSV whose first columns are the ones a reader scans first (``dice_all`` = Dice of
all foreground labels together, then Dice/precision/recall per label).
"""

from __future__ import annotations

import csv
import io
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from autoseg.datasets.labels import LabelDefinition
from autoseg.errors import AutosegError
from autoseg.evaluation.clinical import clinical_labels, clinical_summary, compare_summaries
from autoseg.evaluation.metrics import (Region, as_region, compute_case_metrics, mean_metrics,
                                        region_key)
from autoseg.io.dicom_seg import is_dicom_seg, read_dicom_seg
from autoseg.io.images import read_image
from autoseg.io.json_io import atomic_write_bytes, load_json, save_json
from autoseg.io.workers import pool_context

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
SEG_SUFFIX = ".dcm"  # DICOM SEG, reference side only
DEFAULT_LABEL_NAMES = {1: "liver", 2: "tumor"}
CSV_FIRST_METRICS = ("Dice", "precision", "recall")
CSV_OTHER_METRICS = ("IoU", "HD95_mm", "ASSD_mm", "RVD", "VOE")
CSV_LESION_METRICS = ("lesion_precision", "lesion_recall", "lesion_F1", "lesion_n_ref", "lesion_n_pred",
                      "lesion_fp", "lesion_fn")


@dataclass
class EvaluationSummary:
    """``summary.json``: what :func:`evaluate_folders` returns and writes.

    Keys of ``mean`` and of each case's ``metrics`` are region keys (``"1"``, ``"2"``, ``"1+2"``)::

        metric_per_case: [{"case", "reference_file", "prediction_file",
                           "metrics": {"1": {"Dice": ..}, "2": {..}, "1+2": {..}}, "clinical": {..}}]
        mean:            {"1": {"Dice": ..}, ...}     NaN-skipping mean over cases
        foreground_mean: {"Dice": ..}                 mean over the single labels' means
        label_names:     {"1": "liver", "2": "tumor", "1+2": "all"}
    """

    metric_per_case: list[dict[str, Any]]
    mean: dict[str, dict[str, float]]
    foreground_mean: dict[str, float]
    label_names: dict[str, str]
    num_cases: int
    missing_predictions: list[str] = field(default_factory=list)

    def mean_dice(self) -> dict[str, float]:
        """``{"liver": 0.95, "tumor": 0.41, "all": 0.96}`` (readable names)."""
        return {self.label_names.get(k, k): v.get("Dice", float("nan")) for k, v in self.mean.items()}


def map_cases(fn: Callable[[tuple], Any], jobs: list[tuple], num_workers: int, desc: str) -> list[Any]:
    """``fn(job)`` for every job, in order, with a progress bar; ``num_workers > 1`` uses processes
    (``fn`` must then be a module-level function)."""
    out: list[Any] = []
    # the bar is closed (its line ended) before an error propagates, so the error gets a line of its own
    with tqdm(total=len(jobs), desc=desc, unit="case") as bar:
        if num_workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=num_workers, mp_context=pool_context()) as pool:
                for r in pool.map(fn, jobs):
                    out.append(r)
                    bar.update()
        else:
            for job in jobs:
                out.append(fn(job))
                bar.update()
    return out


def strip_suffix(name: str, dicom_seg: bool = False) -> str | None:
    """Case id of a label file name, or None when the ending is not a label format (``.dcm`` only with ``dicom_seg``)."""
    lower = name.lower()
    if dicom_seg and lower.endswith(SEG_SUFFIX):
        return name[: -len(SEG_SUFFIX)]
    for suffix in LABEL_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def list_label_files(folder: Path | str, dicom_seg: bool = False) -> dict[str, Path]:
    """``{case_id: path}`` of the label files in ``folder`` (hidden files skipped).

    Two files for one case id (``a.nii.gz`` and ``a.nrrd``) are refused: which one is meant?
    ``dicom_seg``: DICOM SEG files ``<case>.dcm`` count too (other DICOM files are skipped).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AutosegError(f"{folder}: folder not found; pass a folder of label files ({', '.join(LABEL_SUFFIXES)})")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case = strip_suffix(path.name, dicom_seg)
        if case is None or path.name.startswith(".") or not path.is_file():
            continue
        if path.name.lower().endswith(SEG_SUFFIX) and not is_dicom_seg(path):
            continue
        if case in found:
            raise AutosegError(f"{path}: case '{case}' also has {found[case].name}; keep one file per case")
        found[case] = path
    return found


def label_definition_of(path: Path | str | None) -> LabelDefinition | None:
    """The label definition of a dataset.json (None without one)."""
    if path is None:
        return None
    data = load_json(path)
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        raise AutosegError(f"{path}: no 'labels' mapping; expected {{\"background\": 0, \"liver\": 1, ...}}")
    return LabelDefinition.from_json(labels, data.get("regions_class_order"), str(path))


@dataclass
class EvaluationScope:
    """What is scored: single label values, regions (tuples of values) beyond them, which of these
    make ``foreground_mean``, their names, and the ignore value (its reference voxels are not counted)."""

    names: dict[int, str]
    labels: list[int]
    regions: list[Region]
    averaged: list[Region]
    region_names: dict[str, str]
    ignore: int | None


def _value_names(definition: LabelDefinition | None) -> dict[int, str]:
    """Names of single values: their own label's; in a region-based dataset a value without one is
    ``label<v>`` (the region's name belongs to the region: ``"liver": [1, 2]`` is "liver", 1 alone is "label1")."""
    if definition is None:
        return dict(DEFAULT_LABEL_NAMES)
    own = definition.value_names
    return {v: own.get(v, f"label{v}") for v in sorted(definition.mask_names)}


def evaluation_scope(definition: LabelDefinition | None, labels: Sequence[int] | None, regions: Sequence[Sequence[int]] | None,
                     label_names: dict[int, str] | None, where: str) -> EvaluationScope:
    """Labels default to the definition's mask values (liver 1, tumor 2 without one); regions to a
    region-based dataset's declared regions, else all labels together. A region-based dataset's
    ``foreground_mean`` is over its regions (as nnU-Net ranks it), else over the single labels."""
    names = dict(label_names) if label_names is not None else _value_names(definition)
    labels = sorted(int(v) for v in (labels if labels is not None else names))
    if not labels:
        raise AutosegError(f"{where}: no foreground labels to evaluate; pass -l 1 2")
    unknown = [v for v in labels if definition is not None and v not in definition.foreground_values]
    if unknown:
        raise AutosegError(f"{where}: -l {' '.join(map(str, unknown))} is not a foreground label value of this dataset "
                           f"({definition.foreground_values if definition else ''}; the ignore label is never scored); pick from those")
    by_regions = definition is not None and definition.has_regions and regions is None
    declared = [as_region(v) for v in definition.region_values] if definition is not None and by_regions else []
    if regions is None:
        regions = [r for r in declared if len(r) > 1] if by_regions else ([tuple(labels)] if len(labels) > 1 else [])
    region_names = {region_key(r): n for r, n in zip(declared, definition.region_names)} if definition and by_regions else {}
    averaged = declared if by_regions else [as_region(v) for v in labels]
    return EvaluationScope(names, labels, [as_region(r) for r in regions], averaged, region_names,
                           definition.ignore_value if definition is not None else None)


def region_name(region: Region, label_names: dict[int, str], all_labels: Sequence[int]) -> str:
    """Readable name: ``liver``; ``all`` for every foreground label together; ``liver+tumor``."""
    if len(region) > 1 and set(region) == set(all_labels):
        return "all"
    return "+".join(label_names.get(v, f"label{v}") for v in region)


def evaluate_case(ref_path: Path, pred_path: Path, regions: list[Region], tumor_label: int | None,
                  surface_distances_mm: bool = True, label_names: dict[int, str] | None = None,
                  ignore: int | None = None, organ_label: int = 1) -> dict:
    """Metrics of one case; refuses a prediction whose grid differs from the reference.

    A DICOM SEG reference (``.dcm``) is rasterised onto the prediction's grid; its segments map
    to labels by name (``label_names``), else by segment number. Voxels whose reference is the
    ``ignore`` value count in no metric (they are background in both maps). With a ``tumor_label``
    (the lesion) the clinical read-out compares ``organ_label`` and it.
    """
    pred, pred_geom = read_image(pred_path, dtype=np.int16)
    if ref_path.name.lower().endswith(SEG_SUFFIX):
        names = {n: v for v, n in (label_names or DEFAULT_LABEL_NAMES).items()}
        ref, ref_geom = read_dicom_seg(ref_path, pred_geom, names).astype(np.int16), pred_geom
    else:
        ref, ref_geom = read_image(ref_path, dtype=np.int16)
    if (diff := ref_geom.matches(pred_geom)) is not None:
        raise AutosegError(f"{pred_path}: grid differs from reference {ref_path.name} ({diff}); "
                           f"predict on the reference's grid (resample the prediction back)")
    if ignore is not None:
        ignored = ref == ignore
        ref[ignored], pred[ignored] = 0, 0
    metrics = compute_case_metrics(ref, pred, ref_geom.spacing_zyx, regions, tumor_label, surface_distances_mm)
    out = {"case": strip_suffix(ref_path.name, True), "reference_file": str(ref_path),
           "prediction_file": str(pred_path), "metrics": metrics}
    if tumor_label is not None:  # the clinical numbers a radiologist reads, predicted vs reference
        out["clinical"] = compare_summaries(clinical_summary(pred, pred_geom.spacing_zyx, organ_label, tumor_label),
                                            clinical_summary(ref, ref_geom.spacing_zyx, organ_label, tumor_label))
    return out


def _evaluate_case_star(args: tuple) -> dict:
    return evaluate_case(*args)


def match_cases(ref_files: dict[str, Path], pred_files: dict[str, Path], pred_dir: Path,
                case_ids: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(cases to evaluate, reference cases without prediction); errors for unmatched files."""
    if case_ids is not None:
        missing = [c for c in case_ids if c not in pred_files]
        if missing:
            raise AutosegError(f"{pred_dir}: no prediction for {len(missing)} case(s) ({', '.join(missing[:5])}"
                               f"{', ...' if len(missing) > 5 else ''}); predict them first")
        cases = list(case_ids)
    else:
        cases = sorted(pred_files)
        if not cases:
            raise AutosegError(f"{pred_dir}: no prediction files ({', '.join(LABEL_SUFFIXES)}) found; check the folder")
    no_ref = [c for c in cases if c not in ref_files]
    if no_ref:
        raise AutosegError(f"{pred_files.get(no_ref[0], pred_dir / no_ref[0])}: no reference file for case "
                           f"'{no_ref[0]}' in the reference folder; add it or remove the prediction")
    missing_predictions = sorted(c for c in ref_files if c not in pred_files)
    return cases, missing_predictions


def evaluate_folders(ref_dir: Path | str, pred_dir: Path | str, labels: list[int] | None = None,
                     regions: Sequence[Sequence[int]] | None = None, out_json: Path | str | None = None,
                     out_csv: Path | str | None = None, num_workers: int = 1, *,
                     dataset_json: Path | str | None = None, label_names: dict[int, str] | None = None,
                     case_ids: Sequence[str] | None = None, surface_distances_mm: bool = True,
                     organ_label: int | None = None, lesion_label: int | None = None) -> EvaluationSummary:
    """Evaluate every prediction in ``pred_dir`` against ``ref_dir``; write and return the summary.

    ``labels`` default to the foreground labels of ``dataset_json`` (or liver=1, tumor=2);
    ``regions`` default to a region-based dataset's regions, else all labels together (``dice_all``)
    when there are several (:func:`evaluation_scope`); reference voxels of its ignore label are not counted.
    ``out_json`` defaults to ``pred_dir/summary.json``; ``out_csv`` to the same name with
    ``.csv``. Returns the written :class:`EvaluationSummary`. The clinical read-out's organ and
    lesion: ``organ_label`` / ``lesion_label``, else by name (:func:`~autoseg.evaluation.clinical.clinical_labels`).
    """
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    scope = evaluation_scope(label_definition_of(dataset_json), labels, regions, label_names, str(dataset_json or "labels"))
    names, labels = scope.names, scope.labels
    all_regions = list(dict.fromkeys([as_region(v) for v in labels] + scope.regions + scope.averaged))
    roles = clinical_labels({v: names.get(v, f"label{v}") for v in labels}, organ_label, lesion_label)

    ref_files, pred_files = list_label_files(ref_dir, dicom_seg=True), list_label_files(pred_dir)
    cases, missing_predictions = match_cases(ref_files, pred_files, pred_dir, case_ids)
    jobs = [(ref_files[c], pred_files[c], all_regions, roles.lesion if roles else None, surface_distances_mm, names, scope.ignore,
             roles.organ if roles else 1) for c in cases]
    per_case = map_cases(_evaluate_case_star, jobs, num_workers, "evaluate")

    means = mean_metrics([c["metrics"] for c in per_case])
    keys = [region_key(r) for r in scope.averaged]
    common = [m for m in means[keys[0]] if all(m in means[k] for k in keys)]
    foreground_mean = {m: _nanmean([means[k][m] for k in keys]) for m in common}
    summary = EvaluationSummary(per_case, means, foreground_mean,
                                {region_key(r): scope.region_names.get(region_key(r)) or region_name(r, names, labels)
                                 for r in all_regions}, len(per_case), missing_predictions)
    out_json = Path(out_json) if out_json is not None else pred_dir / "summary.json"
    save_json(summary, out_json)
    write_metrics_csv(summary, Path(out_csv) if out_csv is not None else out_json.with_suffix(".csv"))
    return summary


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def csv_columns(summary: EvaluationSummary) -> list[tuple[str, str, str]]:
    """``(column, region_key, metric)`` in report order: dice_all, per-label Dice/precision/recall, the rest."""
    names = summary.label_names
    singles = [k for k in names if "+" not in k]
    groups = [k for k in names if "+" in k]
    cols = [(f"dice_{names[k]}", k, "Dice") for k in groups if names[k] == "all"]
    for k in singles:
        cols += [(f"{m.lower()}_{names[k]}", k, m) for m in CSV_FIRST_METRICS]
    for k in groups:
        first = ("precision", "recall") if names[k] == "all" else CSV_FIRST_METRICS
        cols += [(f"{m.lower()}_{names[k]}", k, m) for m in first]
    available = summary.mean
    for k in singles + groups:
        cols += [(f"{m.lower()}_{names[k]}", k, m) for m in CSV_OTHER_METRICS if m in available[k]]
        cols += [(m.lower(), k, m) for m in CSV_LESION_METRICS if m in available[k]]
    return cols


def _fmt(value: float) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return format(float(value), ".6g")


def write_metrics_csv(summary: EvaluationSummary, path: Path) -> None:
    """One row per case plus a final ``mean`` row (NaN-skipping), written atomically."""
    cols = csv_columns(summary)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case"] + [c[0] for c in cols])
    for case in summary.metric_per_case:
        writer.writerow([case["case"]] + [_fmt(case["metrics"][k][m]) for _, k, m in cols])
    writer.writerow(["mean"] + [_fmt(summary.mean[k][m]) for _, k, m in cols])
    atomic_write_bytes(path, buf.getvalue().encode())
