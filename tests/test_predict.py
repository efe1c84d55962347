"""``autoseg predict`` end to end on tiny hand-made models: exact geometry, overlay, pipeline behaviour, zips, cascade."""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from autoseg.cli import main
from autoseg.datasets.layout import DatasetInfo, save_dataset_info
from autoseg.errors import AutosegError
from autoseg.inference.inputs import InputCase
from autoseg.model.package import export_model, extract_model
from autoseg.model.trained import TrainedModel
from autoseg.inference.predictor import select_part
from autoseg.io.images import Geometry, read_image, write_image
from autoseg.io.json_io import save_json
from autoseg.networks.builder import build_network
from autoseg.planners.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans
from autoseg.model.checkpoint import save_checkpoint
from autoseg.model.training_config import TrainingConfig

from conftest import SHARED

DATASET = "Dataset003_Liver"
LABELS = {"background": 0, "liver": 1, "tumor": 2}
FLIPPED = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]


def tiny_config(name: str, spacing, patch, previous: str | None = None) -> ConfigurationPlan:
    dim = len(patch)
    topo = NetworkTopology(n_stages=2, features_per_stage=[4, 8], kernel_sizes=[[3] * dim] * 2,
                           strides=[[1] * dim, [2] * dim], n_conv_per_stage_encoder=[1, 1], n_conv_per_stage_decoder=[1])
    norm = [ChannelNormalization("ct", mean=0.0, std=100.0, lower=-1000.0, upper=1000.0)]
    return ConfigurationPlan(name=name, data_identifier=f"tiny_{name}", spacing_mm=list(spacing), patch_size=list(patch),
                             median_shape_vox=[16, 16, 16][:dim], batch_size=2, batch_dice=True, topology=topo,
                             normalization=norm, previous_stage=previous)


def make_model(results: Path, configs: dict[str, ConfigurationPlan], folds=("0",), transpose=(0, 1, 2),
               channels: int = 1, seed: int = 0, pre: Path | None = None) -> Path:
    """A fake ``<results>/<D>`` with untrained tiny U-Nets saved as checkpoint_final.pth per fold."""
    tf = list(transpose)
    plans = Plans(dataset_name=DATASET, plans_name="tiny", gpu_memory_gb=8, transpose_forward=tf,
                  transpose_backward=[tf.index(i) for i in range(3)], original_median_spacing_mm=[2.0, 1.0, 1.0],
                  original_median_shape_vox=[16, 16, 16], num_input_channels=channels, labels=dict(LABELS), configurations=configs)
    info = DatasetInfo(name="Liver", channel_names={str(c): "CT" for c in range(channels)}, labels=dict(LABELS), numTraining=4)
    torch.manual_seed(seed)
    for name, cfg in configs.items():
        cdir = results / DATASET / name
        cdir.mkdir(parents=True, exist_ok=True)
        plans.save(cdir / "plans.json")
        save_dataset_info(info, cdir)
        in_ch = channels + (len(LABELS) - 1 if cfg.is_cascade else 0)
        for f in folds:
            tc = TrainingConfig(dataset=DATASET, configuration=name, fold=str(f), num_input_channels=in_ch, num_classes=3,
                                previous_stage=cfg.previous_stage)
            net = build_network("unet", cfg.topology, in_ch, 3)
            fd = cdir / f"fold_{f}"
            save_checkpoint(fd / "checkpoint_final.pth", net.state_dict(), {"epoch": 1, "fold": str(f), "network": "unet"})
            save_json(asdict(tc), fd / "training.json")
    return results / DATASET


def ct_like(shape_zyx, seed: int) -> np.ndarray:
    """int16 image: a zero border (cropped away), a body at -100 HU, a sphere at 100 and a core at 200."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    img = np.zeros(shape_zyx, np.float32)
    img[1:-1, 2:-1, 1:-2] = -100
    r = (z - 0.1) ** 2 + (y + 0.1) ** 2 / 0.6 + (x - 0.15) ** 2
    img[r < 0.45] = 100
    img[r < 0.12] = 200
    img[img != 0] += rng.normal(0, 5, int((img != 0).sum()))
    return img.astype(np.int16)


def write_case(path: Path, shape=(10, 20, 18), spacing=(2.5, 0.8, 1.1), origin=(-12.5, 40.0, 7.25), direction=FLIPPED, seed=0):
    geom = Geometry(list(shape), list(spacing), list(origin), list(direction))
    write_image(ct_like(shape, seed), geom, path)
    return geom


def header(path: Path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


@pytest.fixture
def results(autoseg_env):
    return autoseg_env["res"]


def test_geometry_round_trip_with_untrained_unet(results, tmp_path):
    make_model(results, {"3d_fullres": tiny_config("3d_fullres", [2.0, 1.0, 1.0], [8, 16, 16])}, transpose=(0, 2, 1))
    src = tmp_path / "in" / "liver_7_0000.nii.gz"
    write_case(src)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(src.parent), "-o", str(out), "--device", "cpu", "--save-probabilities", "--uncertainty"]) == 0
    mask = out / "liver_7.nii.gz"
    assert header(mask) == header(src)  # size, spacing, origin, direction exactly
    seg, _ = read_image(mask, np.uint8)
    assert set(np.unique(seg)) <= {0, 1, 2}
    probs = np.load(out / "liver_7_probabilities.npz")["probabilities"]
    assert probs.dtype == np.float16 and probs.shape == (3, 10, 20, 18)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    info = json.loads((out / "liver_7_probabilities.json").read_text())
    assert info["segmentation_file"] == "liver_7.nii.gz" and info["geometry"]["direction"] == FLIPPED
    assert header(out / "uncertainty" / "liver_7_uncertainty.nii.gz") == header(src)
    var, _ = read_image(out / "uncertainty" / "liver_7_uncertainty.nii.gz")
    ent, _ = read_image(out / "uncertainty" / "liver_7_entropy.nii.gz")
    assert 0 <= var.min() and var.max() <= 0.25 + 1e-6 and 0 <= ent.min() and ent.max() <= math.log(3) + 1e-4
    summary = json.loads((out / "uncertainty" / "liver_7_uncertainty.json").read_text())
    assert summary["n_passes"] == 8 and set(summary["volume_variation"]) == {"foreground", "liver", "tumor"}


def test_2d_configuration_keeps_geometry(results, tmp_path):
    make_model(results, {"2d": tiny_config("2d", [1.0, 1.0], [16, 16])}, transpose=(0, 1, 2))
    src = tmp_path / "in" / "ct.mha"
    write_case(src, shape=(5, 20, 18))
    out = tmp_path / "out"
    assert main(["predict", "-i", str(src), "-o", str(out), "-c", "2d", "--device", "cpu", "--uncertainty"]) == 0
    assert header(out / "ct.mha") == header(src)
    assert json.loads((out / "uncertainty" / "ct_uncertainty.json").read_text())["n_passes"] == 4  # 2^2 flips


class NearestCentre(nn.Module):
    """Pointwise classifier on normalised HU (x100): the class whose centre (0, 100, 200 HU) is nearest."""

    def forward(self, x):
        hu = x[:, :1] * 100.0
        return torch.cat([-(hu - c) ** 2 / 100.0 for c in (0.0, 100.0, 200.0)], 1)


def test_mask_overlays_input_after_crop_transpose_resample(results, tmp_path, monkeypatch):
    make_model(results, {"3d_fullres": tiny_config("3d_fullres", [1.2, 1.5, 0.7], [8, 8, 8])}, transpose=(2, 0, 1))
    monkeypatch.setattr(TrainedModel, "load_networks", lambda self, device="cpu": [NearestCentre()])
    src = tmp_path / "in" / "c.nrrd"
    write_case(src, shape=(14, 22, 20))
    out = tmp_path / "out"
    assert main(["predict", "-i", str(src), "-o", str(out), "--device", "cpu", "--no-tta"]) == 0
    seg, geom = read_image(out / "c.nrrd", np.uint8)  # same format as the input
    img, _ = read_image(src)
    expected = np.argmin(np.abs(img[None] - np.array([0, 100, 200])[:, None, None, None]), 0)
    expected[img == 0] = 0  # outside the crop box
    assert (seg == expected).mean() > 0.97
    for label in (1, 2):
        a, b = seg == label, expected == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


@pytest.mark.skipif(not (SHARED / "data" / "totalseg_example_ct").is_dir(), reason="../shared data not present")
def test_real_ct_keeps_its_geometry(results, tmp_path):
    make_model(results, {"3d_fullres": tiny_config("3d_fullres", [6.0, 6.0, 6.0], [32, 32, 32])})
    src = SHARED / "data" / "totalseg_example_ct" / "example_ct.nii.gz"
    out = tmp_path / "out"
    assert main(["predict", "-i", str(src), "-o", str(out), "--device", "cpu", "--no-tta"]) == 0
    assert header(out / "example_ct.nii.gz") == header(src)


@pytest.mark.skipif(not (SHARED / "data" / "dcmqi_ct3slice").is_dir(), reason="../shared data not present")
def test_dicom_series_folders(results, tmp_path):
    make_model(results, {"3d_fullres": tiny_config("3d_fullres", [2.0, 4.0, 4.0], [4, 16, 16])})
    series = tmp_path / "series"
    for name in ("ct_a", "ct_b"):
        (series / name).mkdir(parents=True)
        for f in (SHARED / "data" / "dcmqi_ct3slice").glob("*.dcm"):
            shutil.copy(f, series / name / f.name)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(series), "-o", str(out), "--device", "cpu", "--no-tta", "--export-threads", "1"]) == 0
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series / "ct_a")))
    ref = reader.Execute()
    for name in ("ct_a", "ct_b"):
        img = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        assert img.GetSize() == ref.GetSize() == (512, 512, 3)
        np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), rtol=1e-6)
        assert img.GetDirection() == ref.GetDirection()


def _three_cases(folder: Path) -> None:
    for i in range(3):
        write_case(folder / f"case_{i}_0000.nii.gz", shape=(8, 12, 12), seed=i)


def test_skip_existing_overwrite_and_one_corrupt_case(results, tmp_path, capsys):
    make_model(results, {"3d_fullres": tiny_config("3d_fullres", [2.5, 1.0, 1.0], [8, 8, 8])})
    src, out = tmp_path / "in", tmp_path / "out"
    _three_cases(src)
    (src / "broken_0000.nii.gz").write_bytes(b"not a nifti at all")
    args = ["predict", "-i", str(src), "-o", str(out), "--device", "cpu", "--no-tta"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken" in err and "corrupt" in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_0.nii.gz", "case_1.nii.gz", "case_2.nii.gz"]
    (src / "broken_0000.nii.gz").unlink()
    first = (out / "case_1.nii.gz").stat().st_mtime_ns
    (out / "case_2.nii.gz").unlink()
    assert main(args) == 0
    assert "predicted 1, skipped 2" in capsys.readouterr().out
    assert (out / "case_1.nii.gz").stat().st_mtime_ns == first and (out / "case_2.nii.gz").is_file()
    assert main(args + ["--overwrite", "--export-threads", "2", "--memory-gb", "0.001"]) == 0  # budget forces one stage at a time
    assert "predicted 3, skipped 0" in capsys.readouterr().out


def test_num_parts_split_disjoint_and_complete(results, tmp_path):
    cases = [InputCase(f"c{i}", [Path(f"c{i}.nii.gz")], f"c{i}.nii.gz") for i in (5, 1, 3, 2, 4, 0, 6)]
    parts = [[c.case_id for c in select_part(cases, 3, i)] for i in range(3)]
    assert parts == [["c0", "c3", "c6"], ["c1", "c4"], ["c2", "c5"]]
    with pytest.raises(AutosegError):
        select_part(cases, 2, 2)
    make_model(results, {"3d_fullres": tiny_config("3d_fullres", [2.5, 1.0, 1.0], [8, 8, 8])})
    src = tmp_path / "in"
    _three_cases(src)
    got = []
    for part in (0, 1):
        out = tmp_path / f"out{part}"
        assert main(["predict", "-i", str(src), "-o", str(out), "--device", "cpu", "--no-tta",
                     "--num-parts", "2", "--part-id", str(part)]) == 0
        got.append({p.name for p in out.glob("*.nii.gz")})
    assert got == [{"case_0.nii.gz", "case_2.nii.gz"}, {"case_1.nii.gz"}]


def test_weighted_fold_ensemble_and_export_model_zip(results, tmp_path):
    make_model(results, {"3d_fullres": tiny_config("3d_fullres", [2.5, 1.0, 1.0], [8, 8, 8])}, folds=("0", "1"))
    src = tmp_path / "in"
    _three_cases(src)
    direct = tmp_path / "direct"
    assert main(["predict", "-i", str(src), "-o", str(direct), "--device", "cpu", "--no-tta",
                 "--ensemble", "weighted", "--weights", "0.7", "0.3"]) == 0
    assert main(["predict", "-i", str(src), "-o", str(tmp_path / "bad"), "--device", "cpu", "--ensemble", "weighted",
                 "--weights", "1", "2", "3"]) == 1
    z = tmp_path / "model.zip"
    assert main(["export_model", "-o", str(z), "-f", "0", "1"]) == 0
    names = zipfile.ZipFile(z).namelist()
    assert f"{DATASET}/3d_fullres/fold_1/checkpoint_final.pth" in names and f"{DATASET}/3d_fullres/plans.json" in names
    shutil.rmtree(results / DATASET)  # the zip alone must suffice
    via_zip = tmp_path / "via_zip"
    assert main(["predict", "--model", str(z), "-i", str(src), "-o", str(via_zip), "--device", "cpu", "--no-tta",
                 "--ensemble", "weighted", "--weights", "0.7", "0.3"]) == 0
    for i in range(3):
        a, _ = read_image(direct / f"case_{i}.nii.gz", np.uint8)
        b, _ = read_image(via_zip / f"case_{i}.nii.gz", np.uint8)
        np.testing.assert_array_equal(a, b)


def test_zip_entries_escaping_the_folder_are_refused(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"{DATASET}/plans.json", "{}")
        zf.writestr(f"{DATASET}/../../escaped.txt", "x")
    with pytest.raises(AutosegError, match="outside"):
        extract_model(z, tmp_path / "x")
    assert not (tmp_path / "escaped.txt").exists()


def test_cascade_uses_lowres_stage_or_given_masks(results, tmp_path):
    make_model(results, {"3d_lowres": tiny_config("3d_lowres", [4.0, 2.0, 2.0], [8, 8, 8]),
                         "3d_cascade_fullres": tiny_config("3d_cascade_fullres", [2.5, 1.0, 1.0], [8, 8, 8], previous="3d_lowres")})
    model = TrainedModel(results / DATASET, "3d_cascade_fullres")
    assert model.num_input_channels == 3  # 1 image + 2 one-hot foreground channels
    src = tmp_path / "in"
    _three_cases(src)
    out, given = tmp_path / "out", tmp_path / "given"
    assert main(["predict", "-i", str(src), "-o", str(out), "-c", "3d_cascade_fullres", "--device", "cpu", "--no-tta"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 3
    prev = tmp_path / "prev"
    assert main(["predict", "-i", str(src), "-o", str(prev), "-c", "3d_lowres", "--device", "cpu", "--no-tta"]) == 0
    assert main(["predict", "-i", str(src), "-o", str(given), "-c", "3d_cascade_fullres", "--device", "cpu", "--no-tta",
                 "--prev-stage-predictions", str(prev)]) == 0
    for i in range(3):  # running the lowres model inside == feeding its saved masks
        a, _ = read_image(out / f"case_{i}.nii.gz", np.uint8)
        b, _ = read_image(given / f"case_{i}.nii.gz", np.uint8)
        np.testing.assert_array_equal(a, b)
    z = tmp_path / "cascade.zip"
    export_model(DATASET, z, ["3d_cascade_fullres"])
    assert f"{DATASET}/3d_lowres/fold_0/checkpoint_final.pth" in zipfile.ZipFile(z).namelist()
