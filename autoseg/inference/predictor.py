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
from autoseg.inference.export import export_prediction, map_to_original, segment
from autoseg.inference.inputs import InputCase, read_input_case
from autoseg.inference.model import TrainedModel
from autoseg.inference.runtimes import load_networks
from autoseg.inference.sliding_window import SlidingWindowSettings, predict_sliding_window
from autoseg.inference.uncertainty import UncertaintyCollector, entropy_map, summarize
from autoseg.io.images import IMAGE_SUFFIXES, Geometry, read_image, write_image
from autoseg.io.json_io import save_json
from autoseg.preprocessing.case_store import CaseProperties
from autoseg.preprocessing.preprocessor import preprocess_case
from autoseg.preprocessing.resampling import resample_segmentation

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
        out = f"predicted {len(self.predicted)}, skipped {len(self.skipped)} (output exists; --overwrite redoes them), failed {len(self.failed)}"
        return out + "".join(f"\n  failed {c}: {m}" for c, m in sorted(self.failed.items()))


def resolve_device(name: str | None) -> str:
    """``None`` -> the best available (cuda, mps, cpu); an unavailable choice is an error."""
    cuda, mps = torch.cuda.is_available(), bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name is None:
        return "cuda" if cuda else ("mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise AutosegError(f"--device {name}: not available on this machine; use --device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise AutosegError(f"--device {name}: choose cpu, cuda or mps")
    return name


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
            patch_size=model.patch_size, step=options.step, mirror=options.mirror, ensemble=options.ensemble,
            weights=options.weights, device=options.device, amp=options.amp,
            batch_size=1 if dim == 3 else max(1, min(model.config.batch_size, 16)))

    def preprocess(self, data: np.ndarray, geometry: Geometry, case_id: str) -> tuple[np.ndarray, CaseProperties]:
        pre, _, props = preprocess_case(data, None, geometry, self.model.plans, self.model.config, case_id)
        return pre, props

    def probabilities(self, data: np.ndarray, collector: UncertaintyCollector | None = None) -> torch.Tensor:
        """(K, *preprocessed) class probabilities on the CPU."""
        return predict_sliding_window(self.networks, data, self.model.num_classes, self.settings, collector)

    def segment(self, data: np.ndarray, props: CaseProperties) -> np.ndarray:
        """uint8 mask in the input grid (no postprocessing): the cascade's first stage."""
        probs = self.probabilities(data)
        with torch.inference_mode():
            return segment(probs, props, self.model.plans, self.model.config)[0]


def onehot_previous_stage(seg: np.ndarray, props: CaseProperties, model: TrainedModel) -> np.ndarray:
    """A (Z, Y, X) mask in the input grid -> float32 (K - 1, *preprocessed) one-hot of the foreground labels."""
    plans, r = model.plans, model.config.resampling
    tf = plans.transpose_forward
    box = tuple(slice(a, b) for a, b in props.bbox_zyx)
    seg_t = np.transpose(seg[box], tf)[None]
    spacing_t = [props.original_geometry.spacing_zyx[i] for i in tf]
    seg_pre = resample_segmentation(seg_t, props.shape_after_resampling, spacing_t, props.spacing_after_resampling,
                                    r.order_seg, r.order_seg_z, r.anisotropy_threshold)[0]
    fg = sorted(int(v) for v in plans.labels.values())[1:]
    return np.stack([(seg_pre == v) for v in fg]).astype(np.float32)


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
    """Runs :func:`predict_cases`' stages for one model (and the cascade's first stage)."""

    def __init__(self, model: TrainedModel, options: PredictOptions, out_dir: Path, previous: TrainedModel | None):
        self.model, self.options, self.out_dir = model, options, Path(out_dir)
        extra = model.num_input_channels - model.num_image_channels
        if model.config.previous_stage:
            if extra != model.num_classes - 1:
                raise AutosegError(f"{model.folder}: cascade networks take {model.num_input_channels} channels, expected "
                                   f"{model.num_image_channels} image + {model.num_classes - 1} one-hot; retrain the cascade")
            if previous is None and options.prev_stage_dir is None:
                raise AutosegError(f"configuration {model.configuration} needs its previous stage: train "
                                   f"{model.config.previous_stage} or pass --prev-stage-predictions DIR")
        elif extra != 0:
            raise AutosegError(f"{model.folds[0].checkpoint.parent / 'training.json'}: network takes {model.num_input_channels} "
                               f"channels but the dataset has {model.num_image_channels}; check training.json")
        self.predictor = Predictor(model, options)
        self.first_stage = None
        if model.config.previous_stage and options.prev_stage_dir is None and previous is not None:
            # the first stage's folds are averaged plainly: --weights are for this configuration's folds
            self.first_stage = Predictor(previous, replace(options, ensemble="mean", weights=None))
        self.rules = model.postprocessing if options.postprocess else None

    def load(self, case: InputCase) -> _Loaded:
        data, geometry = read_input_case(case, self.model.num_image_channels)
        pre, props = self.predictor.preprocess(data, geometry, case.case_id)
        loaded = _Loaded(case, pre, props)
        if self.model.config.previous_stage:
            if self.first_stage is not None:
                loaded.lowres = self.first_stage.preprocess(data, geometry, case.case_id)
            else:
                assert self.options.prev_stage_dir is not None
                loaded.previous = _read_previous(Path(self.options.prev_stage_dir), case, geometry)
        return loaded

    def predict(self, item: _Loaded) -> tuple[torch.Tensor, UncertaintyCollector | None]:
        data = item.data
        if self.model.config.previous_stage:
            prev = item.previous
            if prev is None:
                assert self.first_stage is not None and item.lowres is not None
                prev = self.first_stage.segment(*item.lowres)
            data = np.concatenate([data, onehot_previous_stage(prev, item.props, self.model)])
        collector = UncertaintyCollector(self.model.num_classes) if self.options.uncertainty else None
        return self.predictor.probabilities(data, collector), collector

    def export(self, case: InputCase, props: CaseProperties, probs: torch.Tensor, collector: UncertaintyCollector | None) -> None:
        """Write the mask (and probabilities / uncertainty maps) of one predicted case."""
        m, cid = self.model, case.case_id
        seg = export_prediction(probs, props, m.plans, m.config, self.out_dir / case.output_name, self.rules,
                                self.options.save_probabilities)
        if collector is None:
            return
        assert collector.variance is not None and collector.valid is not None and collector.pass_volumes_vox is not None
        variance = map_to_original(collector.variance[collector.valid].float().cpu(), props, m.plans, m.config)
        entropy = map_to_original(entropy_map(probs), props, m.plans, m.config)
        udir = self.out_dir / UNCERTAINTY_DIR
        write_image(variance, props.original_geometry, udir / f"{cid}_uncertainty.nii.gz")
        write_image(entropy, props.original_geometry, udir / f"{cid}_entropy.nii.gz")
        voxel_ml = float(np.prod(props.spacing_after_resampling)) / 1000.0
        names = {int(v): k for k, v in m.plans.labels.items() if int(v) != 0}
        summary = summarize(cid, seg, variance, entropy, collector.pass_volumes_vox.numpy(), voxel_ml, names)
        save_json(summary, udir / f"{cid}_uncertainty.json")


def _message(e: BaseException) -> str:
    return str(e) if isinstance(e, AutosegError) else f"{type(e).__name__}: {e}"


def prediction_bytes(props: CaseProperties, channels: int, num_classes: int) -> int:
    """Host memory estimate while the network runs: input + accumulator + :data:`NETWORK_OVERHEAD_BYTES`."""
    return (channels + num_classes) * 4 * int(np.prod(props.shape_after_resampling)) + NETWORK_OVERHEAD_BYTES


def export_bytes(props: CaseProperties, num_classes: int) -> int:
    """Host memory estimate of one export: probabilities + resampling temporaries, running max, labels."""
    n_crop, n_full = int(np.prod(props.shape_after_crop_zyx)), int(np.prod(props.original_geometry.shape_zyx))
    return num_classes * 4 * int(np.prod(props.shape_after_resampling)) + 3 * 4 * n_crop + 2 * n_full


def cases_to_predict(cases: Sequence[InputCase], out_dir: Path, options: PredictOptions) -> tuple[list[InputCase], PredictSummary]:
    """This part's cases (``--num-parts/--part-id``) without those whose output exists (unless
    overwrite), and a summary listing the skipped ones. Creates ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    todo = []
    for c in select_part(cases, options.num_parts, options.part_id):
        if (out_dir / c.output_name).is_file() and not options.overwrite:
            summary.skipped.append(c.case_id)
        else:
            todo.append(c)
    return todo, summary


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
    workers = max(1, options.num_export_workers)
    budget = options.memory_gb * 1024**3
    exports: dict[Future, tuple[str, int]] = {}

    def fail(case_id: str, e: BaseException) -> None:
        summary.failed[case_id] = _message(e)
        tqdm.write(f"error: {case_id}: {_message(e)}", file=sys.stderr)
        log.debug("case %s failed", case_id, exc_info=e)

    def collect_one() -> None:
        done, _ = wait(list(exports), return_when=FIRST_COMPLETED)
        for f in done:
            cid, _ = exports.pop(f)
            if f.exception() is not None:
                fail(cid, f.exception())  # type: ignore[arg-type]
            else:
                summary.predicted.append(cid)

    def load_after(case: InputCase, earlier: list[Future]) -> _Loaded:
        wait(earlier)
        return pipeline.load(case)

    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader, ThreadPoolExecutor(workers, thread_name_prefix="export") as pool:
        reads: deque[Future] = deque([reader.submit(pipeline.load, todo[0])])
        for i, case in enumerate(tqdm(todo, desc=f"predict {model.configuration}", unit="case")):
            try:
                item = reads.popleft().result()
            except Exception as e:  # one bad case must not stop the others
                item = None
                fail(case.case_id, e)
            if item is not None:
                need = prediction_bytes(item.props, model.num_input_channels, model.num_classes)
                while exports and need + sum(b for _, b in exports.values()) > budget:
                    collect_one()
            if i + 1 < len(todo):
                in_flight = list(exports)
                reads.append(reader.submit(load_after, todo[i + 1], in_flight[:max(0, len(in_flight) - (workers - 1))]))
            if item is None:
                continue
            try:
                probs, collector = pipeline.predict(item)
            except Exception as e:
                fail(case.case_id, e)
                continue
            while len(exports) >= workers:
                collect_one()
            job = pool.submit(pipeline.export, item.case, item.props, probs, collector)
            exports[job] = (case.case_id, export_bytes(item.props, model.num_classes))
            del item, probs, collector
        while exports:
            collect_one()
    summary.predicted.sort()
    return summary
