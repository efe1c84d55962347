"""DICOM SEG out of ``autoseg predict`` and into ``autoseg evaluate``: frames equal the NIfTI mask on the same slices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom")
import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from autoseg.cli import main  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from autoseg.inference.model import TrainedModel  # noqa: E402
from autoseg.io.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from autoseg.io.images import Geometry, read_image  # noqa: E402

from conftest import SHARED  # noqa: E402
from dicom_series import write_dicom_series  # noqa: E402
from test_predict import LABELS, NearestCentre, ct_like, make_model, tiny_config  # noqa: E402

CT3 = SHARED / "data" / "dcmqi_ct3slice"


@pytest.fixture
def nearest_model(autoseg_env, monkeypatch):
    """A model whose network labels voxels by nearest HU centre (0, 100, 200): a known, non-empty mask."""
    make_model(autoseg_env["res"], {"3d_fullres": tiny_config("3d_fullres", [2.0, 1.0, 1.0], [4, 8, 8])})
    monkeypatch.setattr(TrainedModel, "load_networks", lambda self, device="cpu": [NearestCentre()])
    return autoseg_env["res"]


def _check_frames_equal_mask(seg_file: Path, series: Path, mask_file: Path) -> int:
    """Every SEG frame equals (NIfTI mask == its segment's label) on the slice of its referenced CT instance;
    slices without a frame have no voxel of that label. Returns the number of frames."""
    seg = hd.seg.segread(str(seg_file))
    mask_img = sitk.ReadImage(str(mask_file))
    mask = sitk.GetArrayFromImage(mask_img)
    value_of = {int(n): LABELS[str(seg.get_segment_description(n).segment_label)] for n in seg.segment_numbers}
    z_of = {}  # SOP instance UID -> z index of the NIfTI, found by physical position
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        idx = mask_img.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient])
        assert abs(idx[0]) < 1e-3 and abs(idx[1]) < 1e-3
        z_of[str(ds.SOPInstanceUID)] = int(round(idx[2]))
    covered = set()
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        z = z_of[uid]
        np.testing.assert_array_equal(pixels[i] > 0, mask[z] == value_of[number])
        covered.add((z, number))
    for z in range(mask.shape[0]):
        for number, value in value_of.items():
            if (z, number) not in covered:
                assert not (mask[z] == value).any()
    return int(seg.NumberOfFrames)


@pytest.mark.parametrize("flipped", [False, True])
def test_predict_writes_dicom_seg_matching_the_nifti(nearest_model, tmp_path, flipped):
    # flipped: y and z axes reversed (IOP column direction -y, slices stacked along -z) and files/instance
    # numbers in the opposite order of the positions
    direction = [1.0, 0, 0, 0, -1.0, 0, 0, 0, -1.0] if flipped else [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    geom = Geometry([6, 20, 18], [2.5, 0.8, 1.1], [-12.5, 40.0, 7.25], direction)
    series = write_dicom_series(tmp_path / "in" / "ct_1", ct_like(geom.shape_zyx, 3), geom, reverse_files=flipped)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--no-tta",
                 "--output-format", "nifti", "dicom-seg", "-np", "1"]) == 0
    mask, _ = read_image(out / "ct_1.nii.gz", np.uint8)
    assert set(np.unique(mask)) == {0, 1, 2}  # a real test: both labels present
    assert _check_frames_equal_mask(out / "ct_1.dcm", series, out / "ct_1.nii.gz") > 0
    seg = hd.seg.segread(str(out / "ct_1.dcm"))
    liver, tumor = (seg.get_segment_description(n) for n in (1, 2))
    assert (liver.segment_label, liver.segmented_property_type.value) == ("liver", "10200004")
    assert (tumor.segment_label, tumor.segmented_property_type.value) == ("tumor", "108369006")
    algo = liver.SegmentationAlgorithmIdentificationSequence[0] if "SegmentationAlgorithmIdentificationSequence" in liver \
        else liver.SegmentAlgorithmName
    assert "autoseg" in str(algo)
    # the SEG as reference: evaluating the NIfTI against it is perfect
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(out / "ct_1.dcm", ref / "ct_1.dcm")
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(out / "ct_1.nii.gz", pred / "ct_1.nii.gz")
    assert main(["evaluate", "-r", str(ref), "-p", str(pred)]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["mean"]["1"]["Dice"] == pytest.approx(1.0) and summary["mean"]["2"]["Dice"] == pytest.approx(1.0)


def test_dicom_seg_only_and_user_codes(nearest_model, tmp_path):
    geom = Geometry([4, 16, 16], [2.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    write_dicom_series(tmp_path / "in" / "s", ct_like(geom.shape_zyx, 1), geom)
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"tumor": {"category": ["49755003", "SCT", "Morphologically Abnormal Structure"],
                                           "type": ["4147007", "SCT", "Mass"]}}))
    out = tmp_path / "out"
    args = ["predict", "-i", str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--no-tta",
            "--output-format", "dicom-seg", "--segment-codes", str(codes)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["s.dcm"]  # no NIfTI left behind
    seg = hd.seg.segread(str(out / "s.dcm"))
    assert seg.get_segment_description(2).segmented_property_type.value == "4147007"
    assert seg.get_segment_description(1).segmented_property_type.value == "10200004"  # built-in for liver
    mtime = (out / "s.dcm").stat().st_mtime_ns
    assert main(args) == 0 and (out / "s.dcm").stat().st_mtime_ns == mtime  # done: skipped
    # an image-file input cannot become a SEG: with dicom-seg alone the case fails
    img = tmp_path / "img"
    img.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(next((tmp_path / "in" / "s").glob("*.dcm")))), str(img / "x.nii.gz"))
    assert main(["predict", "-i", str(img), "-o", str(tmp_path / "o2"), "--device", "cpu", "--no-tta",
                 "--output-format", "dicom-seg"]) == 1


@pytest.mark.skipif(not CT3.is_dir(), reason="shared/data/dcmqi_ct3slice not present")
def test_dcmqi_ct3slice_reference_round_trip_and_predict(nearest_model, tmp_path):
    series = tmp_path / "in" / "ct3"
    series.mkdir(parents=True)
    for f in CT3.glob("*.dcm"):
        shutil.copy(f, series / f.name)
    _, geom = read_image(series)
    ref_mask, ref_geom = read_image(CT3 / "liver_seg.nrrd", np.uint8)
    assert ref_geom.matches(geom) is None and ref_mask.any()
    seg_file = write_dicom_seg(ref_mask, geom, series, LABELS, tmp_path / "liver_ref.dcm")
    np.testing.assert_array_equal(read_dicom_seg(seg_file, geom, LABELS), ref_mask)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--no-tta",
                 "--output-format", "nifti", "dicom-seg"]) == 0
    assert _check_frames_equal_mask(out / "ct3.dcm", series, out / "ct3.nii.gz") > 0


def test_seg_off_the_grid_is_refused(tmp_path):
    geom = Geometry([3, 8, 8], [2.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    series = write_dicom_series(tmp_path / "s", np.zeros((3, 8, 8), np.int16), geom)
    mask = np.zeros((3, 8, 8), np.uint8)
    mask[1, 2:5, 2:5] = 1
    seg_file = write_dicom_seg(mask, geom, series, LABELS, tmp_path / "seg.dcm")
    shifted = Geometry([3, 8, 8], [2.0, 1.0, 1.0], [0.0, 0.0, 1.0], geom.direction)  # half a slice off
    with pytest.raises(AutosegError, match="does not lie on the image grid"):
        read_dicom_seg(seg_file, shifted, LABELS)


def test_segment_codes_file_travels_in_the_model_zip(nearest_model, tmp_path):
    geom = Geometry([4, 16, 16], [2.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    write_dicom_series(tmp_path / "in" / "s", ct_like(geom.shape_zyx, 1), geom)
    (nearest_model / "Dataset003_Liver" / "segment_codes.json").write_text(json.dumps(
        {"liver": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["39607008", "SCT", "Lung"]}}))
    z = tmp_path / "m.zip"
    assert main(["export_model", "-o", str(z)]) == 0
    shutil.rmtree(nearest_model / "Dataset003_Liver")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(z), "-i", str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--no-tta",
                 "--runtime", "torch", "--output-format", "dicom-seg"]) == 0
    seg = hd.seg.segread(str(out / "s.dcm"))
    assert seg.get_segment_description(1).segmented_property_type.value == "39607008"


def test_empty_mask_still_makes_a_valid_seg(tmp_path):
    geom = Geometry([3, 8, 8], [2.0, 1.0, 1.0], [5.0, -3.0, 1.0], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    series = write_dicom_series(tmp_path / "s", np.zeros((3, 8, 8), np.int16), geom)
    seg_file = write_dicom_seg(np.zeros((3, 8, 8), np.uint8), geom, series, LABELS, tmp_path / "seg.dcm")
    assert hd.seg.segread(str(seg_file)).NumberOfFrames > 0  # highdicom keeps the (empty) frames
    assert not read_dicom_seg(seg_file, geom, LABELS).any()
