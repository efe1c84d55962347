"""Training inputs of ``3d_cascade_fullres``: image channels + the ``3d_lowres`` stage's mask as one-hot.

Each training case's previous-stage mask is its ``3d_lowres`` cross-validation prediction
(``<results>/<D>/3d_lowres/fold_*/validation/<case><file_ending>``, made by the fold that did not
train on it), so the cascade learns from the kind of first-stage errors it sees at inference.
The mask is mapped onto the fullres grid exactly as ``predict`` does
(:func:`autoseg.preprocessing.preprocessor.onehot_previous_stage`) and stored with the image in a
data folder of its own (``<plans>_3d_cascade_fullres``), so sampling and augmentation need
no special case (the one-hot channels are interpolated like image channels).
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from autoseg import paths
from autoseg.datasets.layout import load_dataset_info
from autoseg.errors import AutosegError
from autoseg.io.images import read_image
from autoseg.planners.plans import Plans
from autoseg.preprocessing.case_store import is_case_done, list_preprocessed_cases, load_case, save_case
from autoseg.preprocessing.preprocessor import onehot_previous_stage


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
    ending = load_dataset_info(pp).file_ending  # validation masks are written with the dataset's ending
    masks = {p.name[: -len(ending)]: p for p in prev_dir.glob(f"fold_*/validation/*{ending}")}
    cases = list_preprocessed_cases(src)
    missing = [c for c in cases if c not in masks]
    if missing:
        raise AutosegError(f"{prev_dir}: no {prev} cross-validation prediction for {len(missing)} case(s) (e.g. {missing[0]}); "
                           f"train every {prev} fold first: autoseg train -d {dataset} -c {prev} -f 0..4")
    for cid in tqdm([c for c in cases if not is_case_done(dst, c)], desc="cascade inputs", unit="case"):
        data, seg, props = load_case(src, cid, mmap=False)
        mask, _ = read_image(masks[cid], dtype=np.uint8)
        onehot = onehot_previous_stage(mask, props, plans, config)
        save_case(dst, np.concatenate([data, onehot.astype(np.float32)]), seg, props)
    return ident

