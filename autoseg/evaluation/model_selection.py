"""``autoseg find_best_configuration``: rank trained configurations (and pairwise ensembles) by
their cross-validation results, choose postprocessing, and record the choice for ``predict``.

Inputs per configuration ``<results>/<D>/<config>/fold_<k>/validation/``: the fold's
validation predictions (``<case>.nii.gz``) and, for ensembles, their probabilities
(``<case>_probabilities.npz``, key ``probabilities``, float16 (K, Z, Y, X) in the input geometry).
A configuration counts only when every requested fold has validation predictions.

Outputs in ``<results>/<D>/``: ``crossval/<config>/`` (all folds' validation predictions
merged), ``crossval/<config>/summary.json``, ``<config>/postprocessing.json`` for the winner,
and ``best_configuration.json``::

    {"configuration": "3d_fullres", "ensemble": null, "folds": [0, 1, 2, 3, 4],
     "mean_foreground_dice": 0.93, "ranking": [...], "predict_command": "autoseg predict ..."}
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autoseg import paths
from autoseg.errors import AutosegError
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.postprocessing import determine_postprocessing
from autoseg.io.images import read_image, write_image
from autoseg.io.json_io import save_json

BEST_FILE = "best_configuration.json"


def trained_configurations(dataset: str, folds: list[int]) -> list[str]:
    """Configurations whose every fold in ``folds`` has validation predictions."""
    root = paths.results_dataset_dir(dataset)
    if not root.is_dir():
        return []
    out = []
    for conf in sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("crossval", "ensembles")):
        if all(any((root / conf / f"fold_{f}" / "validation").glob("*.nii.gz")) for f in folds):
            out.append(conf)
    return out


def merge_folds(dataset: str, conf: str, folds: list[int]) -> Path:
    """Copy every fold's validation predictions (and probabilities) into ``crossval/<conf>``."""
    dest = paths.results_dataset_dir(dataset) / "crossval" / conf
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in folds:
        for p in (paths.fold_dir(dataset, conf, f) / "validation").iterdir():
            if p.name.endswith(".nii.gz") or p.name.endswith("_probabilities.npz"):
                shutil.copyfile(p, dest / p.name)
    return dest


def ensemble_folder(dataset: str, members: list[Path], name: str) -> Path | None:
    """Average the members' probabilities per case and write argmax masks; None if probabilities are missing."""
    dest = paths.results_dataset_dir(dataset) / "crossval" / name
    cases = sorted(p.name[: -len(".nii.gz")] for p in members[0].glob("*.nii.gz"))
    if not cases or not all((m / f"{c}_probabilities.npz").is_file() for m in members for c in cases):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for c in tqdm(cases, desc=f"ensemble {name}", unit="case"):
        acc = None
        for m in members:
            p = np.load(m / f"{c}_probabilities.npz")["probabilities"].astype(np.float32)
            acc = p if acc is None else acc + p
        _, geom = read_image(members[0] / f"{c}.nii.gz", dtype=np.uint8)
        write_image(np.argmax(acc, 0).astype(np.uint8), geom, dest / f"{c}.nii.gz")
    return dest


def find_best_configuration(dataset: str | None, folds: list[int] | None = None, num_workers: int = 1) -> dict:
    name = paths.resolve_dataset(dataset)
    folds = folds if folds is not None else [0, 1, 2, 3, 4]
    ref = paths.raw_dataset_dir(name) / "labelsTr"
    dj = paths.preprocessed_dataset_dir(name) / "dataset.json"
    if not ref.is_dir():
        raise AutosegError(f"{ref}: reference labels not found; model selection compares with the raw labelsTr")
    confs = trained_configurations(name, folds)
    if not confs:
        raise AutosegError(f"{paths.results_dataset_dir(name)}: no configuration has validation predictions for folds {folds}; "
                           f"train them (autoseg train -d {name} -f {' '.join(map(str, folds))}) or pass -f with the folds you trained")
    candidates: dict[str, Path] = {c: merge_folds(name, c, folds) for c in confs}
    for a, b in itertools.combinations(confs, 2):
        folder = ensemble_folder(name, [candidates[a], candidates[b]], f"ensemble__{a}__{b}")
        if folder is not None:
            candidates[f"ensemble__{a}__{b}"] = folder
    ranking = []
    for cand, folder in candidates.items():
        s = evaluate_folders(ref, folder, dataset_json=dj if dj.is_file() else None, num_workers=num_workers, surface_distances_mm=False)
        ranking.append({"name": cand, "mean_foreground_dice": s["foreground_mean"].get("Dice", float("nan")),
                        "per_label_dice": {k: v.get("Dice") for k, v in s["mean"].items()}})
    ranking.sort(key=lambda r: -np.nan_to_num(r["mean_foreground_dice"], nan=-1))
    best = ranking[0]
    labels = sorted(int(k) for k in best["per_label_dice"] if "+" not in k)
    rules_target = (paths.results_dataset_dir(name) / best["name"] / "postprocessing.json") if not best["name"].startswith("ensemble__") \
        else candidates[best["name"]] / "postprocessing.json"
    rules = determine_postprocessing(ref, candidates[best["name"]], labels, rules_json=rules_target, num_workers=num_workers)
    is_ens = best["name"].startswith("ensemble__")
    members = best["name"].split("__")[1:] if is_ens else [best["name"]]
    # predict without -c reads this file and runs the ensemble's members, averages them, applies its rules
    cmd = f"autoseg predict -d {name} -i IN -o OUT" if is_ens else f"autoseg predict -d {name} -c {best['name']} -i IN -o OUT"
    result = {"configuration": members[0], "ensemble": members if is_ens else None,
              "folds": folds, "mean_foreground_dice": best["mean_foreground_dice"], "postprocessing": rules_target.name and str(rules_target),
              "postprocessing_rules": {"keep_largest_foreground": rules.keep_largest_foreground,
                                       "keep_largest_for_labels": rules.keep_largest_for_labels},
              "ranking": ranking, "predict_command": cmd}
    save_json(result, paths.results_dataset_dir(name) / BEST_FILE)
    return result


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", default=None, help="dataset; optional when only one exists")
    p.add_argument("-f", "--folds", nargs="+", default=["0..4"], help="cross-validation folds to use: 0..4 (default), or e.g. 0 1")
    p.add_argument("-np", "--num-processes", type=int, default=1)


def run(a: argparse.Namespace) -> int:
    from autoseg.trainers.splits import parse_folds
    folds = parse_folds(a.folds)
    if "all" in folds:
        raise AutosegError("-f all: the 'all' fold has no held-out cases to compare configurations on; give cross-validation folds (0..4)")
    r = find_best_configuration(a.dataset, [int(f) for f in folds], a.num_processes)
    print(f"{'rank':<5}{'candidate':<45}{'mean fg Dice':>14}")
    for i, row in enumerate(r["ranking"], 1):
        print(f"{i:<5}{row['name']:<45}{row['mean_foreground_dice']:>14.4f}")
    print(f"best: {r['ensemble'] or r['configuration']}  (postprocessing: {r['postprocessing_rules']})")
    print(f"predict with: {r['predict_command']}")
    return 0
