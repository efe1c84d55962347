"""Training interrupted at awkward moments: no epoch trained twice, no log line duplicated."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from autoseg.cli import main
from autoseg.trainers.progress import ProgressLog

from conftest import write_blob_dataset


def test_resumed_log_is_rewritten_from_the_checkpoint_history(tmp_path):
    """A kill -9 after epoch 3's log line but before its checkpoint: the resume (from epoch 2) must
    not keep the third line, or epoch 2 would be listed twice once it is trained again."""
    log = ProgressLog(tmp_path)
    for e in range(3):
        log.log_epoch(e, train_loss=1.0 - e / 10, val_loss=1.0, pseudo_dice=0.5, ema_pseudo_dice=0.5, lr=0.01,
                      epoch_time_s=1.0, pseudo_dice_per_class=[0.5, None])
    history = {k: v[:2] for k, v in log.history.items()}  # what checkpoint_latest (epoch 2) holds
    resumed = ProgressLog(tmp_path, history)
    resumed.rewrite_log()
    lines = (tmp_path / "training_log.txt").read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["epoch 0", "epoch 1"]


@pytest.fixture
def prepared(autoseg_env):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=4)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "-np", "1"]) == 0
    return autoseg_env


def test_sigterm_saves_the_completed_epochs(prepared):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "autoseg", "train", "-f", "0", "--epochs", "50", "--iters-per-epoch", "2", "--val-iters", "1",
           "-np", "0", "--no-validation", "--checkpoint-every", "1000"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    fold = prepared["res"] / "Dataset003_Liver" / "3d_fullres" / "fold_0"
    log = fold / "training_log.txt"
    deadline = time.time() + 180
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    ck = torch.load(fold / "checkpoint_latest.pth", weights_only=True)
    assert ck["meta"]["epoch"] == len(ck["history"]["train_loss"]) >= 2  # completed epochs, as many as logged
