"""``autoseg find_best_configuration``: rank trained configurations (and pairwise ensembles) by
their cross-validation results, choose postprocessing, and record the choice for ``predict``.

Inputs per configuration ``<results>/<D>/<config>/fold_<k>/validation/``: the fold's
validation predictions (``<case>`` + the dataset's ``file_ending``) and, for ensembles, their
probabilities (:mod:`autoseg.model.probabilities`).
A configuration counts only when every requested fold has validation predictions.

Outputs in ``<results>/<D>/``: ``crossval/<config>/`` (all folds' validation predictions
merged), ``crossval/<config>/summary.json``, ``<config>/postprocessing.json`` for the winner,
and ``best_configuration.json`` (:class:`~autoseg.model.selection.BestConfiguration`).
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autoseg import paths
from autoseg.datasets.layout import load_dataset_info
from autoseg.errors import AutosegError
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.postprocessing import determine_postprocessing
from autoseg.io.images import write_image
from autoseg.io.json_io import save_json
from autoseg.model.probabilities import SUFFIX as PROBABILITIES_SUFFIX
from autoseg.model.probabilities import cases_with_probabilities, combine_saved, load_probabilities
from autoseg.model.selection import BestConfiguration, RankedCandidate


def trained_configurations(dataset: str, folds: list[int], ending: str) -> list[str]:
    """Configurations whose every fold in ``folds`` has validation predictions (``<case><ending>``)."""
    root = paths.results_dataset_dir(dataset)
    if not root.is_dir():
        return []
    out = []
    for conf in sorted(p.name for p in root.iterdir() if p.is_dir() and p != paths.crossval_dir(dataset)):
        if all(any(paths.validation_dir(dataset, conf, f).glob(f"*{ending}")) for f in folds):
            out.append(conf)
    return out


def merge_folds(dataset: str, conf: str, folds: list[int], ending: str) -> Path:
    """Copy every fold's validation predictions (and probabilities) into ``crossval/<conf>``."""
    dest = paths.crossval_dir(dataset) / conf
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in folds:
        for p in paths.validation_dir(dataset, conf, f).iterdir():
            if p.name.startswith("."):
                continue
            if p.name.endswith((ending, PROBABILITIES_SUFFIX, "_probabilities.json")):
                shutil.copyfile(p, dest / p.name)
    return dest


def ensemble_folder(dataset: str, members: list[Path], name: str, ending: str) -> Path | None:
    """Average the members' probabilities per case (:func:`~autoseg.model.probabilities.combine`)
    and write the label masks; None when a member lacks probabilities for a case."""
    dest = paths.crossval_dir(dataset) / name
    cases = sorted(p.name[: -len(ending)] for p in members[0].glob(f"*{ending}") if not p.name.startswith("."))
    have = [cases_with_probabilities(m) for m in members]
    if not cases or not all(c in h for h in have for c in cases):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    weights = [1.0 / len(members)] * len(members)
    for c in tqdm(cases, desc=f"ensemble {name}", unit="case"):
        probs, infos = zip(*(load_probabilities(m, c) for m in members))
        seg = combine_saved(probs, weights, infos[0])
        write_image(seg, infos[0].geometry, dest / f"{c}{ending}")
    return dest


def rank_candidates(ref: Path, candidates: dict[str, Path], dataset_json: Path | None, num_workers: int) -> list[RankedCandidate]:
    """Every candidate folder evaluated against ``ref``, best mean foreground Dice first (NaN last)."""
    ranking = []
    for cand, folder in candidates.items():
        s = evaluate_folders(ref, folder, dataset_json=dataset_json, num_workers=num_workers, surface_distances_mm=False)
        ranking.append(RankedCandidate(cand, s.foreground_mean.get("Dice", float("nan")),
                                       {k: v.get("Dice", float("nan")) for k, v in s.mean.items()}))
    ranking.sort(key=lambda r: -np.nan_to_num(r.mean_foreground_dice, nan=-1))
    return ranking


def find_best_configuration(dataset: str | None, folds: list[int] | None = None, num_workers: int = 1) -> BestConfiguration:
    """Rank configurations and pairwise ensembles, choose postprocessing for the winner, write
    ``best_configuration.json`` (:class:`~autoseg.model.selection.BestConfiguration`)."""
    name = paths.resolve_dataset(dataset)
    folds = folds if folds is not None else [0, 1, 2, 3, 4]
    raw = paths.raw_dataset_dir(name)
    ref, dj = raw / "labelsTr", paths.preprocessed_dataset_dir(name) / "dataset.json"
    if not ref.is_dir():
        raise AutosegError(f"{ref}: reference labels not found; model selection compares with the raw labelsTr")
    ending = load_dataset_info(raw).file_ending
    confs = trained_configurations(name, folds, ending)
    if not confs:
        raise AutosegError(f"{paths.results_dataset_dir(name)}: no configuration has validation predictions for folds {folds}; "
                           f"train them (autoseg train -d {name} -f {' '.join(map(str, folds))}) or pass -f with the folds you trained")
    candidates: dict[str, Path] = {c: merge_folds(name, c, folds, ending) for c in confs}
    for pair in itertools.combinations(confs, 2):
        folder = ensemble_folder(name, [candidates[c] for c in pair], paths.ensemble_name(pair), ending)
        if folder is not None:
            candidates[paths.ensemble_name(pair)] = folder
    ranking = rank_candidates(ref, candidates, dj if dj.is_file() else None, num_workers)
    best = ranking[0]
    members = paths.ensemble_members(best.name)
    is_ens = len(members) > 1
    definition = load_dataset_info(raw).label_definition
    # region-based: postprocessing per region (nnU-Net); else per label
    units = definition.region_values if definition.has_regions else sorted(int(k) for k in best.per_label_dice if "+" not in k)
    rules_target = (candidates[best.name] if is_ens else paths.results_dataset_dir(name) / best.name) / paths.POSTPROCESSING_FILE
    rules = determine_postprocessing(ref, candidates[best.name], units, rules_json=rules_target, num_workers=num_workers,
                                     ignore=definition.ignore_value)
    # predict without -c reads this file and runs the ensemble's members, averages them, applies its rules
    cmd = f"autoseg predict -d {name} -i IN -o OUT" + ("" if is_ens else f" -c {best.name}")
    result = BestConfiguration(configuration=members[0], ensemble=members if is_ens else None, folds=folds,
                               mean_foreground_dice=best.mean_foreground_dice, postprocessing=str(rules_target),
                               postprocessing_rules={"keep_largest_foreground": rules.keep_largest_foreground,
                                                     "keep_largest_for_labels": rules.keep_largest_for_labels,
                                                     "keep_largest_for_regions": rules.keep_largest_for_regions},
                               ranking=ranking, predict_command=cmd)
    save_json(result, paths.results_dataset_dir(name) / paths.BEST_CONFIGURATION_FILE)
    return result
