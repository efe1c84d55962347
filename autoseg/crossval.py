"""``autoseg train`` as a user runs it: train the folds, then validate each one.

Fold validation predicts the fold's held-out cases at full resolution and evaluates them,
writing ``fold_<k>/validation/<case><file_ending>`` (input geometry, no postprocessing),
``<case>_probabilities.npz`` (for ensembles in model selection) and ``summary.json``, so
cross-validation results exist for ``autoseg find_best_configuration``.

This module composes stages (training, inference, evaluation), so it sits above them, like
``cli.py`` and ``demo.py``: ``trainers`` never imports ``inference``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from autoseg import paths
from autoseg.datasets.layout import list_cases, load_dataset_info
from autoseg.evaluation.evaluate import EvaluationSummary, evaluate_folders
from autoseg.inference.inputs import InputCase
from autoseg.inference.predictor import PredictOptions, predict_cases
from autoseg.model.trained import TrainedModel
from autoseg.trainers.commands import configure_train as _configure_training
from autoseg.trainers.commands import run_train as _run_training


def validate_fold(dataset: str, configuration: str, fold: str, val_ids: list[str], device: str,
                  amp: str = "auto") -> EvaluationSummary:
    """Predict and evaluate ``val_ids`` with this fold's final checkpoint; returns the summary."""
    t0 = time.time()
    raw = paths.raw_dataset_dir(dataset)
    info = load_dataset_info(raw)
    by_id = {c.case_id: c for c in list_cases(raw, info)}
    cases = [InputCase(cid, list(by_id[cid].images), f"{cid}{info.file_ending}") for cid in val_ids if cid in by_id]
    out = paths.validation_dir(dataset, configuration, fold)
    model = TrainedModel(paths.results_dataset_dir(dataset), configuration, folds=[fold])
    options = PredictOptions(device=device, amp=amp, save_probabilities=True, postprocess=False, overwrite=True)
    previous = None
    if model.config.is_roi:
        options.prev_stage_dir = roi_boxes_source(dataset, model.config.previous_stage or "", fold, cases, info.file_ending)
    elif model.config.previous_stage:
        previous = TrainedModel(paths.results_dataset_dir(dataset), model.config.previous_stage, folds=[fold])
    summary = predict_cases(model, cases, out, options, previous=previous)
    if summary.failed:
        print(summary.text())
    result = evaluate_folders(raw / "labelsTr", out, dataset_json=raw / "dataset.json", out_json=out / "summary.json",
                              case_ids=[c.case_id for c in cases if c.case_id in summary.predicted])
    dice = {k: round(v, 4) for k, v in result.mean_dice().items()}
    print(f"fold {fold} validation ({len(cases)} cases, {time.time() - t0:.0f} s, outside any --time-budget): "
          f"Dice {dice}  -> {Path(out) / 'summary.json'}")
    return result


def roi_boxes_source(dataset: str, previous: str, fold: str, cases: list[InputCase], ending: str) -> Path:
    """Where the two-stage model's validation takes its stage-1 masks: the stage-1 model's own
    cross-validation predictions of these cases (same fold, so never trained on them) when they all
    exist, else the ground truth (said so: such a validation is optimistic about stage 1)."""
    stage1 = paths.validation_dir(dataset, previous, fold)
    if cases and all((stage1 / f"{c.case_id}{ending}").is_file() for c in cases):
        print(f"fold {fold}: stage-2 boxes from {previous} cross-validation predictions ({stage1})")
        return stage1
    print(f"fold {fold}: no {previous} cross-validation predictions for every validation case; stage-2 boxes "
          f"from the ground truth (train {previous} fold {fold} first for an honest two-stage validation)")
    return paths.raw_dataset_dir(dataset) / "labelsTr"


def configure_train(p: argparse.ArgumentParser) -> None:
    _configure_training(p)


def run_train(a: argparse.Namespace) -> int:
    return _run_training(a, after_fold=None if a.no_validation else validate_fold)
