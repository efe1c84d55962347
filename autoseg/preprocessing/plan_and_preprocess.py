"""``autoseg plan_and_preprocess``: check + fingerprint, plan, preprocess every configuration.

Writes into ``<preprocessed>/<Dataset>/``: ``dataset.json`` (copy), ``dataset_fingerprint.json``,
``plans.json`` and one folder per data identifier with the cases (see
:mod:`autoseg.preprocessing.case_store`) and ``configuration.json`` (the plan the cases were
made with). Each raw case is read once and preprocessed for every requested configuration.
Finished cases are skipped on re-runs; a folder's cases are redone only when something that
shapes the stored arrays changed (:data:`DATA_KEYS`: spacing, normalisation, resampling, axis
order, labels, orientation), not when only the patch, batch or network changed (e.g. a new ``--gpu-memory``).
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from autoseg import paths
from autoseg.datasets.layout import CaseFiles, list_cases, load_dataset_info, save_dataset_info, warn_num_training
from autoseg.errors import AutosegError
from autoseg.fingerprint.fingerprint import extract_fingerprint
from autoseg.io.images import read_case, read_label
from autoseg.io.json_io import load_json, remove_stale_temps, save_json, write_error
from autoseg.io.workers import die_with_parent, parent_gone, pool_context
from autoseg.planners.planner import plan_experiment
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.case_store import is_case_done, save_case
from autoseg.preprocessing.preprocessor import preprocess_case
from autoseg.preprocessing.roi import preprocess_roi_case

log = logging.getLogger("autoseg")
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_roi_fullres")
DATA_KEYS = ("spacing_mm", "normalization", "resampling", "transpose_forward", "labels", "canonical_orientation")
DATA_KEY_DEFAULTS = {"canonical_orientation": False}  # what a stamp written before the key existed meant
MOVE_HINT = "set AUTOSEG_PREPROCESSED to another folder"


def _data_folders(plans: Plans, configurations: Sequence[str]) -> dict[str, ConfigurationPlan]:
    """data_identifier -> plan, for the requested configurations that were planned."""
    out: dict[str, ConfigurationPlan] = {}
    for name in configurations:
        c = plans.configurations.get(name)
        if c is not None:
            out.setdefault(c.data_identifier, c)
    return out


def _preprocess_one(job: tuple[CaseFiles, Plans, list[tuple[Path, ConfigurationPlan]], int]) -> str | None:
    case, plans, targets, seed = job
    if parent_gone():  # the parent was killed: stop instead of writing cases nobody waits for
        os._exit(1)
    import torch
    torch.set_num_threads(1)
    try:
        data, geom = read_case(case.images)
        seg = read_label(case.label)[0][None].astype(np.int8) if case.label else None  # values checked by the fingerprint
        for folder, config in targets:
            if config.is_roi and seg is not None:
                d, s, props = preprocess_roi_case(data, seg, geom, plans, config, case.case_id, seed)
            else:
                d, s, props = preprocess_case(data, seg, geom, plans, config, case.case_id, seed)
            save_case(folder, d, s, props)
    except AutosegError as e:
        return str(e)
    return None


def preprocess_dataset(name: str, plans: Plans, cases: list[CaseFiles], configurations: Sequence[str],
                       num_processes: int = 1, clean: bool = False) -> None:
    base = paths.preprocessed_dataset_dir(name)
    folders = _data_folders(plans, configurations)
    for ident, config in folders.items():
        folder = base / ident
        stamp = folder / "configuration.json"
        made_with = dict(load_json_roundtrip(config), transpose_forward=plans.transpose_forward, labels=plans.labels)
        old = load_json(stamp) if stamp.is_file() else None
        changed = [k for k in DATA_KEYS if old.get(k, DATA_KEY_DEFAULTS.get(k)) != made_with[k]] if old is not None else []
        if (clean or changed) and folder.is_dir():
            if changed:
                log.warning("%s of %s changed since its cases were made: redoing them", ", ".join(changed), ident)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)  # left by a killed run
        save_json(made_with, stamp)
    jobs = []
    for i, case in enumerate(cases):
        todo = [(base / ident, c) for ident, c in folders.items() if not is_case_done(base / ident, case.case_id)]
        if todo:
            jobs.append((case, plans, todo, 1000 + i))
    skipped = len(cases) - len(jobs)
    desc = f"preprocess {','.join(folders)}" + (f" ({skipped} done)" if skipped else "")
    errors = _run_jobs(jobs, num_processes, desc)
    if errors:
        raise AutosegError("\n".join(errors))


def _run_jobs(jobs: list, num_processes: int, desc: str) -> list[str]:
    """Run :func:`_preprocess_one` over ``jobs`` (in a pool of workers that die with this process);
    the per-case error lines. An OSError (a failed write) cancels the cases not yet started."""
    errors = []
    with tqdm(total=len(jobs), desc=desc, unit="case") as bar:
        if num_processes <= 1:
            for j in jobs:
                if (err := _preprocess_one(j)) is not None:
                    errors.append(err)
                bar.update()
            return errors
        ex = ProcessPoolExecutor(max_workers=num_processes, initializer=die_with_parent, mp_context=pool_context())
        try:
            for err in ex.map(_preprocess_one, jobs):
                if err is not None:
                    errors.append(err)
                bar.update()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
    return errors


def load_json_roundtrip(obj) -> dict:
    """``obj`` as it would read back from JSON (to compare with a stored file)."""
    import json
    return json.loads(json.dumps(asdict(obj)))


def plan_and_preprocess(dataset: str | None, configurations: Sequence[str] = DEFAULT_CONFIGURATIONS, gpu_memory_gb: float = 8.0,
                        num_processes: int = 1, verify_only: bool = False, clean: bool = False,
                        normalization: str | None = None, target: str = "gpu") -> Plans:
    """Run the whole first stage; returns the plans. Nothing is written if the dataset check fails.

    ``target``: ``gpu`` (nnU-Net's plans for ``gpu_memory_gb``) or ``cpu`` (sized to CPU time).
    """
    name = paths.resolve_dataset(dataset, search_preprocessed=False)
    raw = paths.raw_dataset_dir(name)
    info = load_dataset_info(raw)
    cases = list_cases(raw, info)
    warn_num_training(raw, info, cases)
    unknown = [c for c in configurations if c not in DEFAULT_CONFIGURATIONS]
    if unknown:
        raise AutosegError(f"unknown configuration(s) {unknown}; choose from {list(DEFAULT_CONFIGURATIONS)}")
    fp = extract_fingerprint(name, info, cases, num_processes)
    if verify_only:
        print(f"{name}: {len(cases)} cases passed the integrity check")
        return plan_experiment(info, fp, gpu_memory_gb, configurations, normalization, target)
    plans = plan_experiment(info, fp, gpu_memory_gb, DEFAULT_CONFIGURATIONS, normalization, target)
    out = paths.preprocessed_dataset_dir(name)
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        save_dataset_info(info, out)
        fp.save(out / "dataset_fingerprint.json")
        plans.save(out / "plans.json")
        preprocess_dataset(name, plans, cases, list(configurations), num_processes, clean)
    except OSError as e:  # disk full, read-only, no permission (also from a worker): one line, no traceback
        raise (write_error(e, out, MOVE_HINT) or e) from None
    for cname, c in plans.configurations.items():
        print(f"{cname:>20}: spacing {np.round(c.spacing_mm, 3).tolist()} mm, patch {c.patch_size}, batch {c.batch_size}, "
              f"{c.topology.n_stages} stages, features {c.topology.features_per_stage[0]}.., "
              f"~{c.expected_s_per_iter_cpu} s/iteration on 2 CPU cores")
    print(f"plans: {out / 'plans.json'}")
    return plans
