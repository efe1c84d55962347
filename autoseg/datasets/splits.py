"""Cross-validation splits: written once to ``splits_final.json`` and reused.

The file is a list of ``{"train": [...], "val": [...]}``, one per fold — the same format as
nnU-Net's, so a user can edit it (or bring nnU-Net's) and autoseg will respect it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.io.json_io import load_json, save_json


def make_splits(case_ids: list[str], n_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """K-fold split of the sorted case ids, shuffled with ``seed`` (fewer folds than cases: one case per fold)."""
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise AutosegError(f"cross-validation needs at least 2 cases, found {len(ids)}; add cases or train with -f all")
    k = min(n_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, k)
    out = []
    for f in range(k):
        val = sorted(ids[i] for i in folds[f])
        out.append({"train": sorted(set(ids) - set(val)), "val": val})
    return out


def load_or_create_splits(path: Path, case_ids: list[str], n_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """Read ``path`` if it exists (checking it names known cases), else create and write it."""
    path = Path(path)
    if path.is_file():
        splits = load_json(path)
        known = set(case_ids)
        if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
            raise AutosegError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}}; fix or delete it")
        for i, s in enumerate(splits):
            unknown = [c for c in s["train"] + s["val"] if c not in known]
            if unknown:
                raise AutosegError(f"{path}: fold {i} names unknown case(s) {unknown[:3]}; fix or delete the file")
        return splits
    splits = make_splits(case_ids, n_folds, seed)
    save_json(splits, path)
    return splits


def fold_cases(splits: list[dict[str, list[str]]], fold: str, all_cases: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) ids for ``fold`` ('0'..'4' or 'all'; 'all' validates on its training cases)."""
    if fold == "all":
        return sorted(all_cases), sorted(all_cases)
    f = int(fold)
    if not 0 <= f < len(splits):
        raise AutosegError(f"fold {fold} does not exist: splits_final.json has {len(splits)} folds (0..{len(splits) - 1})")
    return list(splits[f]["train"]), list(splits[f]["val"])


def parse_folds(tokens: list[str]) -> list[str]:
    """``['0']``, ``['0', '1', '2']``, ``['0..4']``, ``['all']`` -> fold names."""
    out: list[str] = []
    for t in tokens:
        if t == "all":
            out.append("all")
        elif ".." in t:
            a, b = t.split("..", 1)
            if not (a.isdigit() and b.isdigit()) or int(a) > int(b):
                raise AutosegError(f"fold range '{t}' is not valid; write e.g. 0..4")
            out += [str(i) for i in range(int(a), int(b) + 1)]
        elif t.isdigit():
            out.append(str(int(t)))
        else:
            raise AutosegError(f"fold '{t}' is not valid; use 0..4, a list like '0 1 2', or 'all'")
    return list(dict.fromkeys(out))
