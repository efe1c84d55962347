"""``autoseg predict``'s pipeline over cases.

While the network predicts case i, a background thread reads and preprocesses case i + 1,
and a pool of ``-np`` export threads maps finished predictions back to the input grid and
writes them (threads, so a prediction is handed over without a copy). Overlap is limited
by a host-memory budget (``--memory-gb``, default 8; see :func:`predict_cases`). Each file is written under a temporary name
and renamed. A case that fails prints one line and the others still run; the summary and a
non-zero exit code report it.

Cascade (``3d_cascade_fullres``): the ``3d_lowres`` model predicts first (or its masks are
read from ``--prev-stage-predictions DIR``, ``<case>`` + any image ending, on the input's
grid). The mask is cropped, transposed and resampled like the image onto the fullres grid
and appended as one-hot channels of the foreground labels in ascending order (K - 1
channels, float 0/1) after the image channels; the trainer builds its inputs the same way.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from autoseg.errors import AutosegError
from autoseg.inference.export import export_prediction, segment
from autoseg.inference.inputs import InputCase, read_input_case
from autoseg.inference.runtimes import load_networks
from autoseg.inference.sliding_window import (CPU_WINDOW_BATCH, MAX_FORWARD_VOXELS, SlidingWindowSettings,
                                              predict_sliding_window)
from autoseg.inference.uncertainty import UncertaintyCollector, entropy_map, summarize, volume_names
from autoseg.io.images import IMAGE_SUFFIXES, Geometry, read_image, write_image
from autoseg.io.json_io import check_writable, remove_stale_temps, save_json
from autoseg.model.probabilities import probability_paths
from autoseg.model.trained import TrainedModel
from autoseg.preprocessing.case_store import CaseProperties
from autoseg.preprocessing.inverse import map_to_original
from autoseg.preprocessing.preprocessor import onehot_previous_stage, preprocess_case
from autoseg.preprocessing.roi import Stage1Region, crop_case, stage1_region

log = logging.getLogger(__name__)

UNCERTAINTY_DIR = "uncertainty"
NETWORK_OVERHEAD_BYTES = int(2.5 * 1024**3)  # interpreter + torch + a 3D U-Net forward on a 128^3 patch (measured 2.4 GB)


@dataclass
class PredictOptions:
    """``autoseg predict``'s switches (see ``autoseg predict --help``)."""

    step: float = 0.5
    mirror: bool = True
    ensemble: str = "mean"
    weights: list[float] | None = None
    device: str = "cpu"
    amp: str = "auto"
    save_probabilities: bool = False
    uncertainty: bool = False
    postprocess: bool = True
    overwrite: bool = False
    num_export_workers: int = 1
    num_parts: int = 1
    part_id: int = 0
    prev_stage_dir: Path | None = None
    memory_gb: float = 8.0
    runtime: str = "auto"  # torch, onnxruntime, openvino (autoseg.inference.runtimes)


@dataclass
class PredictSummary:
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def text(self) -> str:
        """One line for stdout; each failure's message went to stderr when it happened."""
        out = f"predicted {len(self.predicted)}, skipped {len(self.skipped)} (output exists; --overwrite redoes them), failed {len(self.failed)}"
        return out + (f" ({', '.join(sorted(self.failed))}; errors above)" if self.failed else "")


def select_part(cases: Sequence[InputCase], num_parts: int, part_id: int) -> list[InputCase]:
    """Part ``part_id`` of ``num_parts`` disjoint shares: sorted cases ``[part_id::num_parts]``."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise AutosegError(f"--num-parts {num_parts} --part-id {part_id}: need num-parts >= 1 and 0 <= part-id < num-parts")
    return sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]


class Predictor:
    """One configuration's networks on a device, ready to predict preprocessed volumes."""

    def __init__(self, model: TrainedModel, options: PredictOptions):
        self.model, self.options = model, options
        self.networks = load_networks(model, options.device, options.runtime, options.amp)
        dim = len(model.patch_size)
        self.settings = SlidingWindowSettings(
            patch_size=model.patch_size, step=options.step, mirror=options.mirror, mirror_axes=model.config.mirror_axes,
            ensemble=options.ensemble,
            weights=options.weights, device=options.device, amp=options.amp,
            batch_size=self.window_batch(dim), sigmoid=model.plans.label_definition.has_regions)

    def window_batch(self, dim: int) -> int:
        """Windows per forward: 2D up to the training batch (<= 16); 3D one, except two small ones on a
        CPU without mirroring (mirrored copies already share a forward; see ``mirrored_passes``)."""
        if dim == 2:
            return max(1, min(self.model.config.batch_size, 16))
        small = int(np.prod(self.model.patch_size)) * CPU_WINDOW_BATCH <= MAX_FORWARD_VOXELS
        return CPU_WINDOW_BATCH if self.options.device == "cpu" and not self.options.mirror and small else 1

    def preprocess(self, data: np.ndarray, geometry: Geometry, case_id: str) -> tuple[np.ndarray, CaseProperties]:
        pre, _, props = preprocess_case(data, None, geometry, self.model.plans, self.model.config, case_id)
        return pre, props

    def probabilities(self, data: np.ndarray, collector: UncertaintyCollector | None = None) -> torch.Tensor:
        """(K, *preprocessed) class probabilities on the CPU."""
        return predict_sliding_window(self.networks, data, self.model.num_classes, self.settings, collector)

    def segment(self, data: np.ndarray, props: CaseProperties) -> np.ndarray:
        """uint8 mask in the input grid (no postprocessing): the cascade's and the two-stage model's first stage."""
        probs = self.probabilities(data)
        with torch.inference_mode():
            return segment(probs, props, self.model.plans, self.model.config)[0]


def _read_previous(folder: Path, case: InputCase, geometry: Geometry) -> np.ndarray:
    for suffix in (case.output_name[len(case.case_id):],) + IMAGE_SUFFIXES:
        p = folder / f"{case.case_id}{suffix}"
        if p.is_file():
            seg, g = read_image(p, dtype=np.uint8)
            if (diff := geometry.matches(g)) is not None:
                raise AutosegError(f"{p}: previous-stage mask does not lie on the input's grid ({diff}); predict it from the same image")
            return seg
    raise AutosegError(f"{folder}: no previous-stage mask for case '{case.case_id}' ({case.case_id}.nii.gz); predict it with 3d_lowres first")


@dataclass
class _Loaded:
    case: InputCase
    data: np.ndarray
    props: CaseProperties
    previous: np.ndarray | None = None  # previous-stage mask (input grid), read from disk
    lowres: tuple[np.ndarray, CaseProperties] | None = None  # lowres-preprocessed input


class CasePipeline:
    """Runs :func:`predict_cases`' stages for one model (and the first stage of a cascade or of the
    two-stage model: for ``3d_roi_fullres``, :meth:`load_roi` crops each case to stage 1's box and
    export pastes the result back into the whole input)."""

    def __init__(self, model: TrainedModel, options: PredictOptions, out_dir: Path, previous: TrainedModel | None):
        self.model, self.options, self.out_dir = model, options, Path(out_dir)
        extra = model.num_input_channels - model.num_image_channels
        if model.config.previous_stage and previous is None and options.prev_stage_dir is None:
            raise AutosegError(f"configuration {model.configuration} needs its previous stage: train "
                               f"{model.config.previous_stage} or pass --prev-stage-predictions DIR")
        if model.config.is_cascade:
            n_onehot = model.plans.label_definition.num_classes - 1
            if extra != n_onehot:
                raise AutosegError(f"{model.folder}: cascade networks take {model.num_input_channels} channels, expected "
                                   f"{model.num_image_channels} image + {n_onehot} one-hot; retrain the cascade")
        elif extra != 0:
            raise AutosegError(f"{model.folds[0].checkpoint.parent / 'training.json'}: network takes {model.num_input_channels} "
                               f"channels but the dataset has {model.num_image_channels}; check training.json")
        self.predictor = Predictor(model, options)
        self.first_stage = None
        if model.config.previous_stage and options.prev_stage_dir is None and previous is not None:
            # the first stage's folds are averaged plainly: --weights are for this configuration's folds
            self.first_stage = Predictor(previous, replace(options, ensemble="mean", weights=None))
        self.rules = model.postprocessing if options.postprocess else None
        self.stage1_regions: dict[str, Stage1Region] = {}  # two-stage: where stage 2's labels may lie, per case

    def load(self, case: InputCase) -> _Loaded:
        data, geometry = read_input_case(case, self.model.num_image_channels)
        if self.model.config.is_roi:
            return self.load_roi(case, data, geometry)
        pre, props = self.predictor.preprocess(data, geometry, case.case_id)
        loaded = _Loaded(case, pre, props)
        if self.model.config.is_cascade:
            if self.first_stage is not None:
                loaded.lowres = self.first_stage.preprocess(data, geometry, case.case_id)
            else:
                assert self.options.prev_stage_dir is not None
                loaded.previous = _read_previous(Path(self.options.prev_stage_dir), case, geometry)
        return loaded

    def load_roi(self, case: InputCase, data: np.ndarray, geometry: Geometry) -> _Loaded:
        """Two-stage: stage 1 (or ``--prev-stage-predictions``) finds the foreground, stage 2 gets its box."""
        if self.first_stage is not None:
            mask = self.first_stage.segment(*self.first_stage.preprocess(data, geometry, case.case_id))
        else:
            assert self.options.prev_stage_dir is not None
            mask = _read_previous(Path(self.options.prev_stage_dir), case, geometry)
        region = stage1_region(mask, geometry.spacing_zyx, float(self.model.config.roi_margin_mm or 0.0))
        if region is not None:
            self.stage1_regions[case.case_id] = region
            box = region.box
        else:
            tqdm.write(f"warning: {case.case_id}: stage 1 ({self.model.config.previous_stage}) found no foreground; "
                       f"stage 2 predicts the whole image", file=sys.stderr)
            box = [[0, int(n)] for n in geometry.shape_zyx]
        crop, _, crop_geometry = crop_case(data, None, geometry, box)
        pre, props = self.predictor.preprocess(crop, crop_geometry, case.case_id)
        props.roi_box_zyx, props.roi_full_geometry = box, geometry
        return _Loaded(case, pre, props)

    def predict(self, item: _Loaded) -> tuple[torch.Tensor, UncertaintyCollector | None]:
        data = item.data
        if self.model.config.is_cascade:
            prev = item.previous
            if prev is None:
                assert self.first_stage is not None and item.lowres is not None
                prev = self.first_stage.segment(*item.lowres)
            data = np.concatenate([data, onehot_previous_stage(prev, item.props, self.model.plans, self.model.config)])
        collector = UncertaintyCollector(self.model.num_classes, self.model.plans.label_definition.has_regions) \
            if self.options.uncertainty else None
        return self.predictor.probabilities(data, collector), collector

    def export(self, case: InputCase, props: CaseProperties, probs: torch.Tensor, collector: UncertaintyCollector | None) -> None:
        """Write the mask (and probabilities / uncertainty maps) of one predicted case."""
        m, cid = self.model, case.case_id
        seg = export_prediction(probs, props, m.plans, m.config, self.out_dir / case.output_name, self.rules,
                                self.options.save_probabilities, stage1=self.stage1_regions.pop(cid, None))
        if collector is None:
            return
        assert collector.variance is not None and collector.valid is not None and collector.pass_volumes_vox is not None
        variance = map_to_original(collector.variance[collector.valid].float().cpu(), props, m.plans, m.config)
        entropy = map_to_original(entropy_map(probs, binary=m.plans.label_definition.has_regions), props, m.plans, m.config)
        udir = self.out_dir / UNCERTAINTY_DIR
        write_image(variance, props.output_geometry, udir / f"{cid}_uncertainty.nii.gz")
        write_image(entropy, props.output_geometry, udir / f"{cid}_entropy.nii.gz")
        voxel_ml = float(np.prod(props.spacing_after_resampling)) / 1000.0
        names = volume_names(m.plans.label_definition)
        summary = summarize(cid, seg, variance, entropy, collector.pass_volumes_vox.numpy(), voxel_ml, names)
        save_json(summary, udir / f"{cid}_uncertainty.json")


def _message(e: BaseException) -> str:
    return str(e) if isinstance(e, AutosegError) else f"{type(e).__name__}: {e}"


def prediction_bytes(props: CaseProperties, channels: int, num_classes: int) -> int:
    """Host memory estimate while the network runs: input + accumulator + :data:`NETWORK_OVERHEAD_BYTES`."""
    return (channels + num_classes) * 4 * int(np.prod(props.shape_after_resampling)) + NETWORK_OVERHEAD_BYTES


def export_bytes(props: CaseProperties, num_classes: int) -> int:
    """Host memory estimate of one export: probabilities + resampling temporaries, running max, labels."""
    n_crop, n_full = int(np.prod(props.shape_after_crop_zyx)), int(np.prod(props.output_geometry.shape_zyx))
    return num_classes * 4 * int(np.prod(props.shape_after_resampling)) + 3 * 4 * n_crop + 2 * n_full


def expected_outputs(case: InputCase, out_dir: Path, options: PredictOptions) -> list[Path]:
    """Every file a finished case has: the mask, and the probabilities / uncertainty files asked for."""
    out = [out_dir / case.output_name]
    if options.save_probabilities:
        out += list(probability_paths(out_dir, case.case_id))
    if options.uncertainty:
        udir = out_dir / UNCERTAINTY_DIR
        out += [udir / f"{case.case_id}_uncertainty.nii.gz", udir / f"{case.case_id}_entropy.nii.gz",
                udir / f"{case.case_id}_uncertainty.json"]
    return out


def cases_to_predict(cases: Sequence[InputCase], out_dir: Path, options: PredictOptions) -> tuple[list[InputCase], PredictSummary]:
    """This part's cases (``--num-parts/--part-id``) without those whose requested outputs all exist
    (unless overwrite), and a summary listing the skipped ones. Creates ``out_dir`` (one line if it
    cannot be written) and removes temp files a killed run left there.

    A case killed after its mask but before its probabilities or uncertainty maps is predicted again."""
    check_writable(out_dir, "pass another -o")
    for folder in (out_dir, out_dir / UNCERTAINTY_DIR):
        remove_stale_temps(folder)
    summary = PredictSummary()
    todo = []
    for c in select_part(cases, options.num_parts, options.part_id):
        if not options.overwrite and all(p.is_file() for p in expected_outputs(c, out_dir, options)):
            summary.skipped.append(c.case_id)
        else:
            todo.append(c)
    return todo, summary


class _ExportQueue:
    """Export jobs in flight (case id, estimated bytes) and the summary they report into."""

    def __init__(self, pool: ThreadPoolExecutor, summary: PredictSummary):
        self.pool, self.summary = pool, summary
        self.jobs: dict[Future, tuple[str, int]] = {}

    def fail(self, case_id: str, e: BaseException) -> None:
        msg = self.summary.failed[case_id] = _message(e)
        tqdm.write(f"error: {msg}" if case_id in msg else f"error: {case_id}: {msg}", file=sys.stderr)  # the case named once
        log.debug("case %s failed", case_id, exc_info=e)

    def collect_one(self) -> None:
        """Wait for at least one export to finish and record its outcome."""
        done, _ = wait(list(self.jobs), return_when=FIRST_COMPLETED)
        for f in done:
            cid, _ = self.jobs.pop(f)
            if f.exception() is not None:
                self.fail(cid, f.exception())  # type: ignore[arg-type]
            else:
                self.summary.predicted.append(cid)

    def bytes_in_flight(self) -> int:
        return sum(b for _, b in self.jobs.values())


def _load_after(pipeline: CasePipeline, case: InputCase, earlier: list[Future]) -> _Loaded:
    wait(earlier)
    return pipeline.load(case)


def predict_cases(model: TrainedModel, cases: Sequence[InputCase], out_dir: Path | str, options: PredictOptions,
                  previous: TrainedModel | None = None) -> PredictSummary:
    """Predict ``cases`` (this part's share) into ``out_dir``; never raises for one bad case.

    Overlap is bounded for memory: the network starts on a case only when its estimated
    memory plus that of the exports still running fits ``options.memory_gb`` (else it waits
    for them), and the next case is read only after all but the newest ``-np - 1`` exports
    have finished. One 512 x 512 x 600 CT thus never overlaps its export with the next
    prediction, while small cases flow through concurrently.
    """
    out_dir = Path(out_dir)
    todo, summary = cases_to_predict(cases, out_dir, options)
    if not todo:
        return summary
    pipeline = CasePipeline(model, options, out_dir, previous)
    workers, budget = max(1, options.num_export_workers), options.memory_gb * 1024**3
    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader, ThreadPoolExecutor(workers, thread_name_prefix="export") as pool:
        exports = _ExportQueue(pool, summary)
        reads: deque[Future] = deque([reader.submit(pipeline.load, todo[0])])
        for i, case in enumerate(tqdm(todo, desc=f"predict {model.configuration}", unit="case")):
            try:
                item = reads.popleft().result()
            except Exception as e:  # one bad case must not stop the others
                item = None
                exports.fail(case.case_id, e)
            if item is not None:
                need = prediction_bytes(item.props, model.num_input_channels, model.num_classes)
                while exports.jobs and need + exports.bytes_in_flight() > budget:
                    exports.collect_one()
            if i + 1 < len(todo):
                in_flight = list(exports.jobs)
                reads.append(reader.submit(_load_after, pipeline, todo[i + 1], in_flight[:max(0, len(in_flight) - (workers - 1))]))
            if item is not None:
                _predict_and_export(pipeline, item, exports, workers)
            del item
        while exports.jobs:
            exports.collect_one()
    summary.predicted.sort()
    return summary


def _predict_and_export(pipeline: CasePipeline, item: _Loaded, exports: _ExportQueue, workers: int) -> None:
    """Run the network on one loaded case and hand its export to the pool (at most ``workers`` in flight)."""
    try:
        probs, collector = pipeline.predict(item)
    except Exception as e:
        exports.fail(item.case.case_id, e)
        return
    while len(exports.jobs) >= workers:
        exports.collect_one()
    job = exports.pool.submit(pipeline.export, item.case, item.props, probs, collector)
    exports.jobs[job] = (item.case.case_id, export_bytes(item.props, pipeline.model.num_classes))
