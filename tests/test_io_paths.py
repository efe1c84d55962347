import numpy as np
import pytest
import SimpleITK as sitk

from autoseg import paths
from autoseg.errors import AutosegError
from autoseg.io.images import Geometry, read_case, read_header, read_image, read_label, read_volume, write_image
from autoseg.io.json_io import dataclass_from_dict, load_json, save_json
from autoseg.planners.plans import NetworkTopology


def test_write_read_round_trip_keeps_geometry_and_axis_order(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (z, y, x)
    g = Geometry([2, 3, 4], [3.0, 0.7, 0.8], [-10.5, 20.25, 3.0], [-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0])
    write_image(arr, g, tmp_path / "a.nii.gz")
    back, g2 = read_image(tmp_path / "a.nii.gz")
    assert back.shape == (2, 3, 4) and np.array_equal(back, arr)
    assert g.matches(g2, tol=1e-6) is None
    assert g2.spacing_zyx == pytest.approx([3.0, 0.7, 0.8])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp files left


def test_read_case_rejects_nan_and_corrupt(tmp_path):
    g = Geometry([2, 2, 2], [1.0, 1.0, 1.0])
    a = np.zeros((2, 2, 2), np.float32)
    a[0, 0, 0] = np.nan
    write_image(a, g, tmp_path / "nan.mha")  # the NIfTI writer turns NaN into 0
    with pytest.raises(AutosegError, match="NaN"):
        read_case([tmp_path / "nan.mha"])
    (tmp_path / "bad.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(AutosegError, match="bad.nii.gz"):
        read_case([tmp_path / "bad.nii.gz"])


def test_label_and_volume_readers_keep_the_stored_type(tmp_path):
    g = Geometry([2, 3, 4], [2.0, 0.5, 0.5], [1.0, 2.0, 3.0])
    lab = (np.arange(24).reshape(2, 3, 4) % 3).astype(np.uint8)
    write_image(lab, g, tmp_path / "lab.nii.gz")
    arr, g2 = read_label(tmp_path / "lab.nii.gz")
    assert arr.dtype == np.uint8 and np.array_equal(arr, lab) and g.matches(g2, tol=1e-6) is None
    write_image(lab.astype(np.float64) / 2, g, tmp_path / "half.nii.gz")
    assert read_label(tmp_path / "half.nii.gz")[0].dtype == np.float32  # non-integer types become float32
    assert read_volume(tmp_path / "lab.nii.gz")[0].dtype == np.uint8


def test_read_volume_reduces_a_single_volume_4d_image_and_refuses_multi_volume(tmp_path):
    vol = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))  # (z, y, x)
    one = sitk.JoinSeries([vol])  # 4D, size (x, y, z, t) = (4, 3, 2, 1)
    sitk.WriteImage(one, str(tmp_path / "one.mha"))  # MHA keeps the 4th axis; NIfTI would drop it
    assert read_header(tmp_path / "one.mha") == (4, [4, 3, 2, 1])
    arr, g = read_volume(tmp_path / "one.mha")
    assert arr.dtype == np.int16 and arr.shape == (2, 3, 4) and g.shape_zyx == [2, 3, 4]
    two = sitk.JoinSeries([vol, vol])
    sitk.WriteImage(two, str(tmp_path / "two.nii.gz"))
    with pytest.raises(AutosegError, match="two.nii.gz: 4D image"):
        read_volume(tmp_path / "two.nii.gz")
    (tmp_path / "bad.nrrd").write_bytes(b"junk")
    with pytest.raises(AutosegError, match="bad.nrrd: cannot read image header"):
        read_header(tmp_path / "bad.nrrd")


def test_json_dataclass_round_trip(tmp_path):
    t = NetworkTopology(2, [32, 64], [[3, 3], [3, 3]], [[1, 1], [2, 2]], [2, 2], [2])
    save_json(t, tmp_path / "t.json")
    assert "\n  " in (tmp_path / "t.json").read_text()  # indented, human-readable
    back = dataclass_from_dict(NetworkTopology, load_json(tmp_path / "t.json"))
    assert back == t and back.pool_per_axis == [1, 1]


def test_paths_defaults_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("AUTOSEG_RAW", raising=False)
    assert paths.raw_root().name == "raw"
    monkeypatch.setenv("AUTOSEG_RAW", str(tmp_path))
    assert paths.raw_root() == tmp_path


def test_resolve_dataset_by_name_id_and_path(autoseg_env):
    raw = autoseg_env["raw"]
    (raw / "Dataset003_Liver").mkdir()
    assert paths.resolve_dataset("Liver") == "Dataset003_Liver"
    assert paths.resolve_dataset("3") == "Dataset003_Liver"
    assert paths.resolve_dataset("Dataset003_Liver") == "Dataset003_Liver"
    assert paths.resolve_dataset(str(raw / "Dataset003_Liver")) == "Dataset003_Liver"
    assert paths.resolve_dataset(None) == "Dataset003_Liver"  # the only one
    (raw / "Dataset004_Spleen").mkdir()
    with pytest.raises(AutosegError, match="several datasets"):
        paths.resolve_dataset(None)
    with pytest.raises(AutosegError, match="not found"):
        paths.resolve_dataset("Kidney")
    assert paths.new_dataset_name("Kidney") == "Dataset001_Kidney"
    assert paths.new_dataset_name("Liver") == "Dataset003_Liver"


@pytest.mark.parametrize("labels, extra, message", [
    ({"background": 0, "liver": 1, "ignore": 1}, {}, "'ignore' label must have the highest value"),
    ({"background": 0, "liver": 3, "ignore": 2}, {}, "'ignore' label must have the highest value"),
    ({"background": 0, "liver": [1, 2], "tumor": 2}, {}, "need 'regions_class_order'"),
    ({"background": 0, "liver": [1, 2], "tumor": 2}, {"regions_class_order": [1]}, "has 1 entries but there are 2 regions"),
    ({"background": 0, "liver": 1, "tumor": 1}, {}, "several names"),
    ({"liver": 1}, {}, "background as 0"),
])
def test_bad_label_definitions_are_one_line(tmp_path, labels, extra, message):
    import json
    from autoseg.datasets.layout import load_dataset_info
    from autoseg.errors import AutosegError
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1,
                                                       "file_ending": ".nii.gz", **extra}))
    with pytest.raises(AutosegError, match=message) as e:
        load_dataset_info(tmp_path)
    assert "\n" not in str(e.value) and str(tmp_path / "dataset.json") in str(e.value)
