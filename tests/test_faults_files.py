"""Bad input files are refused with one line naming them, never read as something else.

Truncated images, vector images, DICOM folders with several series, 2D cases in a 3D dataset,
a wrong ``numTraining`` and ITK's probe warnings (issue 16).
"""

from __future__ import annotations

import gzip
import locale
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.inference.inputs import discover_cases, read_input_case
from autoseg.io.images import Geometry, read_image, write_image
from autoseg.io.integrity import _nifti_expected, check_complete

from conftest import write_blob_dataset
from test_predict import make_model, tiny_config, write_case

REPO = Path(__file__).resolve().parents[1]


def _noise(shape=(12, 20, 24), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)  # compresses poorly


def error_lines(stderr: str) -> list[str]:
    """The CLI's error lines (progress bars share stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("autoseg ")]


def _truncate(path, keep=0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name,compress", [("a.nii.gz", True), ("a.nii", False), ("a.mha", False), ("a.mha", True)])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_image_is_refused_naming_the_file(tmp_path, name, compress, keep):
    arr = _noise()
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), useCompression=compress)
    assert np.array_equal(read_image(path, dtype=None)[0], arr)  # whole file: read exactly
    _truncate(path, keep)
    with pytest.raises(AutosegError, match=f"{name}: file is truncated") as e:
        read_image(path)
    assert "\n" not in str(e.value) and "copy the file again" in str(e.value)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_data_file_of_an_mhd_is_refused(tmp_path, compress):
    sitk.WriteImage(sitk.GetImageFromArray(_noise()), str(tmp_path / "a.mhd"), useCompression=compress)
    data = next(p for p in tmp_path.iterdir() if p.suffix in (".raw", ".zraw"))
    read_image(tmp_path / "a.mhd")
    _truncate(data)
    with pytest.raises(AutosegError, match=f"{data.name}: file is truncated .* for a.mhd"):
        read_image(tmp_path / "a.mhd")


def test_nifti_size_comes_from_the_header_on_disk(tmp_path):
    arr = _noise((3, 4, 5))
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "a.nii"))
    head = bytearray((tmp_path / "a.nii").read_bytes())
    head[112:120] = struct.pack("<2f", 2.0, 1.0)  # scl_slope 2, scl_inter 1: ITK reports float32, the file holds int16
    (tmp_path / "scaled.nii.gz").write_bytes(gzip.compress(bytes(head)))
    assert np.array_equal(read_image(tmp_path / "scaled.nii.gz")[0], arr * 2.0 + 1.0)
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(bytes(head[:-2])))  # a whole gzip stream of too few bytes
    with pytest.raises(AutosegError, match=f"cut.nii.gz: file is truncated \\({len(head) - 2} of {len(head)} bytes"):
        read_image(tmp_path / "cut.nii.gz")
    big = bytearray(540)  # a big-endian NIfTI-1 header of a 7 x 6 x 5 float32 image
    big[:4], big[40:56], big[72:74], big[108:112] = (struct.pack(">i", 348), struct.pack(">8h", 3, 7, 6, 5, 1, 1, 1, 1),
                                                      struct.pack(">h", 32), struct.pack(">f", 352.0))
    assert _nifti_expected(bytes(big)) == 352 + 7 * 6 * 5 * 4
    two = bytearray(540)  # a NIfTI-2 header of a 4D 3 x 4 x 5 x 2 int16 image
    two[:4], two[14:16], two[16:80], two[168:176] = (struct.pack("<i", 540), struct.pack("<h", 16),
                                                     struct.pack("<8q", 4, 3, 4, 5, 2, 1, 1, 1), struct.pack("<q", 544))
    assert _nifti_expected(bytes(two)) == 544 + 3 * 4 * 5 * 2 * 2
    assert _nifti_expected(b"not a header" * 50) is None


def test_gzip_checks_multi_member_streams_and_crc(tmp_path):
    arr = _noise()
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "a.nii.gz"))
    raw = gzip.decompress((tmp_path / "a.nii.gz").read_bytes())
    two = tmp_path / "two.nii.gz"  # two gzip members: the trailer holds only the second one's size
    two.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    check_complete(two)
    assert np.array_equal(read_image(two, dtype=None)[0], arr)
    cut = tmp_path / "cut.nii.gz"  # first member whole, second cut short
    cut.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:])[:-300])
    with pytest.raises(AutosegError, match="cut.nii.gz: file is truncated"):
        check_complete(cut)
    bad = bytearray(two.read_bytes())
    bad[-6] ^= 0x01  # the second member's CRC no longer matches (trailer size now disagrees too)
    bad[-1] ^= 0x01
    (tmp_path / "crc.nii.gz").write_bytes(bytes(bad))
    with pytest.raises(AutosegError, match="crc.nii.gz: compressed data is corrupt"):
        check_complete(tmp_path / "crc.nii.gz")


def test_one_flipped_bit_in_a_nii_gz_is_refused(tmp_path):
    """ITK reads a damaged .nii.gz over ~1 MB without checking the gzip CRC: one voxel silently wrong."""
    arr = (np.arange(32 * 128 * 128) % 3000).astype(np.int16).reshape(32, 128, 128)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "a.nii"))
    gz = bytearray(gzip.compress((tmp_path / "a.nii").read_bytes(), compresslevel=0))  # stored: bytes appear verbatim
    gz[len(gz) // 2] ^= 0x04
    (tmp_path / "flip.nii.gz").write_bytes(bytes(gz))
    with pytest.raises(AutosegError, match="flip.nii.gz: compressed data is corrupt .*incorrect data check"):
        read_image(tmp_path / "flip.nii.gz")


def test_truncated_label_fails_the_integrity_check(autoseg_env, capsys):
    folder = autoseg_env["raw"] / "Dataset003_Liver"
    write_blob_dataset(folder, n=3)
    _truncate(folder / "labelsTr" / "case_001.nii.gz")
    assert main(["plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "-np", "1", "--verify"]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "labelsTr/case_001.nii.gz: file is truncated" in err[0]


def test_predict_refuses_a_truncated_input_and_goes_on(autoseg_env, tmp_path, capsys):
    make_model(autoseg_env["res"], {"3d_fullres": tiny_config("3d_fullres", [2.5, 1.0, 1.0], [8, 8, 8])})
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write_case(src / f"case_{i}_0000.nii.gz", shape=(8, 12, 12), seed=i)
    _truncate(src / "case_1_0000.nii.gz", 0.6)
    assert main(["predict", "-i", str(src), "-o", str(out), "--device", "cpu", "--no-tta", "--export-threads", "1"]) == 1
    assert "case_1_0000.nii.gz: file is truncated" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_0.nii.gz", "case_2.nii.gz"]


def test_vector_image_is_refused_unless_its_components_are_equal(tmp_path):
    a, b = _noise(seed=1).astype(np.float32), _noise(seed=2).astype(np.float32)
    sitk.WriteImage(sitk.Compose(sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)), str(tmp_path / "vec_0000.nii.gz"))
    with pytest.raises(AutosegError, match="vec_0000.nii.gz: 2 components per voxel"):
        read_image(tmp_path / "vec_0000.nii.gz")
    cases, _ = discover_cases(tmp_path, 1)  # predict: the case fails with that line instead of using component 0
    with pytest.raises(AutosegError, match="components per voxel"):
        read_input_case(cases[0], 1)
    grey = sitk.Compose(*[sitk.GetImageFromArray(a)] * 3)  # grey saved as RGB: one value per voxel after all
    sitk.WriteImage(grey, str(tmp_path / "grey.nii.gz"))
    assert np.array_equal(read_image(tmp_path / "grey.nii.gz")[0], a)


def write_dicom_series(folder, uid: str, description: str, arr: np.ndarray, spacing=(0.8, 0.8, 2.5), prefix="s") -> None:
    """A tiny CT series (one file per z-slice of ``arr`` (Z, Y, X)) written with SimpleITK.

    GDCM's writer switches the process to the C locale (then ``open()`` defaults to ASCII in
    later tests); the locale is restored afterwards.
    """
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing(spacing)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved = locale.setlocale(locale.LC_ALL)
    try:
        for z in range(img.GetDepth()):
            s = img[:, :, z]
            tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.9", "0020|000e": uid,
                    "0008|103e": description, "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"0\\0\\{z * spacing[2]}",
                    "0020|0013": str(z + 1), "0008|0018": f"{uid}.{z + 1}"}
            for k, v in tags.items():
                s.SetMetaData(k, v)
            writer.SetFileName(str(folder / f"{prefix}{z:03d}.dcm"))
            writer.Execute(s)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def test_dicom_folder_with_two_series_gives_one_mask_per_series(autoseg_env, tmp_path, capsys):
    make_model(autoseg_env["res"], {"3d_fullres": tiny_config("3d_fullres", [2.5, 1.0, 1.0], [4, 8, 8])})
    study = tmp_path / "in" / "patient1"
    rng = np.random.default_rng(0)
    write_dicom_series(study, "1.2.826.0.1.3680043.2.1125.1", "ARTERIAL phase", rng.normal(0, 50, (4, 10, 12)), prefix="a")
    write_dicom_series(study, "1.2.826.0.1.3680043.2.1125.2", "venous", rng.normal(0, 50, (6, 10, 12)), prefix="v")
    cases, problems = discover_cases(study, 1)
    assert problems == [] and [c.case_id for c in cases] == ["patient1_ARTERIAL_phase", "patient1_venous"]
    assert [read_input_case(c, 1)[0].shape for c in cases] == [(1, 4, 10, 12), (1, 6, 10, 12)]
    with pytest.raises(AutosegError, match=r"patient1: 2 DICOM series in one folder .*2\.1125\.1 'ARTERIAL phase' \(4 files\)"):
        read_image(study)  # whoever reads the folder without naming a series is told, not given one
    out = tmp_path / "out"
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--no-tta", "--export-threads", "1"]) == 0
    sizes = {p.name: sitk.ReadImage(str(p)).GetSize() for p in out.glob("*.nii.gz")}
    assert sizes == {"patient1_ARTERIAL_phase.nii.gz": (12, 10, 4), "patient1_venous.nii.gz": (12, 10, 6)}


def test_series_without_distinct_descriptions_are_named_by_uid(tmp_path):
    write_dicom_series(tmp_path / "s", "1.2.3.1", "same", np.zeros((2, 4, 4)), prefix="a")
    write_dicom_series(tmp_path / "s", "1.2.3.2", "same", np.zeros((3, 4, 4)), prefix="b")
    cases, _ = discover_cases(tmp_path / "s", 1)
    assert [(c.case_id, c.output_name) for c in cases] == [("s_1.2.3.1", "s_1.2.3.1.nii.gz"), ("s_1.2.3.2", "s_1.2.3.2.nii.gz")]


def test_symlink_loop_and_broken_link_are_named_as_such(tmp_path):
    write_image(np.zeros((3, 4, 5), np.float32), Geometry([3, 4, 5], [1.0, 1.0, 1.0]), tmp_path / "a.nii.gz")
    (tmp_path / "loop_0000.nii.gz").symlink_to("loop_0000.nii.gz")
    (tmp_path / "gone_0000.nii.gz").symlink_to(tmp_path / "elsewhere" / "gone.nii.gz")
    with pytest.raises(AutosegError, match="loop_0000.nii.gz: symbolic link loop"):
        read_image(tmp_path / "loop_0000.nii.gz")
    with pytest.raises(AutosegError, match="gone_0000.nii.gz: broken symbolic link \\(points to .*elsewhere/gone.nii.gz"):
        read_image(tmp_path / "gone_0000.nii.gz")
    with pytest.raises(AutosegError, match="missing.nii.gz: file not found"):
        read_image(tmp_path / "missing.nii.gz")
    cases, problems = discover_cases(tmp_path, 1)  # predict reports both links instead of skipping them
    assert [c.case_id for c in cases] == ["a"]
    assert [p.split(": ", 1)[1].split(" (")[0] for p in sorted(problems)] == ["broken symbolic link", "symbolic link loop"]


def test_no_itk_warning_when_probing_a_folder_with_a_non_image_file(tmp_path, capfd):
    write_image(np.zeros((3, 4, 5), np.float32), Geometry([3, 4, 5], [1.0, 1.0, 1.0]), tmp_path / "a_0000.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image")
    capfd.readouterr()
    cases, problems = discover_cases(tmp_path, 1)
    assert [c.case_id for c in cases] == ["a"] and problems == []
    assert capfd.readouterr().err == ""  # GDCM used to print "WARNING ... No Series were found"
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # warnings are back on afterwards


def test_2d_case_in_a_3d_dataset_is_refused(autoseg_env, capsys):
    folder = autoseg_env["raw"] / "Dataset003_Liver"
    write_blob_dataset(folder, n=3)
    for sub, name in (("imagesTr", "case_002_0000.nii.gz"), ("labelsTr", "case_002.nii.gz")):
        img = sitk.ReadImage(str(folder / sub / name))
        sitk.WriteImage(img[:, :, 5], str(folder / sub / name))  # one slice saved as a 2D image
    assert main(["plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "-np", "1", "--verify"]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "case_002_0000.nii.gz: 2D image in a dataset of 3D images" in err[0]


def test_num_training_that_does_not_match_the_files_is_a_warning(autoseg_env, caplog, capsys):
    folder = autoseg_env["raw"] / "Dataset003_Liver"
    write_blob_dataset(folder, n=3)
    dj = folder / "dataset.json"
    dj.write_text(dj.read_text().replace('"numTraining": 3', '"numTraining": 5'))
    with caplog.at_level(logging.WARNING, logger="autoseg"):
        assert main(["plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "-np", "1", "--verify"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{dj}: numTraining is 5 but 3 training case(s) were found" in m for m in warned)
    assert "3 cases passed" in capsys.readouterr().out


def test_numexpr_thread_note_is_not_shown(autoseg_env):
    """``NumExpr defaulting to N threads.`` (numexpr's INFO log, when a dependency imports it) stays off stderr."""
    code = ("import logging; from autoseg.cli import main; main(['plan_and_preprocess', '-d', 'Missing', '--verify']); "
            "logging.getLogger('numexpr.utils').info('NumExpr defaulting to 2 threads.'); "
            "logging.getLogger('autoseg').info('autoseg info still shown')")
    env = {k: v for k, v in os.environ.items() if k != "NUMEXPR_MAX_THREADS"}
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO).stderr
    assert "autoseg info still shown" in err and "NumExpr" not in err
