"""plan_and_preprocess end to end on tiny datasets: integrity check, fingerprint, plans, cases."""

import json

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.fingerprint.fingerprint import DatasetFingerprint
from autoseg.io.images import read_image, write_image
from autoseg.planners.plans import Plans
from autoseg.preprocessing.case_store import list_preprocessed_cases, load_case

from conftest import write_blob_dataset


@pytest.fixture
def dataset(autoseg_env):
    folder = autoseg_env["raw"] / "Dataset003_Liver"
    write_blob_dataset(folder, n=4)
    return folder


def run(*args):
    return main(list(args))


def test_fingerprint_plans_and_preprocessed_cases(dataset, autoseg_env, capsys):
    assert run("plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "2d", "-np", "1") == 0
    pre = autoseg_env["pre"] / "Dataset003_Liver"
    fp = DatasetFingerprint.load(pre / "dataset_fingerprint.json")
    assert fp.num_cases == 4 and fp.cases[0].spacing_zyx == [2.5, 1.0, 1.0]
    st = fp.intensity_per_channel["0"]
    assert 20 < st.mean < 60 and st.percentile_00_5 < st.median < st.percentile_99_5  # liver 60 / tumour 20 HU
    plans = Plans.load(pre / "plans.json")
    full = plans.configurations["3d_fullres"]
    assert full.spacing_mm == pytest.approx([2.5, 1.0, 1.0])
    assert full.batch_size >= 2 and full.normalization[0].scheme == "ct"
    assert all(p % (2 ** n) == 0 for p, n in zip(full.patch_size, full.topology.pool_per_axis))
    assert "2d" in plans.configurations and plans.configurations["2d"].dim == 2
    json.loads((pre / "plans.json").read_text())  # plain JSON
    folder = pre / full.data_identifier
    assert list_preprocessed_cases(folder) == [f"case_{i:03d}" for i in range(4)]
    data, seg, props = load_case(folder, "case_000")
    assert isinstance(data, np.memmap) and data.dtype == np.float32 and seg.dtype == np.int8
    assert data.shape[1:] == seg.shape[1:] == tuple(props.shape_after_resampling)
    assert set(np.unique(seg)) <= {0, 1, 2} and "1" in props.class_locations
    c = props.class_locations["2"][0]
    assert seg[tuple(c)] == 2
    # normalised with the CT scheme: foreground ~ zero mean
    assert abs(float(np.asarray(data)[np.asarray(seg) > 0].mean())) < 1.0
    # re-running skips finished cases, --clean redoes them
    mtime = (folder / "case_000.npy").stat().st_mtime_ns
    assert run("plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "-np", "1") == 0
    assert (folder / "case_000.npy").stat().st_mtime_ns == mtime
    assert run("plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "-np", "1", "--clean") == 0
    assert (folder / "case_000.npy").stat().st_mtime_ns != mtime
    # a plan whose patch/batch/network changed (e.g. another --gpu-memory) keeps the cases ...
    stamp = folder / "configuration.json"
    made = json.loads(stamp.read_text())
    made.update(patch_size=[4, 8, 8], batch_size=99)
    stamp.write_text(json.dumps(made))
    mtime = (folder / "case_000.npy").stat().st_mtime_ns
    assert run("plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "-np", "1") == 0
    assert (folder / "case_000.npy").stat().st_mtime_ns == mtime
    assert json.loads(stamp.read_text())["patch_size"] == full.patch_size  # the stamp follows the new plan
    # ... one whose normalisation changed redoes them
    assert run("plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres", "-np", "1", "--normalization", "window:-200,200") == 0
    assert (folder / "case_000.npy").stat().st_mtime_ns != mtime


def test_window_normalisation_and_multiprocessing(dataset, autoseg_env):
    assert run("plan_and_preprocess", "-c", "3d_fullres", "-np", "2", "--normalization", "window:-200,200") == 0
    pre = autoseg_env["pre"] / "Dataset003_Liver"
    plans = Plans.load(pre / "plans.json")
    n = plans.configurations["3d_fullres"].normalization[0]
    assert (n.scheme, n.lower, n.upper) == ("window", -200.0, 200.0)
    data, _, _ = load_case(pre / plans.configurations["3d_fullres"].data_identifier, "case_001")
    assert float(np.min(data)) >= -0.05 and float(np.max(data)) <= 1.05


def _expect_error(capsys, fragment, autoseg_env, *args):
    code = run("plan_and_preprocess", "-np", "1", *args)
    err = capsys.readouterr().err
    assert code != 0 and fragment in err and "Traceback" not in err
    assert not (autoseg_env["pre"] / "Dataset003_Liver").exists()  # nothing written
    return err


def test_integrity_missing_label(dataset, autoseg_env, capsys):
    (dataset / "labelsTr" / "case_002.nii.gz").unlink()
    err = _expect_error(capsys, "case_002.nii.gz", autoseg_env)
    assert "label missing" in err and len(err.strip().splitlines()) == 1


def test_integrity_shape_and_spacing_mismatch(dataset, autoseg_env, capsys):
    seg, g = read_image(dataset / "labelsTr" / "case_001.nii.gz")
    g.spacing_zyx = [3.0, 1.0, 1.0]
    write_image(seg.astype(np.uint8), g, dataset / "labelsTr" / "case_001.nii.gz")
    _expect_error(capsys, "spacing", autoseg_env)


def test_integrity_undeclared_label_and_nan_and_corrupt(dataset, autoseg_env, capsys):
    seg, g = read_image(dataset / "labelsTr" / "case_000.nii.gz")
    seg[0, 0, 0] = 7
    write_image(seg.astype(np.uint8), g, dataset / "labelsTr" / "case_000.nii.gz")
    (dataset / "imagesTr" / "case_003_0000.nii.gz").write_bytes(b"\x00garbage")
    err = _expect_error(capsys, "[7] not declared", autoseg_env)
    assert "case_003_0000.nii.gz" in err and "corrupt" in err  # every faulty case reported, one line each


def test_integrity_dataset_json(dataset, autoseg_env, capsys):
    dj = json.loads((dataset / "dataset.json").read_text())
    del dj["file_ending"]
    (dataset / "dataset.json").write_text(json.dumps(dj))
    _expect_error(capsys, "missing key(s) file_ending", autoseg_env)
    dj["file_ending"] = ".nii.gz"
    dj["dataset"] = {"x": {"images": ["../../etc/passwd"], "label": "labelsTr/case_000.nii.gz"}}
    (dataset / "dataset.json").write_text(json.dumps(dj))
    _expect_error(capsys, "outside the dataset folder", autoseg_env)
    del dj["dataset"]
    dj["labels"]["vessel"] = 200  # would wrap in the int8 label store
    (dataset / "dataset.json").write_text(json.dumps(dj))
    _expect_error(capsys, "label value(s) [200] outside 0..127", autoseg_env)


def test_integrity_wrong_channel_count_and_empty(dataset, autoseg_env, capsys):
    dj = json.loads((dataset / "dataset.json").read_text())
    dj["channel_names"] = {"0": "CT", "1": "CT"}
    (dataset / "dataset.json").write_text(json.dumps(dj))
    _expect_error(capsys, "declares 2 channel(s)", autoseg_env)
    dj["channel_names"] = {"0": "CT"}
    (dataset / "dataset.json").write_text(json.dumps(dj))
    for p in (dataset / "imagesTr").iterdir():
        p.unlink()
    _expect_error(capsys, "no training cases", autoseg_env)


def test_verify_only_writes_nothing(dataset, autoseg_env, capsys):
    assert run("plan_and_preprocess", "--verify", "-np", "1") == 0
    assert "passed the integrity check" in capsys.readouterr().out
    assert not (autoseg_env["pre"] / "Dataset003_Liver").exists()


def test_bad_normalization_is_one_line(dataset, autoseg_env, capsys):
    _expect_error(capsys, "window:LOW,HIGH", autoseg_env, "--normalization", "window:abc")
    _expect_error(capsys, "choose ct, zscore", autoseg_env, "--normalization", "foo")
