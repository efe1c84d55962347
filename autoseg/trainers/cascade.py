"""Training inputs of ``3d_cascade_fullres``: image channels + the ``3d_lowres`` stage's mask as one-hot.

Each training case's previous-stage mask is its ``3d_lowres`` cross-validation prediction
(``<results>/<D>/3d_lowres/fold_*/validation/<case>.nii.gz``, made by the fold that did not
train on it), so the cascade learns from the kind of first-stage errors it sees at inference.
The mask is mapped onto the fullres grid exactly as ``predict`` does
(:func:`autoseg.inference.predictor.onehot_previous_stage`) and stored with the image in a
data folder of its own (``<plans>_3d_cascade_fullres``), so sampling and augmentation need
no special case (the one-hot channels are interpolated like image channels).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

from autoseg import paths
from autoseg.errors import AutosegError
from autoseg.inference.predictor import onehot_previous_stage
from autoseg.io.images import read_image
from autoseg.planners.plans import Plans
from autoseg.preprocessing.case_store import is_case_done, list_preprocessed_cases, load_case, save_case


def cascade_data_identifier(plans: Plans, configuration: str) -> str:
    return f"{plans.plans_name}_{configuration}"


def prepare_cascade_data(dataset: str, plans: Plans, configuration: str) -> str:
    """Build (or complete) the cascade's data folder; returns its data identifier."""
    config = plans.configurations[configuration]
    prev = config.previous_stage
    assert prev is not None
    pp = paths.preprocessed_dataset_dir(dataset)
    src, ident = pp / config.data_identifier, cascade_data_identifier(plans, configuration)
    dst = pp / ident
    prev_dir = paths.results_dataset_dir(dataset) / prev
    masks = {p.name.split(".")[0]: p for p in prev_dir.glob("fold_*/validation/*.nii.gz")}
    cases = list_preprocessed_cases(src)
    missing = [c for c in cases if c not in masks]
    if missing:
        raise AutosegError(f"{prev_dir}: no {prev} cross-validation prediction for {len(missing)} case(s) (e.g. {missing[0]}); "
                           f"train every {prev} fold first: autoseg train -d {dataset} -c {prev} -f 0..4")
    grid = SimpleNamespace(plans=plans, config=config)  # what onehot_previous_stage reads of a model
    for cid in tqdm([c for c in cases if not is_case_done(dst, c)], desc="cascade inputs", unit="case"):
        data, seg, props = load_case(src, cid, mmap=False)
        mask, _ = read_image(masks[cid], dtype=np.uint8)
        onehot = onehot_previous_stage(mask, props, grid)  # type: ignore[arg-type]
        save_case(dst, np.concatenate([data, onehot.astype(np.float32)]), seg, props)
    return ident

