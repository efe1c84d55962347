"""``autoseg demo``'s data step: kept when the options match, made anew (with its derived folders) when not."""

from pathlib import Path

from autoseg.datasets.layout import list_cases, load_dataset_info
from autoseg.datasets.synthetic import stored_params
from autoseg.demo import DATASET, prepare_data


def _train_ids(raw: Path) -> list[str]:
    return [c.case_id for c in list_cases(raw, load_dataset_info(raw))]


def test_demo_data_is_kept_for_the_same_options_and_remade_for_others(tmp_path: Path):
    raw = tmp_path / "raw" / DATASET
    assert prepare_data(tmp_path, 3, 1, "tiny", 0) == "generated"
    assert stored_params(raw) == {"n_train": 3, "n_test": 1, "seed": 0, "size": "tiny", "shape_zyx": None}
    image = raw / "imagesTr" / "liver_000_0000.nii.gz"
    stamp = image.stat().st_mtime_ns
    assert prepare_data(tmp_path, 3, 1, "tiny", 0) == "kept"
    assert image.stat().st_mtime_ns == stamp

    stale = [tmp_path / "preprocessed" / DATASET / "x.npy", tmp_path / "results" / DATASET / "fold_0" / "c.pth",
             tmp_path / "predictions" / "liver_test_000.nii.gz", tmp_path / "summary.json"]
    for f in stale:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("old")
    before = (raw / "imagesTr" / "liver_001_0000.nii.gz").read_bytes()
    assert prepare_data(tmp_path, 2, 1, "tiny", 1) == "regenerated"  # fewer cases, another seed
    assert _train_ids(raw) == ["liver_000", "liver_001"]  # no leftover liver_002
    assert (raw / "imagesTr" / "liver_001_0000.nii.gz").read_bytes() != before
    assert not any(f.exists() for f in stale)
    assert stored_params(raw)["seed"] == 1


def test_demo_data_without_stored_options_is_remade(tmp_path: Path):
    raw = tmp_path / "raw" / DATASET
    prepare_data(tmp_path, 2, 0, "tiny", 0)
    (raw / "synthetic.json").unlink()  # a folder made by an older autoseg
    assert prepare_data(tmp_path, 2, 0, "tiny", 0) == "regenerated"
    assert stored_params(raw)["n_train"] == 2
