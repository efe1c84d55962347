"""Faults around the trained model and prediction outputs: one clear line, nothing silent."""

import pickle
import threading
import zipfile

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.io.images import read_image
from autoseg.model.checkpoint import load_checkpoint
from autoseg.model.package import export_model

from test_predict import DATASET, _three_cases, make_model, tiny_config


@pytest.mark.parametrize("payload", [torch.zeros(3), [1, 2, 3], {"meta": {}}])
def test_checkpoint_of_the_wrong_kind_is_one_line(tmp_path, payload):
    p = tmp_path / "checkpoint_final.pth"
    torch.save(payload, p)
    with pytest.raises(AutosegError, match="not an autoseg checkpoint"):
        load_checkpoint(p)


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_pickled_checkpoint_is_refused_and_says_why(tmp_path, capsys):
    p = tmp_path / "checkpoint_final.pth"
    with open(p, "wb") as f:
        pickle.dump({"network": _Evil()}, f)
    with pytest.raises(AutosegError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert "pickled Python objects, which autoseg will not execute" in msg and "weights_only" not in msg
    assert "executed" not in capsys.readouterr().out


@pytest.fixture
def model_and_cases(autoseg_env, tmp_path):
    make_model(autoseg_env["res"], {"3d_fullres": tiny_config("3d_fullres", [2.5, 1.0, 1.0], [8, 8, 8])})
    _three_cases(tmp_path / "in")
    return autoseg_env["res"], tmp_path


def test_bit_flipped_model_zip_is_one_line(model_and_cases, capsys):
    _, tmp = model_and_cases
    z = export_model(DATASET, tmp / "m.zip")
    data = bytearray(z.read_bytes())
    info = zipfile.ZipFile(z).getinfo(f"{DATASET}/3d_fullres/fold_0/checkpoint_final.pth")
    data[info.header_offset + 200] ^= 0xFF  # inside the checkpoint's compressed bytes
    z.write_bytes(bytes(data))
    assert main(["predict", "--model", str(z), "-i", str(tmp / "in"), "-o", str(tmp / "o"), "--device", "cpu", "--no-tta"]) == 1
    err = capsys.readouterr().err
    assert "damaged model zip" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_two_exports_to_one_zip_do_not_collide(model_and_cases):
    _, tmp = model_and_cases
    errors = []

    def run():
        try:
            export_model(DATASET, tmp / "same.zip")
        except Exception as e:  # noqa: BLE001 - the test collects any failure
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and zipfile.ZipFile(tmp / "same.zip").testzip() is None
    assert not [p for p in tmp.iterdir() if p.name.startswith(".same.zip")]


def test_failed_case_reported_once_on_stderr(model_and_cases, capsys):
    _, tmp = model_and_cases
    (tmp / "in" / "broken_0000.nii.gz").write_bytes(b"not a nifti")
    assert main(["predict", "-i", str(tmp / "in"), "-o", str(tmp / "o"), "--device", "cpu", "--no-tta"]) == 1
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if "broken" in ln]
    assert len(lines) == 1 and not lines[0].startswith("error: broken:"), lines  # once, the file named once up front
    assert "failed 1 (broken; errors above)" in captured.out and "corrupt" not in captured.out


def test_killed_save_probabilities_run_completes_the_case(model_and_cases, capsys):
    """The mask exists but its probabilities do not (killed in between): the re-run predicts the case
    again, and an ensemble over such a folder reports the case instead of dropping it."""
    _, tmp = model_and_cases
    args = ["predict", "-i", str(tmp / "in"), "-o", str(tmp / "a"), "--device", "cpu", "--no-tta", "--save-probabilities"]
    assert main(args) == 0
    assert main(args[:4] + [str(tmp / "b")] + args[5:]) == 0
    for folder in ("a", "b"):
        (tmp / folder / "case_1_probabilities.npz").unlink()
    assert main(["ensemble", "-i", str(tmp / "a"), str(tmp / "b"), "-o", str(tmp / "e")]) == 1
    out = capsys.readouterr()
    assert "failed 1 (case_1" in out.out and "case_1_probabilities.npz" in out.err
    assert main(args) == 0
    assert "predicted 1, skipped 2" in capsys.readouterr().out
    assert (tmp / "a" / "case_1_probabilities.npz").is_file()
    seg, _ = read_image(tmp / "a" / "case_1.nii.gz", np.uint8)
    assert seg.size > 0
