"""A trained model as one zip file: ``autoseg export_model`` packs it, ``predict --model`` unpacks it.

The zip holds ``<Dataset>/`` with the results-folder tree of the chosen configurations (see
:mod:`autoseg.model.trained`), ``best_configuration.json`` and an ensemble's rules. Extraction
refuses entries that would land outside the target folder.
"""

from __future__ import annotations

import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

from autoseg import paths
from autoseg.errors import AutosegError
from autoseg.io.json_io import atomic_path
from autoseg.model.onnx_export import ONNX_FILE, ONNX_INFO_FILE, write_onnx
from autoseg.model.selection import default_configurations, ensemble_rules_file
from autoseg.model.trained import TrainedModel


def _add(zf: zipfile.ZipFile, path: Path, arcname: str) -> None:
    if path.is_file():
        zf.write(path, arcname)


def _add_onnx(zf: zipfile.ZipFile, net, model: TrainedModel, fold, arc_dir: str) -> None:
    with tempfile.TemporaryDirectory(prefix="autoseg_onnx_") as d:
        write_onnx(net, fold.training.num_input_channels, fold.training.num_classes, model.patch_size, Path(d), fold.checkpoint.name)
        for name in (ONNX_FILE, ONNX_INFO_FILE):
            zf.write(Path(d) / name, f"{arc_dir}/{name}")


def export_model(dataset: str, out_zip: Path | str, configurations: Sequence[str] | None = None,
                 folds: Sequence[str] | None = None, checkpoint: str = "final", fmt: str = "torch") -> Path:
    """Zip the chosen configurations' folds (checkpoint + training.json) with plans, dataset.json,
    fingerprint, postprocessing.json and best_configuration.json; returns the zip's path.

    ``fmt="onnx"``: each fold's network as ``network.onnx`` (+ ``network_onnx.json``) instead of
    its checkpoint (see :mod:`autoseg.model.onnx_export`). A cascade or two-stage configuration
    brings its first stage along.

    ``configurations=None``: what ``predict`` would use (:func:`default_configurations`: the
    chosen ensemble's members with its postprocessing rules, or one configuration).
    """
    ddir = paths.results_dataset_dir(dataset)
    confs = list(configurations) if configurations else default_configurations(ddir)
    members = list(confs)
    for conf in list(confs):  # a cascade needs its first stage
        prev = TrainedModel(ddir, conf, folds, checkpoint).config.previous_stage
        if prev and prev not in confs:
            confs.append(prev)
    out_zip = Path(out_zip).expanduser()
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_zip, ".zip") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        _add(zf, ddir / paths.BEST_CONFIGURATION_FILE, f"{dataset}/{paths.BEST_CONFIGURATION_FILE}")
        _add(zf, ddir / "segment_codes.json", f"{dataset}/segment_codes.json")  # DICOM SEG codes (inference/seg_output.py)
        if len(members) > 1:
            rules = ensemble_rules_file(ddir, members)
            _add(zf, rules, rules.relative_to(ddir.parent).as_posix())
        for conf in confs:
            model = TrainedModel(ddir, conf, folds, checkpoint)
            for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
                for src in (model.folder / name, paths.preprocessed_dataset_dir(dataset) / name):
                    if src.is_file():
                        zf.write(src, f"{dataset}/{conf}/{name}")
                        break
            _add(zf, model.folder / paths.POSTPROCESSING_FILE, f"{dataset}/{conf}/{paths.POSTPROCESSING_FILE}")
            nets = model.load_networks("cpu") if fmt == "onnx" else [None] * len(model.folds)
            for f, net in zip(model.folds, nets):
                if net is not None:
                    _add_onnx(zf, net, model, f, f"{dataset}/{conf}/fold_{f.fold}")
                else:
                    _add(zf, f.checkpoint, f"{dataset}/{conf}/fold_{f.fold}/{f.checkpoint.name}")
                _add(zf, f.checkpoint.parent / "training.json", f"{dataset}/{conf}/fold_{f.fold}/training.json")
    return out_zip


def extract_model(zip_path: Path | str, target: Path | str) -> Path:
    """Extract a model zip into ``target``; returns the dataset folder (the zip's single top folder).

    Entries with absolute paths or ``..`` that would land outside ``target`` are refused.
    """
    zip_path, target = Path(zip_path).expanduser(), Path(target).resolve()
    if not zip_path.is_file():
        raise AutosegError(f"{zip_path}: model zip not found")
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise AutosegError(f"{zip_path}: not a zip file; pass a file made by 'autoseg export_model'") from None
    with zf:
        names = zf.namelist()
        for n in names:
            dest = (target / n).resolve()
            if n.startswith(("/", "\\")) or (dest != target and target not in dest.parents):
                raise AutosegError(f"{zip_path}: entry '{n}' would be written outside the extraction folder; refusing this zip")
        tops = {n.split("/", 1)[0] for n in names if n.strip("/")}
        if len(tops) != 1:
            raise AutosegError(f"{zip_path}: expected one dataset folder at the top, found {sorted(tops) or 'none'}; "
                               f"pass a file made by 'autoseg export_model'")
        try:
            zf.extractall(target)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise AutosegError(f"{zip_path}: damaged model zip ({type(e).__name__}: {e}); export it again "
                               f"(autoseg export_model) or copy it again") from None
    return target / tops.pop()
