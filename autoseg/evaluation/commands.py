"""CLI glue for ``autoseg evaluate`` and ``autoseg report`` (wired into autoseg/cli.py).

Each command has ``configure_<name>(parser)`` to add its options and ``run_<name>(args) -> int``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.datasets.splits import parse_folds
from autoseg.errors import AutosegError
from autoseg.evaluation.clinical import ClinicalLabels, clinical_labels
from autoseg.evaluation.evaluate import (DEFAULT_LABEL_NAMES, EvaluationSummary, evaluate_folders, label_definition_of,
                                        list_label_files)
from autoseg.evaluation.report import ReportCase, write_report
from autoseg.io.images import image_suffix

TABLE_METRICS = ("Dice", "IoU", "precision", "recall")


def configure_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-r", "--ref", required=True, type=Path, help="folder of reference label files")
    parser.add_argument("-p", "--pred", required=True, type=Path, help="folder of predicted label files (same names)")
    parser.add_argument("-l", "--labels", type=int, nargs="+", default=None,
                        help="labels to evaluate (default: dataset.json's, else 1 2)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="summary JSON (default PRED/summary.json)")
    parser.add_argument("--csv", type=Path, default=None, help="per-case CSV (default: the summary's name with .csv)")
    parser.add_argument("--dataset-json", type=Path, default=None,
                        help="dataset.json whose labels name the classes (regions and the ignore label included)")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes evaluating cases in parallel (default 1)")
    add_clinical_label_options(parser)


def add_clinical_label_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--organ-label", type=int, default=None,
                        help="label value of the organ in the clinical read-out (default: the lowest label that is not the lesion; liver 1)")
    parser.add_argument("--lesion-label", type=int, default=None,
                        help="label value of the lesion (default: the label named tumour/lesion/cancer/metastasis; tumour 2)")


def format_mean_table(summary: EvaluationSummary) -> str:
    """Plain-text table: one row per label/region with its mean Dice/IoU/precision/recall."""
    names = summary.label_names
    width = max([len(n) for n in names.values()] + [len("foreground mean")])
    lines = [f"{'':{width}}  " + "  ".join(f"{m:>9}" for m in TABLE_METRICS)]
    rows = [(names.get(k, k), v) for k, v in summary.mean.items()] + [("foreground mean", summary.foreground_mean)]
    for name, values in rows:
        lines.append(f"{name:{width}}  " + "  ".join(f"{values.get(m, float('nan')):9.4f}" for m in TABLE_METRICS))
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    out_json = args.output if args.output is not None else args.pred / "summary.json"
    summary = evaluate_folders(args.ref, args.pred, args.labels, None, out_json, args.csv, args.num_processes,
                               dataset_json=args.dataset_json, organ_label=args.organ_label, lesion_label=args.lesion_label)
    print(f"{summary.num_cases} case(s) evaluated")
    if summary.missing_predictions:
        missing = summary.missing_predictions
        print(f"note: {len(missing)} reference case(s) have no prediction and were skipped "
              f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    print(format_mean_table(summary))
    print(f"summary: {out_json}")
    return 0


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--images", required=True, type=Path, help="folder of images (<case>_0000 or <case>)")
    parser.add_argument("-p", "--predictions", required=True, type=Path, help="folder of predictions (<case>)")
    parser.add_argument("-r", "--ref", type=Path, default=None, help="folder of reference labels (<case>), optional")
    parser.add_argument("-u", "--uncertainty", type=Path, default=None,
                        help="folder of uncertainty maps (<case>_uncertainty or <case>), optional")
    parser.add_argument("-o", "--output", required=True, type=Path, help="report .html to write")
    parser.add_argument("--curves", type=Path, default=None, help="training curves PNG to embed")
    parser.add_argument("--dataset-json", type=Path, default=None, help="dataset.json whose labels name the organ and lesion")
    add_clinical_label_options(parser)


def _files_by_case(folder: Path, strip: str | None, skip_other_channels: bool) -> dict[str, Path]:
    """``{case: path}`` for the image files in ``folder``; ``strip`` is a name ending removed if present."""
    if not folder.is_dir():
        raise AutosegError(f"{folder}: folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = image_suffix(path)
        if path.name.startswith(".") or not path.is_file() or suffix not in (".nii.gz", ".nii", ".nrrd", ".mha", ".png"):
            continue
        stem = path.name[: -len(suffix)]
        if strip and stem.endswith(strip):
            stem = stem[: -len(strip)]
        elif skip_other_channels and len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
            continue  # <case>_0001...: only the first channel is drawn
        found.setdefault(stem, path)
    return found


def collect_report_cases(images: Path, predictions: Path, ref: Path | None, uncertainty: Path | None) -> list[ReportCase]:
    """Match predictions to images (``<case>_0000`` or ``<case>``), references and uncertainty maps by case id."""
    preds = list_label_files(predictions)
    if not preds:
        raise AutosegError(f"{predictions}: no prediction files found")
    image_files = _files_by_case(images, "_0000", skip_other_channels=True)
    refs = list_label_files(ref) if ref is not None else {}
    uncs = _files_by_case(uncertainty, "_uncertainty", skip_other_channels=False) if uncertainty is not None else {}
    cases = []
    for case, pred_path in preds.items():
        if case not in image_files:
            raise AutosegError(f"{pred_path}: no image {case}_0000 or {case} in {images}; pass the folder the prediction was made from")
        cases.append(ReportCase(case, image_files[case], pred_path, refs.get(case), uncs.get(case)))
    return cases


def report_roles(args: argparse.Namespace) -> ClinicalLabels:
    """The organ and lesion the report draws and measures: ``--organ-label``/``--lesion-label``, named by
    ``--dataset-json`` (a region-based dataset names each painted value by its region: liver [1, 2] -> 1
    "liver"); liver 1 / tumour 2 when nothing is given."""
    definition = label_definition_of(args.dataset_json)
    given = [v for v in (args.organ_label, args.lesion_label) if v is not None]
    if definition is None and not given:
        return ClinicalLabels()
    names = definition.mask_names if definition is not None else {**{v: f"label{v}" for v in given}, **DEFAULT_LABEL_NAMES}
    return clinical_labels(names, args.organ_label, args.lesion_label) or ClinicalLabels()


def run_report(args: argparse.Namespace) -> int:
    cases = collect_report_cases(args.images, args.predictions, args.ref, args.uncertainty)
    out = write_report(cases, args.output, args.curves, report_roles(args))
    print(f"report with {len(cases)} case(s): {out}")
    return 0


def configure_find_best_configuration(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", default=None, help="dataset; optional when only one exists")
    p.add_argument("-f", "--folds", nargs="+", default=["0..4"], help="cross-validation folds to use: 0..4 (default), or e.g. 0 1")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="processes evaluating cases in parallel (default 1)")


def run_find_best_configuration(a: argparse.Namespace) -> int:
    folds = parse_folds(a.folds)
    if "all" in folds:
        raise AutosegError("-f all: the 'all' fold has no held-out cases to compare configurations on; give cross-validation folds (0..4)")
    from autoseg.evaluation.model_selection import find_best_configuration
    r = find_best_configuration(a.dataset, [int(f) for f in folds], a.num_processes)
    print(f"{'rank':<5}{'candidate':<45}{'mean fg Dice':>14}")
    for i, row in enumerate(r.ranking, 1):
        print(f"{i:<5}{row.name:<45}{row.mean_foreground_dice:>14.4f}")
    print(f"best: {r.ensemble or r.configuration}  (postprocessing: {r.postprocessing_rules})")
    print(f"predict with: {r.predict_command}")
    return 0
