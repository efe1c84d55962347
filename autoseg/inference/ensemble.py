"""``autoseg ensemble``: combine the saved probabilities of several predictions; and
``autoseg predict`` with the ensemble of configurations that model selection chose.

``autoseg ensemble -i DIR1 DIR2 ... -o OUT [--weights w1 w2 ...]`` combines the saved
probabilities (``<case>_probabilities.npz`` from ``predict --save-probabilities``) of
several predictions, e.g. 3d_fullres and 2d, as ``sum_i w_i p_i`` with the weights
normalised to sum 1 (equal weights by default), then writes the argmax mask with the
geometry recorded beside the probabilities. Classes are combined one at a time (a running
argmax), so memory is the inputs' float16 arrays plus two float32 volumes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from autoseg.errors import AutosegError
from autoseg.inference.inputs import InputCase
from autoseg.inference.predictor import UNCERTAINTY_DIR, PredictOptions, PredictSummary, cases_to_predict, predict_cases
from autoseg.inference.sliding_window import normalized_weights
from autoseg.io.images import IMAGE_SUFFIXES, write_image
from autoseg.io.json_io import check_writable, remove_stale_temps
from autoseg.model.postprocessing import PostprocessingRules, apply_postprocessing, load_rules
from autoseg.model.probabilities import (ProbabilityInfo, cases_with_probabilities, combine_saved, load_probabilities,
                                         write_probabilities)
from autoseg.model.selection import ensemble_rules_file
from autoseg.model.trained import TrainedModel


@dataclass
class EnsembleSummary:
    written: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _mask_cases(folder: Path) -> set[str]:
    """Case ids of the masks in ``folder`` (``<case><image ending>``, hidden files excluded)."""
    out = set()
    for p in folder.iterdir():
        suffix = next((s for s in IMAGE_SUFFIXES if p.name.endswith(s)), None)
        if suffix and not p.name.startswith(".") and p.is_file():
            out.add(p.name[: -len(suffix)])
    return out


def ensemble_folders(inputs: Sequence[Path | str], out_dir: Path | str, weights: Sequence[float] | None = None,
                     rules: PostprocessingRules | None = None, save_probabilities: bool = False,
                     overwrite: bool = True) -> EnsembleSummary:
    """Combine every case present in all ``inputs``; a case missing somewhere is reported as failed."""
    folders = [Path(p).expanduser() for p in inputs]
    if len(folders) < 2:
        raise AutosegError("autoseg ensemble: give at least two input folders with -i")
    for f in folders:
        if not f.is_dir():
            raise AutosegError(f"{f}: folder not found")
    w = normalized_weights(weights, len(folders), "input folder")
    per_folder = [cases_with_probabilities(f) for f in folders]
    # a case with a mask but no probabilities somewhere (a killed --save-probabilities run) is reported too
    all_cases = sorted(set().union(*per_folder, *(_mask_cases(f) for f in folders)))
    if not all_cases:
        raise AutosegError(f"{folders[0]}: no <case>_probabilities.npz files; predict with --save-probabilities first")
    out_dir = Path(out_dir).expanduser()
    check_writable(out_dir, "pass another -o")
    remove_stale_temps(out_dir)
    summary = EnsembleSummary()
    for case in tqdm(all_cases, desc="ensemble", unit="case"):
        missing = [str(f) for f, cs in zip(folders, per_folder) if case not in cs]
        try:
            if missing:
                raise AutosegError(f"no {case}_probabilities.npz in {', '.join(missing)}; predict it there with --save-probabilities")
            probs, infos = zip(*(load_probabilities(f, case) for f in folders))
            _check_compatible(case, folders, probs, infos)
            info: ProbabilityInfo = infos[0]
            out_path = out_dir / info.segmentation_file
            if out_path.is_file() and not overwrite:
                continue
            seg = combine_saved(probs, w, info)
            if rules is not None:
                seg = apply_postprocessing(seg, rules)
            write_image(seg, info.geometry, out_path)
            if save_probabilities:
                mixed = np.zeros(probs[0].shape, dtype=np.float16)
                for k in range(mixed.shape[0]):
                    mixed[k] = sum(np.float32(wi) * p[k] for p, wi in zip(probs, w))
                write_probabilities(mixed, info, out_dir)
            summary.written.append(case)
        except AutosegError as e:
            summary.failed[case] = str(e)
            tqdm.write(f"error: {case}: {e}", file=sys.stderr)
    return summary


def _check_compatible(case: str, folders: Sequence[Path], probs: Sequence[np.ndarray], infos: Sequence[ProbabilityInfo]) -> None:
    for f, p, info in zip(folders[1:], probs[1:], infos[1:]):
        if p.shape != probs[0].shape:
            raise AutosegError(f"{f}: {case} probabilities have shape {p.shape}, {folders[0]} has {probs[0].shape}; "
                               f"ensemble predictions of the same images")
        if info.labels != infos[0].labels or info.regions_class_order != infos[0].regions_class_order:
            raise AutosegError(f"{f}: {case} labels {info.labels} differ from {folders[0]} ({infos[0].labels})")
        if (diff := infos[0].geometry.matches(info.geometry)) is not None:
            raise AutosegError(f"{f}: {case} geometry differs from {folders[0]} ({diff}); ensemble predictions of the same images")


def predict_ensemble(dataset_dir: Path, configurations: Sequence[str], cases: Sequence[InputCase], out_dir: Path | str,
                     options: PredictOptions, folds: Sequence[str] | None = None, checkpoint: str = "final") -> PredictSummary:
    """Predict ``cases`` with every configuration, average their probabilities (equal weights, as
    model selection scored the ensemble) and write the argmax masks into ``out_dir``.

    ``autoseg predict`` does this when ``best_configuration.json`` chose an ensemble and no
    ``-c`` is given. The members write probabilities into a hidden work folder inside ``out_dir``,
    removed at the end; the ensemble's own postprocessing rules (chosen on its cross-validation
    predictions) are applied to the averaged masks. ``--uncertainty`` maps land per member in
    ``out_dir/uncertainty/<configuration>/``. Cases whose output exists are skipped unless
    ``options.overwrite``; a case that fails in any member is reported once, as failed.
    """
    out_dir = Path(out_dir)
    todo, summary = cases_to_predict(cases, out_dir, options)
    if not todo:
        return summary
    member_options = replace(options, save_probabilities=True, postprocess=False, overwrite=True, num_parts=1, part_id=0)
    rules_file = ensemble_rules_file(dataset_dir, configurations)
    rules = load_rules(rules_file) if options.postprocess and rules_file.is_file() else None
    work = Path(tempfile.mkdtemp(prefix=".autoseg_members_", dir=out_dir))
    try:
        folders = []
        for conf in configurations:
            model = TrainedModel(dataset_dir, conf, folds, checkpoint)
            previous = model.previous_stage_model() if options.prev_stage_dir is None else None
            member = predict_cases(model, todo, work / conf, member_options, previous)
            for cid, msg in member.failed.items():
                summary.failed.setdefault(cid, f"{conf}: {msg}")
            _move_uncertainty(work / conf / UNCERTAINTY_DIR, out_dir / UNCERTAINTY_DIR / conf)
            folders.append(work / conf)
        if all(c.case_id in summary.failed for c in todo):
            return summary
        combined = ensemble_folders(folders, out_dir, None, rules, options.save_probabilities)
        for cid, msg in combined.failed.items():
            summary.failed.setdefault(cid, msg)
        summary.predicted = sorted(combined.written)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def _move_uncertainty(src: Path, dest: Path) -> None:
    if not src.is_dir():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        os.replace(f, dest / f.name)
