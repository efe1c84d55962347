"""Run by tests/test_ddp.py under torchrun: trains a few iterations and dumps this rank's weights."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from autoseg.planners.plans import Plans
from autoseg.preprocessing.case_store import list_preprocessed_cases
from autoseg.trainers.loop import train_fold
from autoseg.model.training_config import TrainingConfig


def main(pre: str, out: str) -> None:
    pre_dir = Path(pre)
    plans = Plans.load(pre_dir / "plans.json")
    config = plans.configurations["3d_fullres"]
    folder = pre_dir / config.data_identifier
    cases = list_preprocessed_cases(folder)
    cfg = TrainingConfig(dataset="x", configuration="3d_fullres", fold="0", num_input_channels=1, num_classes=plans.num_classes, epochs=1, iters_per_epoch=3, val_iters=1,
                         batch_size=2, num_workers=0, device="cpu")
    network = train_fold(cfg, config, folder, Path(out), cases[:3], cases[3:])
    torch.save(network.state_dict(), Path(out) / f"rank{dist.get_rank()}_weights.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
