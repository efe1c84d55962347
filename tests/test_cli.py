"""The command line: discoverable help, one-line errors, synthetic/convert wiring."""

import subprocess
import sys

import pytest

from autoseg.cli import COMMANDS, main


def test_help_lists_every_command_with_example(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name, *_ in COMMANDS:
        assert name in out
    assert "e.g. autoseg train" in out


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_each_command_help_has_example(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"autoseg {name}" in out


def test_synthetic_command_writes_raw_layout(autoseg_env):
    assert main(["synthetic", "-d", "Liver", "-n", "2", "--num-test", "1", "--size", "tiny", "--seed", "3"]) == 0
    ds = autoseg_env["raw"] / "Dataset001_Liver"
    assert len(list((ds / "imagesTr").glob("*_0000.nii.gz"))) == 2
    assert len(list((ds / "labelsTs").glob("*.nii.gz"))) == 1


def test_user_errors_are_one_line_without_traceback(autoseg_env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "autoseg", "convert", "png", str(tmp_path / "nowhere"), "-d", "X"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--spacing" in r.stderr
    r = subprocess.run([sys.executable, "-m", "autoseg", "train", "-d", "Nope"], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "Nope" in r.stderr
