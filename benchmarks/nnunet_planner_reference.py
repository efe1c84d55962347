"""Reference plans from nnU-Net v2's default ``ExperimentPlanner`` for hand-made fingerprints.

nnU-Net v2 is a *reference only*: it lives in a throwaway venv (see benchmarks/nnunet_venv.md),
never in autoseg's dependencies. Usage, from the repo root::

    python benchmarks/nnunet_planner_reference.py /work/nnunet_venv/bin/python \
        [--out tests/data/nnunet_planner_reference.json]

If the running interpreter cannot import ``nnunetv2`` the script re-runs itself under the given
venv python. For each fingerprint it writes a fake raw + preprocessed dataset (``dataset.json``
and ``dataset_fingerprint.json`` only, no images), runs ``ExperimentPlanner(..., 8).plan_experiment()``
and records, per configuration, spacing / patch size / median shape / batch size / topology /
batch_dice and the network's ``compute_conv_feature_map_size(patch_size)`` (nnU-Net's VRAM proxy).

Axis order: fingerprints are given in nnU-Net order (Z, Y, X) as numpy sees SimpleITK arrays; every
per-axis list in a configuration is in the *transposed* order (``transpose_forward`` applied).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "nnunet_planner_reference.json"

# Hand-made fingerprints: spacings (mm) and shapes_after_crop (voxels), both (Z, Y, X) per case.
_MIXED_SPACINGS = [[2.5, 0.7, 0.7], [5, 0.8, 0.8], [1, 0.6, 0.6], [3, 0.9, 0.9], [5, 0.75, 0.75],
                   [1.5, 0.7, 0.7], [4, 0.65, 0.65], [2, 0.8, 0.8], [5, 0.7, 0.7], [3, 0.78, 0.78]]
_MIXED_SHAPES = [[120, 512, 512], [60, 512, 512], [300, 512, 512], [100, 512, 512], [64, 512, 512],
                 [200, 512, 512], [80, 512, 512], [150, 512, 512], [70, 512, 512], [110, 512, 512]]
FINGERPRINTS: dict[str, dict] = {
    "a_isotropic": {"spacings": [[1.0, 1.0, 1.0]] * 20, "shapes": [[160, 160, 160]] * 20},
    "b_anisotropic_5mm": {"spacings": [[5.0, 0.8, 0.8]] * 20, "shapes": [[60, 400, 400]] * 20},
    "c_lits_like": {"spacings": [[1.0, 0.768, 0.768]] * 131, "shapes": [[482, 512, 512]] * 131},
    "d_mixed": {"spacings": _MIXED_SPACINGS, "shapes": _MIXED_SHAPES},
}
# Made-up CT foreground statistics (HU); the planner only copies them into the plans.
_CT_INTENSITY = {"mean": 100.0, "median": 105.0, "std": 40.0, "min": -100.0, "max": 300.0,
                 "percentile_99_5": 200.0, "percentile_00_5": -20.0}
LABELS = {"background": 0, "liver": 1, "tumor": 2}


def _write_fake_dataset(raw: Path, pre: Path, name: str, fp: dict) -> None:
    """dataset.json (raw + preprocessed) and dataset_fingerprint.json; no image files needed.

    The planner lists the dataset to find an example image for the reader; an explicit ``dataset``
    entry plus ``overwrite_image_reader_writer`` means it never opens a file.
    """
    n = len(fp["spacings"])
    cases = {f"case_{i:03d}": {"images": [f"imagesTr/case_{i:03d}_0000.nii.gz"],
                               "label": f"labelsTr/case_{i:03d}.nii.gz"} for i in range(n)}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": n,
                    "file_ending": ".nii.gz", "overwrite_image_reader_writer": "SimpleITKIO",
                    "dataset": cases}
    fingerprint = {"spacings": fp["spacings"], "shapes_after_crop": fp["shapes"],
                   "foreground_intensity_properties_per_channel": {"0": _CT_INTENSITY},
                   "median_relative_size_after_cropping": 1.0}
    for folder in (raw / name, pre / name):
        folder.mkdir(parents=True, exist_ok=True)
    (raw / name / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    (pre / name / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    (pre / name / "dataset_fingerprint.json").write_text(json.dumps(fingerprint, indent=1))


def _planner_constants(planner) -> dict:
    from nnunetv2.configuration import ANISO_THRESHOLD

    return {
        "gpu_memory_target_gb": planner.UNet_vram_target_GB,
        "UNet_reference_val_3d": planner.UNet_reference_val_3d,
        "UNet_reference_val_2d": planner.UNet_reference_val_2d,
        "UNet_reference_val_corresp_GB": planner.UNet_reference_val_corresp_GB,
        "UNet_reference_val_corresp_bs_3d": planner.UNet_reference_val_corresp_bs_3d,
        "UNet_reference_val_corresp_bs_2d": planner.UNet_reference_val_corresp_bs_2d,
        "UNet_reference_com_nfeatures": planner.UNet_reference_com_nfeatures,
        "UNet_base_num_features": planner.UNet_base_num_features,
        "UNet_max_features_3d": planner.UNet_max_features_3d,
        "UNet_max_features_2d": planner.UNet_max_features_2d,
        "UNet_min_batch_size": planner.UNet_min_batch_size,
        "UNet_featuremap_min_edge_length": planner.UNet_featuremap_min_edge_length,
        "max_dataset_covered": planner.max_dataset_covered,
        "anisotropy_threshold": planner.anisotropy_threshold,
        "ANISO_THRESHOLD_nnunetv2_configuration": ANISO_THRESHOLD,
        "lowres_creation_threshold": planner.lowres_creation_threshold,
        # a local variable inside ExperimentPlanner.plan_experiment (not an attribute)
        "lowres_spacing_increase_factor": 1.03,
        "initial_patch_volume_3d": "256**3 voxels, aspect 1/spacing, clipped to median shape",
        "initial_patch_area_2d": "2048**2 pixels, aspect 1/spacing, clipped to median shape",
        "batch_size_rule": "round(reference/estimate*ref_bs), capped so batch*prod(patch) <= "
                           "max_dataset_covered*prod(median_shape)*numTraining, floored at min batch size",
        "vram_fits_rule": "estimate / ref_bs * 2 <= reference * (gpu_memory_target_gb / corresp_GB)",
    }


def _summarise_configuration(planner, cfg: dict) -> dict:
    arch = cfg["architecture"]
    kw = arch["arch_kwargs"]
    feature_map_size = planner.static_estimate_VRAM_usage(
        tuple(cfg["patch_size"]), 1, len(LABELS), arch["network_class_name"], kw,
        arch["_kw_requires_import"])
    return {
        "spacing": [float(s) for s in cfg["spacing"]],
        "patch_size": [int(p) for p in cfg["patch_size"]],
        "median_image_size_in_voxels": [int(round(float(m))) for m in cfg["median_image_size_in_voxels"]],
        "batch_size": int(cfg["batch_size"]),
        "batch_dice": bool(cfg["batch_dice"]),
        "n_stages": int(kw["n_stages"]),
        "features_per_stage": [int(f) for f in kw["features_per_stage"]],
        "kernel_sizes": [[int(k) for k in ks] for ks in kw["kernel_sizes"]],
        "strides": [[int(s) for s in st] for st in kw["strides"]],
        "n_conv_per_stage": [int(n) for n in kw["n_conv_per_stage"]],
        "n_conv_per_stage_decoder": [int(n) for n in kw["n_conv_per_stage_decoder"]],
        "normalization_schemes": list(cfg["normalization_schemes"]),
        "use_mask_for_norm": [bool(u) for u in cfg["use_mask_for_norm"]],
        "compute_conv_feature_map_size": int(feature_map_size),
    }


def _plan_all(work: Path) -> dict:
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    for folder in (raw, pre, res):
        folder.mkdir(parents=True, exist_ok=True)
    # nnunetv2.paths reads these at import time: set them before the first nnunetv2 import.
    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res))
    datasets = {}
    for i, (key, fp) in enumerate(FINGERPRINTS.items(), start=1):
        name = f"Dataset{900 + i:03d}_{key}"
        _write_fake_dataset(raw, pre, name, fp)
        datasets[key] = name

    import nnunetv2
    import torch
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    out: dict = {"nnunetv2_version": nnunetv2.__version__ if hasattr(nnunetv2, "__version__") else
                 _dist_version("nnunetv2"),
                 "torch_version": torch.__version__,
                 "planner": "nnunetv2.experiment_planning.experiment_planners.default_experiment_planner."
                            "ExperimentPlanner(dataset, gpu_memory_target_in_gb=8)",
                 "labels": LABELS, "fingerprints": {}, "plans": {}}
    for key, name in datasets.items():
        planner = ExperimentPlanner(name, 8)
        with contextlib.redirect_stdout(io.StringIO()):
            plans = planner.plan_experiment()
        if "constants" not in out:
            out["constants"] = _planner_constants(planner)
        fp = FINGERPRINTS[key]
        out["fingerprints"][key] = {"n_cases": len(fp["spacings"]), "spacings_zyx": fp["spacings"],
                                    "shapes_after_crop_zyx": fp["shapes"]}
        configs = {c: _summarise_configuration(planner, cfg)
                   for c, cfg in plans["configurations"].items() if "architecture" in cfg}
        if "3d_lowres" in plans["configurations"]:
            configs["3d_lowres"]["next_stage"] = plans["configurations"]["3d_lowres"].get("next_stage")
        out["plans"][key] = {
            "configurations_present": sorted(plans["configurations"].keys()),
            "transpose_forward": plans["transpose_forward"],
            "transpose_backward": plans["transpose_backward"],
            "fullres_target_spacing_zyx": [float(s) for s in planner.determine_fullres_target_spacing()],
            "original_median_spacing_after_transp": plans["original_median_spacing_after_transp"],
            "original_median_shape_after_transp": plans["original_median_shape_after_transp"],
            "configurations": configs,
        }
    return out


def _dist_version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nnunet_python", help="python of the nnU-Net venv, e.g. /work/nnunet_venv/bin/python")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the reference JSON")
    args = parser.parse_args()
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        # Re-run this very script under the venv python (nnunetv2 is not an autoseg dependency).
        sys.exit(subprocess.call([args.nnunet_python, str(Path(__file__).resolve()),
                                  args.nnunet_python, "--out", args.out]))
    with tempfile.TemporaryDirectory() as tmp:
        result = _plan_all(Path(tmp))
    result["how_made"] = (f"python benchmarks/nnunet_planner_reference.py {args.nnunet_python} "
                          f"--out tests/data/nnunet_planner_reference.json  "
                          f"(venv setup: benchmarks/nnunet_venv.md)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
