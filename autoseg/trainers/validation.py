"""After a fold's last epoch: predict its validation cases at full resolution and evaluate them.

Writes ``fold_<k>/validation/<case>.nii.gz`` (input geometry, no postprocessing),
``<case>_probabilities.npz`` (for ensembles in model selection) and ``summary.json`` (Dice
and the other metrics per class), so cross-validation results exist for
``autoseg find_best_configuration``.
"""

from __future__ import annotations

from pathlib import Path

from autoseg import paths
from autoseg.datasets.layout import list_cases, load_dataset_info
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.inference.inputs import InputCase
from autoseg.inference.model import TrainedModel
from autoseg.inference.predictor import PredictOptions, predict_cases


def validate_fold(dataset: str, configuration: str, fold: str, val_ids: list[str], device: str, amp: str = "auto") -> dict:
    """Predict and evaluate ``val_ids`` with this fold's final checkpoint; returns the summary."""
    raw = paths.raw_dataset_dir(dataset)
    info = load_dataset_info(raw)
    by_id = {c.case_id: c for c in list_cases(raw, info)}
    cases = [InputCase(cid, list(by_id[cid].images), f"{cid}{info.file_ending}") for cid in val_ids if cid in by_id]
    out = paths.fold_dir(dataset, configuration, fold) / "validation"
    model = TrainedModel(paths.results_dataset_dir(dataset), configuration, folds=[fold])
    previous = None
    if model.config.previous_stage:
        previous = TrainedModel(paths.results_dataset_dir(dataset), model.config.previous_stage, folds=[fold])
    options = PredictOptions(device=device, amp=amp, save_probabilities=True, postprocess=False, overwrite=True)
    summary = predict_cases(model, cases, out, options, previous=previous)
    if summary.failed:
        print(summary.text())
    ref = raw / "labelsTr"
    result = evaluate_folders(ref, out, dataset_json=raw / "dataset.json", out_json=out / "summary.json",
                              case_ids=[c.case_id for c in cases if c.case_id in summary.predicted])
    dice = {result["label_names"].get(k, k): round(v.get("Dice", float("nan")), 4) for k, v in result["mean"].items()}
    print(f"fold {fold} validation ({len(cases)} cases): Dice {dice}  -> {Path(out) / 'summary.json'}")
    return result
