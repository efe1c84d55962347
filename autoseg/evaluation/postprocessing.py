"""Connected-component postprocessing, decided on cross-validation predictions.

The rules (:class:`~autoseg.model.postprocessing.PostprocessingRules`) are nnU-Net's: first try keeping only the largest connected component of all
foreground together (a liver is one organ, so stray blobs are false positives); then, per
label, try keeping only that label's largest component. A step is kept when it raises the
mean foreground Dice (mean over labels of the NaN-skipping mean over cases) and lowers no
label's mean Dice. Components are 26-connected. A region-based dataset is decided on its regions
(label values taken together, e.g. liver incl. tumour) instead of single labels; reference voxels
of the ignore label count in no Dice.

The edge case that bites: a liver tumour label usually has *several* true lesions, so
per-label LCC on the tumour label deletes real lesions; the decision rule rejects it on data
where that happens. Voxels removed by either step become background (0), as in nnU-Net,
not the surrounding label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from autoseg.evaluation.evaluate import list_label_files, map_cases, match_cases
from autoseg.evaluation.metrics import Region, as_region, confusion_matrix, region_counts, region_key
from autoseg.io.images import read_image, write_image
from autoseg.model.postprocessing import (PostprocessingRules, apply_postprocessing, keep_largest_foreground,
                                          keep_largest_of_label, save_rules)
from autoseg.overlap import dice_from_counts
from autoseg.paths import POSTPROCESSING_FILE

def _dice_counts(ref: np.ndarray, pred: np.ndarray, labels: Sequence[Region]) -> np.ndarray:
    """(len(labels), 3) array of tp, fp, fn per label (or region)."""
    top = max(max(max(r) for r in labels), int(ref.max(initial=0)), int(pred.max(initial=0)))
    cm = confusion_matrix(ref, pred, top + 1)
    return np.array([region_counts(cm, label)[:3] for label in labels], dtype=np.int64)


def _read_pair(ref_path: Path, pred_path: Path, ignore: int | None) -> tuple[np.ndarray, np.ndarray]:
    ref, _ = read_image(ref_path, dtype=np.int16)
    pred, _ = read_image(pred_path, dtype=np.int16)
    if ignore is not None:  # not counted: background in both
        ignored = ref == ignore
        ref[ignored], pred[ignored] = 0, 0
    return ref, pred


def _trial_counts(ref_path: Path, pred_path: Path, labels: list[Region], ignore: int | None = None) -> dict[str, np.ndarray]:
    """Counts for: the raw prediction, foreground LCC, and per-label (region) LCC on top of each."""
    ref, pred = _read_pair(ref_path, pred_path, ignore)
    fg = keep_largest_foreground(pred)
    out = {"base": _dice_counts(ref, pred, labels), "fg": _dice_counts(ref, fg, labels)}
    for start_name, start in (("base", pred), ("fg", fg)):
        # per-label LCC only changes that label's voxels (to 0), so it only changes that label's Dice
        out[f"{start_name}+labels"] = np.stack([
            _dice_counts(ref, keep_largest_of_label(start, list(label)), [label])[0] for label in labels])
    return out


def _trial_counts_star(args: tuple) -> dict[str, np.ndarray]:
    return _trial_counts(*args)


def _region_trial_star(args: tuple) -> np.ndarray:
    """(units, 3) counts of every unit after ``rules`` and then the LCC of ``region`` (regions overlap,
    so one region's LCC changes the others' Dice: each trial is scored on everything)."""
    ref_path, pred_path, units, ignore, rules, region = args
    ref, pred = _read_pair(ref_path, pred_path, ignore)
    return _dice_counts(ref, keep_largest_of_label(apply_postprocessing(pred, rules), list(region)), units)


def mean_dice(counts: np.ndarray) -> np.ndarray:
    """Per-label mean Dice over cases from (cases, labels, 3) tp/fp/fn counts; NaN cases skipped."""
    dice = dice_from_counts(counts[..., 0], counts[..., 1], counts[..., 2])
    out = np.full(dice.shape[1], np.nan)
    for j in range(dice.shape[1]):
        col = dice[:, j][~np.isnan(dice[:, j])]
        if col.size:
            out[j] = col.mean()
    return out


def _foreground_mean(per_label: np.ndarray) -> float:
    finite = per_label[np.isfinite(per_label)]
    return float(finite.mean()) if finite.size else float("nan")


def _improves(before: np.ndarray, after: np.ndarray) -> bool:
    """Mean foreground Dice rises and no label's mean Dice falls (labels without data are skipped)."""
    fg_before, fg_after = _foreground_mean(before), _foreground_mean(after)
    if not np.isfinite(fg_after) or (np.isfinite(fg_before) and fg_after <= fg_before + 1e-9):
        return False
    both = np.isfinite(before) & np.isfinite(after)
    return bool(np.all(after[both] >= before[both] - 1e-9))


def determine_postprocessing(ref_dir: Path | str, pred_dir: Path | str, labels: Sequence[int | Sequence[int]],
                             out_dir: Path | str | None = None, num_workers: int = 1,
                             rules_json: Path | str | None = None, ignore: int | None = None) -> PostprocessingRules:
    """Decide the rules on the predictions in ``pred_dir`` (matched to ``ref_dir`` by case id).

    ``labels``: label values, or regions (lists of values) for a region-based dataset; ``ignore``:
    the ignore label's value, whose reference voxels are not counted.

    Writes ``postprocessing.json`` to ``rules_json`` (default ``out_dir`` or ``pred_dir``);
    with ``out_dir`` also writes every prediction with the rules applied there.
    """
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    units = sorted(as_region(v) for v in labels)
    ref_files, pred_files = list_label_files(ref_dir), list_label_files(pred_dir)
    cases, _ = match_cases(ref_files, pred_files, pred_dir, None)
    jobs = [(ref_files[c], pred_files[c], units, ignore) for c in cases]
    trials = map_cases(_trial_counts_star, jobs, num_workers, "postprocessing")
    stacked = {k: np.stack([t[k] for t in trials]) for k in trials[0]}

    def as_dict(values: np.ndarray) -> dict[str, float]:
        return {region_key(u): float(v) for u, v in zip(units, values)}

    rules = PostprocessingRules()
    base = mean_dice(stacked["base"])
    fg = mean_dice(stacked["fg"])
    rules.keep_largest_foreground = _improves(base, fg)
    rules.evidence["foreground_lcc"] = {"before": as_dict(base), "after": as_dict(fg)}
    start = "fg" if rules.keep_largest_foreground else "base"
    current_counts = stacked[start].copy()
    for j, unit in enumerate(units):
        if any(len(u) > 1 for u in units):  # overlapping regions: one more pass over the cases per region
            trial_counts = np.stack(map_cases(_region_trial_star, [job[:4] + (rules, unit) for job in jobs], num_workers,
                                              f"postprocessing {region_key(unit)}"))
        else:  # disjoint labels: a label's LCC changes only its own Dice
            trial_counts = current_counts.copy()
            trial_counts[:, j] = stacked[f"{start}+labels"][:, j]
        before, after = mean_dice(current_counts), mean_dice(trial_counts)
        rules.evidence[f"{'label' if len(unit) == 1 else 'region'}_{region_key(unit)}_lcc"] = {"before": as_dict(before),
                                                                                              "after": as_dict(after)}
        if _improves(before, after):
            if len(unit) == 1:
                rules.keep_largest_for_labels.append(unit[0])
            else:
                rules.keep_largest_for_regions.append(list(unit))
            current_counts = trial_counts

    target = Path(rules_json) if rules_json is not None else Path(out_dir or pred_dir) / POSTPROCESSING_FILE
    save_rules(rules, target)
    if out_dir is not None:
        for case in tqdm(cases, desc="apply postprocessing", unit="case"):
            seg, geometry = read_image(pred_files[case], dtype=np.int16)
            fits_uint8 = seg.min(initial=0) >= 0 and seg.max(initial=0) < 256
            out = apply_postprocessing(seg, rules).astype(np.uint8 if fits_uint8 else np.int16)
            write_image(out, geometry, Path(out_dir) / pred_files[case].name)
    return rules
