"""Each class's share of the voxels the training sampler shows the network, against its share of
the stored (preprocessed) voxels (counted as the trainer's default class weights count them), and the CE weight that would lift the rarest class to the most
frequent foreground class in each (issue 12: the two-stage model's stage 2 sees the tumour far more
often than the whole-image model does, at the same class weights).

Uses the training defaults of CPU-sized plans and stage 2 (batch 2, half the samples forced onto
foreground, all of those centred on the rarest class present, stage 2's box jitter); patches are
cut at the final patch size (no augmentation). Nothing is written.

Run (a preprocessed dataset of ``benchmarks/roi_vs_single.py``)::

    python benchmarks/sampled_class_share.py /tmp/roi_vs_single3/pre/Dataset043_RoiVsSingle --batches 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autoseg.trainers.class_weights import class_voxel_counts
from autoseg.trainers.sampling import PatchSampler


def class_shares(folder: Path, patch: list[int], roi: bool, batches: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    ids = sorted(p.name[: -len("_seg.npy")] for p in folder.glob("*_seg.npy"))
    stored = class_voxel_counts(folder, ids, num_classes).astype(np.float64)  # as the trainer counts them
    sampler = PatchSampler(folder, ids, patch, 2, 0.5, seed=0, rare_class_bias=1.0, roi_jitter=roi)
    sampled = np.zeros(num_classes)
    for _ in range(batches):
        target = np.asarray(sampler.next_batch()["target"]).astype(np.int64)
        sampled += np.bincount(target[target >= 0].ravel(), minlength=num_classes)[:num_classes]
    return stored / stored.sum(), sampled / sampled.sum()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preprocessed", type=Path, help="a preprocessed dataset folder (with plans.json)")
    p.add_argument("--batches", type=int, default=200)
    a = p.parse_args()
    plans = json.loads((a.preprocessed / "plans.json").read_text())
    num_classes = len(json.loads((a.preprocessed / "dataset.json").read_text())["labels"])
    for name, conf in plans["configurations"].items():
        folder = a.preprocessed / conf.get("data_identifier", "")
        if conf.get("data_identifier") is None or not folder.is_dir():
            continue
        stored, sampled = class_shares(folder, conf["patch_size"], "roi" in name, a.batches, num_classes)
        rare = int(np.argmin(np.where(stored[1:] > 0, stored[1:], np.inf))) + 1
        top = int(np.argmax(stored[1:])) + 1
        print(f"{name:<16} stored {np.round(stored, 4)} (weight {stored[top] / stored[rare]:.1f})   "
              f"sampled {np.round(sampled, 4)} (weight {sampled[top] / sampled[rare]:.1f})")


if __name__ == "__main__":
    main()
