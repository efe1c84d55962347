"""Training within a time budget: the arithmetic on hand-worked numbers, and real tiny runs."""

import argparse

import pytest
import torch

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.io.json_io import load_json
from autoseg.model.checkpoint import save_checkpoint
from autoseg.model.training_config import TrainingConfig
from autoseg.planners.plans import Plans
from autoseg.trainers import budget as B
from autoseg.trainers.commands import budget_settings
from autoseg.trainers.loop import build_state, resume

from conftest import write_blob_dataset

FAST = ["--num-workers", "0", "--no-validation"]


def test_parse_duration():
    assert B.parse_duration("90s") == 90
    assert B.parse_duration("30m") == 1800
    assert B.parse_duration("2h") == 7200
    assert B.parse_duration("1h30m") == 5400
    assert B.parse_duration("600") == 600
    for bad in ("", "abc", "30x", "0s", "m"):
        with pytest.raises(AutosegError):
            B.parse_duration(bad)


def test_epoch_arithmetic_by_hand():
    # 1.0 s per training, 0.5 s per validation iteration, 50 + 10 iterations, 0.5 s overhead -> 55.5 s per epoch
    cost = B.EpochCost(1.0, 0.5, 0.5)
    assert cost.epoch_s(50, 10) == pytest.approx(55.5)
    assert B.epochs_that_fit(600 - 40, 55.5) == 10          # 560 / 55.5 = 10.09
    assert B.epochs_that_fit(10, 55.5) == 1                 # a budget always trains one epoch
    assert B.default_val_iters(250) == 50 and B.default_val_iters(20) == 4 and B.default_val_iters(2) == 1
    assert B.budget_iters_per_epoch(1800, 1.0) == 72        # 1800 its / 25 epochs
    assert B.budget_iters_per_epoch(60, 1.0) == 10 and B.budget_iters_per_epoch(1e6, 0.1) == 250


def test_replan_corrects_only_when_off():
    # 10 epochs planned, 2 done, 8 left at 50 s = 400 s projected
    assert B.replan(2, 10, 410, 50) == 10       # within 5 %: keep
    assert B.replan(2, 10, 300, 50) == 8        # slower machine: 300 / 50 = 6 more
    assert B.replan(2, 10, 520, 50) == 12       # faster: 10 more fit
    assert B.replan(2, 10, -5, 50) == 2         # budget spent: stop after what is done
    assert B.replan(9, 10, 1000, 50) == 10      # the last epoch's plan stands (LR has decayed)


def _args(**kw):
    base = dict(time_budget=None, epochs=None, iters_per_epoch=None, val_iters=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_epochs_win_over_the_budget():
    s = budget_settings(_args(time_budget="60s", epochs=3))
    assert s["epochs"] == 3 and s["budget_sets"] == [] and s["time_budget_s"] == 60
    s = budget_settings(_args(time_budget="60s", iters_per_epoch=7))
    assert s["budget_sets"] == ["epochs", "val_iters"] and s["iters_per_epoch"] == 7
    s = budget_settings(_args())
    assert s == dict(epochs=1000, iters_per_epoch=250, val_iters=50, time_budget_s=None, budget_sets=[])


@pytest.fixture
def prepared(autoseg_env):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=4)
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "-np", "1"]) == 0
    return autoseg_env


def test_time_budget_run_plans_and_records(prepared, capsys):
    assert main(["train", "-f", "0", "--time-budget", "60s", *FAST]) == 0
    fold = prepared["res"] / "Dataset003_Liver" / "3d_fullres" / "fold_0"
    tj = load_json(fold / "training.json")
    assert tj["time_budget_s"] == 60 and tj["budget_sets"] == ["epochs", "iters_per_epoch", "val_iters"]
    assert tj["measured_train_iter_s"] > 0 and tj["measured_val_iter_s"] > 0
    assert tj["val_iters"] == B.default_val_iters(tj["iters_per_epoch"])
    final = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert final["meta"]["epoch"] == tj["epochs"] >= 1
    assert len(final["history"]["train_loss"]) == tj["epochs"]
    assert final["meta"]["elapsed_s"] > 0
    out = capsys.readouterr().out
    assert "time budget 60 s" in out and f"trained {tj['epochs']} epochs" in out


def test_resume_keeps_the_remaining_time_and_plan(prepared):
    plans = Plans.load(prepared["pre"] / "Dataset003_Liver" / "plans.json")
    config = plans.configurations["3d_fullres"]
    fold = prepared["res"] / "fold_x"
    cfg = TrainingConfig(dataset="D", configuration="3d_fullres", fold="0", num_input_channels=1,
                         num_classes=plans.num_classes, time_budget_s=600.0, budget_sets=["epochs", "iters_per_epoch", "val_iters"],
                         epochs=1000, iters_per_epoch=250, val_iters=50)
    state = build_state(cfg, config, fold)
    meta = {"epoch": 4, "planned_epochs": 17, "elapsed_s": 250.0, "iters_per_epoch": 12, "val_iters": 2, "best_ema": 0.5}
    save_checkpoint(fold / "checkpoint_latest.pth", state.network.state_dict(), meta, state.optimizer.state_dict())
    resume(state, restart=False)
    assert state.start_epoch == 4 and state.elapsed_before_s == 250.0
    assert (cfg.epochs, cfg.iters_per_epoch, cfg.val_iters) == (17, 12, 2)  # the original plan, not a new budget
