"""Training end to end on a tiny dataset: checkpoints, weights_only, resume after kill -9, splits, 2d."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.io.json_io import load_json, save_json
from autoseg.trainers.loop import load_pretrained, poly_lr
from autoseg.datasets.splits import make_splits, parse_folds

from conftest import write_blob_dataset

FAST = ["--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0", "--no-validation"]


@pytest.fixture
def prepared(autoseg_env):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=4)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "2d", "-np", "1"]) == 0
    return autoseg_env


def test_parse_folds_and_splits():
    assert parse_folds(["0..4"]) == ["0", "1", "2", "3", "4"]
    assert parse_folds(["0", "2", "2"]) == ["0", "2"]
    assert parse_folds(["all"]) == ["all"]
    with pytest.raises(AutosegError):
        parse_folds(["x"])
    ids = [f"c{i}" for i in range(12)]
    s = make_splits(ids, 5, seed=1)
    assert len(s) == 5 and sorted(sum((f["val"] for f in s), [])) == sorted(ids)
    assert all(not set(f["train"]) & set(f["val"]) for f in s)
    assert s == make_splits(list(reversed(ids)), 5, seed=1)  # sorted ids, seeded


def test_poly_lr():
    assert poly_lr(0.01, 0, 10) == pytest.approx(0.01)
    assert poly_lr(0.01, 5, 10) == pytest.approx(0.01 * 0.5 ** 0.9)


def test_train_writes_checkpoints_loadable_with_weights_only(prepared, capsys):
    res = prepared["res"] / "Dataset003_Liver" / "3d_fullres"
    assert main(["train", "-f", "0", "--epochs", "2", *FAST, "--checkpoint-every", "1"]) == 0
    fold = res / "fold_0"
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"):
        ck = torch.load(fold / name, weights_only=True)
        assert "network" in ck and ck["meta"]["configuration"] == "3d_fullres"
    assert torch.load(fold / "checkpoint_final.pth", weights_only=True)["meta"]["epoch"] == 2
    assert (fold / "progress.png").stat().st_size > 1000
    lines = (fold / "training_log.txt").read_text().splitlines()
    assert len(lines) == 2 and "pseudo_dice" in lines[0]
    assert load_json(fold / "training.json")["optimizer"] == "sgd"
    assert (res / "plans.json").is_file()
    # user-edited splits are respected
    pre = prepared["pre"] / "Dataset003_Liver"
    splits = load_json(pre / "splits_final.json")
    splits[1] = {"train": ["case_000", "case_001"], "val": ["case_002", "case_003"]}
    save_json(splits, pre / "splits_final.json")
    assert main(["train", "-f", "1", "--epochs", "1", *FAST]) == 0
    assert "2 train / 2 val" in capsys.readouterr().out
    # pretrained: every tensor matches the same architecture
    net_fold1 = torch.load(res / "fold_1" / "checkpoint_final.pth", weights_only=True)["network"]
    from autoseg.networks.builder import build_network
    from autoseg.planners.plans import Plans
    plans = Plans.load(pre / "plans.json")
    net = build_network("unet", plans.configurations["3d_fullres"].topology, 1, 3)
    loaded, skipped = load_pretrained(net, str(fold / "checkpoint_final.pth"))
    assert skipped == [] and len(loaded) == len(net_fold1)
    net2 = build_network("unet", plans.configurations["3d_fullres"].topology, 1, 5)  # other class count: heads skipped
    loaded, skipped = load_pretrained(net2, str(fold / "checkpoint_final.pth"))
    assert skipped and all("seg" in k or "head" in k for k in skipped)


def test_train_2d_and_other_networks_and_losses(prepared):
    assert main(["train", "-c", "2d", "-f", "0", "--epochs", "1", *FAST]) == 0
    assert main(["train", "-f", "0", "--epochs", "1", "--network", "resenc", "--loss", "gdl_focal",
                 "--class-weights", "0", "1", "2", "--optimizer", "adam", "--restart", *FAST]) == 0
    assert (prepared["res"] / "Dataset003_Liver" / "2d" / "fold_0" / "checkpoint_final.pth").is_file()


def test_resume_after_kill(prepared, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "autoseg", "train", "-f", "0", "--epochs", "30", "--checkpoint-every", "1", *FAST]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    latest = prepared["res"] / "Dataset003_Liver" / "3d_fullres" / "fold_0" / "checkpoint_latest.pth"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.is_file() and torch.load(latest, weights_only=True)["meta"]["epoch"] >= 2):
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = torch.load(latest, weights_only=True)["meta"]["epoch"]
    assert 2 <= epoch < 30
    out = subprocess.run([*cmd[:6], "--epochs", str(epoch + 1), *cmd[8:]], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming fold 0 from epoch {epoch}" in out.stdout
    final = torch.load(latest.with_name("checkpoint_final.pth"), weights_only=True)
    assert final["meta"]["epoch"] == epoch + 1
    assert len(final["history"]["train_loss"]) == epoch + 1  # history continued, not restarted


def test_resuming_with_other_network_is_refused(prepared, capsys):
    assert main(["train", "-f", "0", "--epochs", "1", *FAST, "--checkpoint-every", "1"]) == 0
    assert main(["train", "-f", "0", "--epochs", "2", "--network", "vnet", *FAST]) == 1
    err = capsys.readouterr().err
    assert "network=unet" in err and "--restart" in err and "Traceback" not in err
