"""Per-epoch log: a class absent from every validation patch (pseudo-Dice None) is logged as nan, not a crash."""

import math

from autoseg.trainers.progress import ProgressLog


def test_log_epoch_with_a_class_absent_from_validation(tmp_path):
    log = ProgressLog(tmp_path)
    line = log.log_epoch(0, train_loss=0.9, val_loss=0.8, pseudo_dice=0.5, ema_pseudo_dice=0.5, lr=1e-2,
                         epoch_time_s=3.25, pseudo_dice_per_class=[0.5, None])
    assert "pseudo_dice [0.5, nan]" in line and line.endswith("3.2s")
    assert (tmp_path / "training_log.txt").read_text().strip() == line
    assert log.history["pseudo_dice_per_class"] == [[0.5, None]] and math.isclose(log.ema, 0.5)
    log.plot()
    assert (tmp_path / "progress.png").stat().st_size > 0
