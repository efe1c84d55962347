"""Command-line glue for ``autoseg predict``, ``autoseg ensemble`` and ``autoseg export_model``."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from autoseg import paths
from autoseg.errors import AutosegError


def _folds(tokens: list[str] | None) -> list[str] | None:
    if not tokens:
        return None
    from autoseg.datasets.splits import parse_folds
    return parse_folds(tokens)


def results_dataset(ref: str | None) -> Path:
    """``<results>/<Dataset>`` for ``-d`` (name, id, DatasetNNN_Name); trained results are searched first."""
    trained = paths.list_datasets(paths.results_root())
    if ref is None and len(trained) == 1:
        return paths.results_dataset_dir(trained[0])
    if ref is not None:
        for d in trained:
            num, _, short = d[len("Dataset"):].partition("_")
            if ref in (d, short) or (ref.isdigit() and int(ref) == int(num)):
                return paths.results_dataset_dir(d)
    return paths.results_dataset_dir(paths.resolve_dataset(ref))


# --- predict ---------------------------------------------------------------------------
def configure_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", required=True, help="image file, folder of images (<case>_0000.nii.gz ...), DICOM series "
                                                         "folder or folder of DICOM series folders")
    p.add_argument("-o", "--output", required=True, help="output folder for the masks (<case> + the input's ending)")
    p.add_argument("-d", "--dataset", default=None, help="dataset (name, id, DatasetNNN_Name); optional when only one is trained")
    p.add_argument("-c", "--configuration", default=None,
                   help="2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres (default: what find_best_configuration chose, "
                        "an ensemble of configurations included; else 3d_fullres)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (default: every fold with a checkpoint)")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final", help="checkpoint file per fold (default final)")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], default=None, help="default: best available")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="mixed precision: auto = on CUDA, and bfloat16 on CPUs with native bf16 (avx512_bf16/amx)")
    p.add_argument("--step", type=float, default=0.5, help="sliding-window step as a fraction of the patch (default 0.5)")
    p.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation (2^d times faster)")
    p.add_argument("--ensemble", choices=["mean", "weighted"], default="mean",
                   help="fold ensemble: mean of logits (default) or weighted mean of probabilities (needs --weights)")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per fold for --ensemble weighted")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>_probabilities.npz (float16, input grid) + .json, for 'autoseg ensemble'")
    p.add_argument("--uncertainty", action="store_true",
                   help="write uncertainty/<case>_uncertainty.nii.gz (variance over passes), _entropy.nii.gz and _uncertainty.json")
    p.add_argument("--no-postprocessing", action="store_true", help="ignore the model's postprocessing.json")
    p.add_argument("--overwrite", action="store_true", help="predict cases whose output already exists")
    p.add_argument("--export-threads", type=int, default=2,
                   help="threads mapping finished predictions back and writing them while the next case runs (default 2)")
    p.add_argument("--memory-gb", type=float, default=8.0,
                   help="host memory to plan for: exports overlap the next prediction only when both fit (default 8)")
    p.add_argument("--num-parts", type=int, default=1, help="split the cases into this many disjoint parts (default 1)")
    p.add_argument("--part-id", type=int, default=0, help="which part this run predicts (0-based)")
    p.add_argument("--model", default=None, help="model zip from 'autoseg export_model' (or its extracted dataset folder)")
    p.add_argument("--prev-stage-predictions", default=None,
                   help="cascade / two-stage: folder of first-stage masks for these inputs (default: run the first stage)")
    p.add_argument("--output-format", nargs="+", default=["nifti"], metavar="{nifti,dicom-seg}",
                   help="nifti (default: the input's ending, .nii.gz for DICOM) and/or dicom-seg (<case>.dcm, a DICOM "
                        "Segmentation of a DICOM series input, needs highdicom: pip install 'autoseg[dicom]')")
    p.add_argument("--segment-codes", default=None,
                   help="JSON of DICOM SEG codes per label name (docs/deploy.md); default: the model's segment_codes.json, "
                        "dataset.json's 'segment_codes', then built-in liver / liver tumour codes")
    p.add_argument("--runtime", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                   help="engine for the network (default auto: on a CPU openvino when installed, the fastest measured "
                        "(0.6x torch's time, docs/deploy.md), else torch; CUDA: torch; an ONNX model: openvino, else onnxruntime)")


def run_predict(a: argparse.Namespace) -> int:
    from autoseg.inference.inputs import discover_cases
    from autoseg.inference.ensemble import predict_ensemble
    from autoseg.model.package import extract_model
    from autoseg.model.selection import default_configurations
    from autoseg.model.trained import TrainedModel
    from autoseg.inference.predictor import PredictOptions, PredictSummary, predict_cases
    from autoseg.networks.device import resolve_device
    from autoseg.inference import seg_output

    if a.weights and a.ensemble != "weighted":
        raise AutosegError("--weights needs --ensemble weighted")
    formats = seg_output.check_formats(a.output_format)
    options = PredictOptions(step=a.step, amp=a.amp, mirror=not a.no_tta, ensemble=a.ensemble, weights=a.weights,
                             device=resolve_device(a.device), save_probabilities=a.save_probabilities, uncertainty=a.uncertainty,
                             postprocess=not a.no_postprocessing, overwrite=a.overwrite, num_export_workers=a.export_threads,
                             num_parts=a.num_parts, part_id=a.part_id, memory_gb=a.memory_gb, runtime=a.runtime,
                             prev_stage_dir=Path(a.prev_stage_predictions).expanduser() if a.prev_stage_predictions else None)
    with contextlib.ExitStack() as stack:
        if a.model:
            mp = Path(a.model).expanduser()
            if not mp.is_dir():
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="autoseg_model_"))
                stack.enter_context(_name_zip_in_errors(tmp, mp))
                mp = extract_model(mp, tmp)
            dataset_dir = mp
        else:
            dataset_dir = results_dataset(a.dataset)
        confs = [a.configuration] if a.configuration else default_configurations(dataset_dir)
        model = TrainedModel(dataset_dir, confs[0], _folds(a.folds), a.checkpoint)
        cases, problems = discover_cases(a.input, model.num_image_channels)
        codes = seg_output.segment_codes_for(dataset_dir, confs[0], a.segment_codes) if "dicom-seg" in formats else {}
        cases, seg_done = seg_output.skip_done(cases, Path(a.output), formats, a.overwrite)
        tta = "mirroring TTA" if options.mirror else "no TTA"
        if len(confs) > 1:
            print(f"{dataset_dir.name}: ensemble of {' + '.join(confs)} (chosen by find_best_configuration; -c picks one), "
                  f"{tta}, {options.device}; {len(cases)} case(s) found")
            summary = predict_ensemble(dataset_dir, confs, cases, a.output, options, _folds(a.folds), a.checkpoint) \
                if cases else PredictSummary()
        else:
            previous = model.previous_stage_model() if options.prev_stage_dir is None else None
            print(f"{dataset_dir.name} {confs[0]}: folds {', '.join(model.fold_names)} ({options.ensemble} ensemble), {tta}, "
                  f"{options.device}; {len(cases)} case(s) found")
            summary = predict_cases(model, cases, a.output, options, previous) if cases else PredictSummary()
        summary.skipped += seg_done
        model_name = f"{dataset_dir.name} {'+'.join(confs)} folds {','.join(model.fold_names)}"
        summary.failed.update(seg_output.write_seg_outputs(cases, summary.predicted, a.output, formats,
                                                           model.plans.label_definition.mask_labels, model_name, codes))
    for line in problems:  # "path: what is wrong; what to do" -- said once, on stderr
        print(f"error: {line}", file=sys.stderr)
        summary.failed[line.split(": ", 1)[0]] = line.split(": ", 1)[-1]
    print(summary.text())
    return summary.exit_code


@contextlib.contextmanager
def _name_zip_in_errors(extracted: str, zip_path: Path):
    """Errors about files of an extracted model zip name the zip, not a temp folder that is gone."""
    try:
        yield
    except AutosegError as e:
        raise AutosegError(str(e).replace(str(Path(extracted).resolve()), f"{zip_path}:").replace(extracted, f"{zip_path}:")) from None


# --- ensemble --------------------------------------------------------------------------
def configure_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inputs", nargs="+", required=True, help="two or more folders written with predict --save-probabilities")
    p.add_argument("-o", "--output", required=True, help="output folder for the ensembled masks")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per input folder (default: equal)")
    p.add_argument("--postprocessing", default=None, help="postprocessing.json to apply to the masks")
    p.add_argument("--save-probabilities", action="store_true", help="also write the ensembled probabilities")


def run_ensemble(a: argparse.Namespace) -> int:
    from autoseg.model.postprocessing import load_rules
    from autoseg.inference.ensemble import ensemble_folders
    rules = load_rules(a.postprocessing) if a.postprocessing else None
    s = ensemble_folders(a.inputs, a.output, a.weights, rules, a.save_probabilities)
    print(f"ensembled {len(s.written)} case(s) into {a.output}, failed {len(s.failed)}"
          + (f" ({', '.join(sorted(s.failed))}; errors above)" if s.failed else ""))
    return 1 if s.failed else 0


# --- export_model ----------------------------------------------------------------------
def configure_export_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", default=None, help="dataset; optional when only one is trained")
    p.add_argument("-o", "--output", required=True, help="zip file to write, e.g. liver_model.zip")
    p.add_argument("-c", "--configurations", nargs="+", default=None,
                   help="configurations to include (default: best_configuration.json's, else 3d_fullres)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to include (default: every fold with a checkpoint)")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final")
    p.add_argument("--format", choices=["torch", "onnx"], default="torch",
                   help="fold networks as checkpoints (default) or as ONNX (network.onnx; predict needs onnxruntime or openvino)")


def run_export_model(a: argparse.Namespace) -> int:
    from autoseg.model.package import export_model
    dataset_dir = results_dataset(a.dataset)
    out = export_model(dataset_dir.name, a.output, a.configurations, _folds(a.folds), a.checkpoint, a.format)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); use it with: autoseg predict --model {out} -i IN -o OUT")
    return 0
