"""Converters on small fabricated MSD, LiTS and PNG folders: values, ordering, spacing, geometry."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from autoseg.datasets.converters import convert_lits, convert_msd, convert_png
from autoseg.datasets.converters.png import mask_to_labels
from autoseg.datasets.layout import list_cases, load_dataset_info
from autoseg.errors import AutosegError
from autoseg.io.images import Geometry, read_image, write_image

GEOM = Geometry(shape_zyx=[3, 4, 5], spacing_zyx=[2.5, 0.8, 0.7], origin_xyz=[-10.0, 20.0, 30.0],
                direction=[-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0])


def _volume(value: int, dtype=np.int16) -> np.ndarray:
    return (np.arange(60).reshape(3, 4, 5) + value).astype(dtype)


def _label(n: int) -> np.ndarray:
    lab = np.zeros((3, 4, 5), np.uint8)
    lab[1, 1:3, 1:4] = 1
    lab[1, 2, 2] = 2 if n % 2 == 0 else 1
    return lab


# ---------------------------------------------------------------- MSD

def _fake_msd(root: Path, ids=(0, 1, 2, 10)) -> Path:
    task = root / "Task03_Liver"
    for n in ids:
        ending = ".nii" if n == 1 else ".nii.gz"  # one uncompressed file: must be re-written, not copied
        write_image(_volume(100 * n), GEOM, task / "imagesTr" / f"liver_{n}{ending}")
        write_image(_label(n), GEOM, task / "labelsTr" / f"liver_{n}{ending}")
    write_image(_volume(-5), GEOM, task / "imagesTs" / "liver_132.nii.gz")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    meta = {"name": "LiverMSD", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
            "numTraining": len(ids), "training": [{"image": f"./imagesTr/liver_{n}.nii.gz", "label": f"./labelsTr/liver_{n}.nii.gz"} for n in ids],
            "test": ["./imagesTs/liver_132.nii.gz"]}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def test_msd_conversion(tmp_path: Path):
    task = _fake_msd(tmp_path / "src")
    out = tmp_path / "Dataset003_Liver"
    info = convert_msd(task, out)
    assert info.labels == {"background": 0, "liver": 1, "cancer": 2} and info.numTraining == 4
    loaded = load_dataset_info(out)
    assert loaded.channel_names == {"0": "CT"} and loaded.name == "LiverMSD"
    cases = list_cases(out, loaded)
    assert sorted(c.case_id for c in cases) == ["liver_0", "liver_1", "liver_10", "liver_2"]
    for c in cases:
        n = int(c.case_id.split("_")[1])
        img, g = read_image(c.images[0], dtype=np.int16)
        lab, _ = read_image(c.label, dtype=np.uint8)
        assert np.array_equal(img, _volume(100 * n)) and np.array_equal(lab, _label(n))
        assert g.matches(GEOM) is None
    assert (out / "imagesTr" / "liver_0_0000.nii.gz").read_bytes() == (task / "imagesTr" / "liver_0.nii.gz").read_bytes()
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["liver_132_0000.nii.gz"]
    assert not any(p.name.startswith("._") for p in out.rglob("*"))


def test_msd_accepts_the_folder_above_the_task_and_refuses_bad_sources(tmp_path: Path):
    _fake_msd(tmp_path / "src", ids=(0,))
    assert convert_msd(tmp_path / "src", tmp_path / "out").numTraining == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutosegError, match="no MSD dataset.json"):
        convert_msd(tmp_path / "empty", tmp_path / "o2")
    with pytest.raises(AutosegError, match="not a folder"):
        convert_msd(tmp_path / "missing", tmp_path / "o2")
    task = _fake_msd(tmp_path / "src2", ids=(0, 4))
    (task / "labelsTr" / "liver_4.nii.gz").unlink()
    with pytest.raises(AutosegError, match=r"liver_4\.nii\.gz: label missing"):
        convert_msd(task, tmp_path / "o3")


def test_msd_refuses_4d_multimodal_images(tmp_path: Path):
    task = _fake_msd(tmp_path / "src", ids=(0,))
    img4d = sitk.JoinSeries([sitk.GetImageFromArray(_volume(0)), sitk.GetImageFromArray(_volume(1))])
    sitk.WriteImage(img4d, str(task / "imagesTr" / "liver_0.nii.gz"))
    with pytest.raises(AutosegError, match="4D image with 2 volumes"):
        convert_msd(task, tmp_path / "out")


# ---------------------------------------------------------------- LiTS

def _fake_lits(root: Path) -> Path:
    for batch, ids in (("Training Batch 1", (0, 2)), ("Training Batch 2", (10,))):
        for n in ids:
            write_image(_volume(n), GEOM, root / batch / f"volume-{n}.nii", compress=False)
            seg_geom = Geometry(GEOM.shape_zyx, GEOM.spacing_zyx, [o + 0.01 for o in GEOM.origin_xyz], GEOM.direction)
            write_image(_label(n).astype(np.float32), seg_geom, root / batch / f"segmentation-{n}.nii", compress=False)
    (root / "Training Batch 1" / "._volume-5.nii").write_bytes(b"junk")
    write_image(_volume(7), GEOM, root / "Test Data" / "test-volume-0.nii", compress=False)
    return root


def test_lits_conversion_searches_batches_and_orders_numerically(tmp_path: Path):
    src = _fake_lits(tmp_path / "LiTS")
    out = tmp_path / "Dataset002_LiTS"
    info = convert_lits(src, out)
    assert info.numTraining == 3 and info.labels == {"background": 0, "liver": 1, "tumor": 2}
    cases = list_cases(out, load_dataset_info(out))
    assert sorted(c.case_id for c in cases) == ["lits_0", "lits_10", "lits_2"]
    for c in cases:
        n = int(c.case_id.split("_")[1])
        img, g = read_image(c.images[0], dtype=np.int16)
        assert np.array_equal(img, _volume(n)) and g.matches(GEOM) is None
        seg = sitk.ReadImage(str(c.label))
        assert seg.GetPixelID() == sitk.sitkUInt8
        assert np.array_equal(sitk.GetArrayFromImage(seg), _label(n))
        assert Geometry.from_sitk(seg).matches(GEOM, tol=1e-6) is None  # label takes its volume's grid
    assert (out / "imagesTs" / "lits_test_0_0000.nii.gz").is_file()


def test_lits_errors_name_the_offending_file(tmp_path: Path):
    src = _fake_lits(tmp_path / "a")
    write_image(_volume(3), GEOM, src / "Training Batch 2" / "volume-3.nii")
    with pytest.raises(AutosegError, match=r"volume-3\.nii: no segmentation-3"):
        convert_lits(src, tmp_path / "out")
    src = _fake_lits(tmp_path / "b")
    bad = _label(0)
    bad[0, 0, 0] = 3
    write_image(bad, GEOM, src / "Training Batch 1" / "segmentation-0.nii")
    with pytest.raises(AutosegError, match=r"segmentation-0\.nii: label values \[3\]"):
        convert_lits(src, tmp_path / "out")
    (tmp_path / "c").mkdir()
    with pytest.raises(AutosegError, match="no LiTS volume-N.nii"):
        convert_lits(tmp_path / "c", tmp_path / "out")


# ---------------------------------------------------------------- PNG

def _fake_png(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for patient, slices in (("pat_a", (1, 2, 10, 9)), ("b", (3,))):
        for s in slices:
            grey = np.full((4, 6), 10 * s, np.uint8)
            grey[0, 0] = 200
            img = Image.fromarray(np.stack([grey] * 3, -1)) if patient == "b" else Image.fromarray(grey)
            img.save(root / "images" / f"{patient}_{s}.png")
            mask = np.zeros((4, 6), np.uint8)
            mask[1, 1:4] = 127 if s != 2 else 126  # within +-2 of liver
            mask[2, 2] = 255 if s != 10 else 254
            Image.fromarray(mask).save(root / "masks" / f"{patient}_{s}.png")
    (root / "images" / "._pat_a_1.png").write_bytes(b"junk")
    return root


def test_png_stacks_slices_per_patient_in_numeric_order(tmp_path: Path):
    src = _fake_png(tmp_path / "png")
    out = tmp_path / "Dataset004_Png"
    info = convert_png(src, out, spacing_xyz=(0.7, 0.8, 2.5))
    assert info.numTraining == 2 and info.intensity_kind == "grey"
    loaded = load_dataset_info(out)
    assert loaded.channel_names == {"0": "grey"} and loaded.channel_kind(0) == "grey"
    cases = {c.case_id: c for c in list_cases(out, loaded)}
    assert sorted(cases) == ["b", "pat_a"]
    img, g = read_image(cases["pat_a"].images[0])
    assert img.shape == (4, 4, 6) and img[:, 1, 1].tolist() == [10, 20, 90, 100]  # slices 1, 2, 9, 10
    assert g.spacing_zyx == pytest.approx([2.5, 0.8, 0.7]) and g.origin_xyz == [0.0, 0.0, 0.0]
    lab, _ = read_image(cases["pat_a"].label, dtype=np.uint8)
    expected = np.zeros((4, 6), np.uint8)
    expected[1, 1:4], expected[2, 2] = 1, 2
    assert all(np.array_equal(lab[z], expected) for z in range(4))
    rgb, _ = read_image(cases["b"].images[0])
    assert rgb[0, 1, 1] == 30 and rgb[0, 0, 0] == 200  # luminance of an RGB grey is the grey


def test_png_refuses_missing_masks_and_foreign_grey_levels(tmp_path: Path):
    src = _fake_png(tmp_path / "a")
    (src / "masks" / "pat_a_9.png").unlink()
    with pytest.raises(AutosegError, match=r"pat_a_9\.png: no mask"):
        convert_png(src, tmp_path / "out", (1.0, 1.0, 1.0))
    src = _fake_png(tmp_path / "b")
    Image.fromarray(np.full((4, 6), 100, np.uint8)).save(src / "masks" / "b_3.png")
    with pytest.raises(AutosegError, match=r"b_3\.png: mask grey level\(s\) \[100\]"):
        convert_png(src, tmp_path / "out", (1.0, 1.0, 1.0))
    with pytest.raises(AutosegError, match="label values"):
        mask_to_labels(np.array([[0, 1], [2, 0]], np.uint8), Path("m.png"))
    (tmp_path / "c").mkdir()
    with pytest.raises(AutosegError, match="images/ and masks/"):
        convert_png(tmp_path / "c", tmp_path / "out", (1.0, 1.0, 1.0))
