"""The training run's settings, stored as ``training.json`` in each fold folder."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainingConfig:
    """Everything a fold was trained with (defaults follow nnU-Net).

    ``num_input_channels`` includes the cascade's one-hot channels of the previous stage;
    ``num_classes`` is the plan's (``Plans.num_classes``: classes, or regions), ``ignore_class`` and
    ``region_classes`` its label definition's (:mod:`autoseg.datasets.labels`). Patch size and
    topology are not repeated here: they are the plan's, copied beside the folds.
    """

    dataset: str
    configuration: str
    fold: str
    num_input_channels: int
    num_classes: int
    network: str = "unet"
    loss: str = "dice_ce"
    class_weights: list[float] | None = None
    optimizer: str = "sgd"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    time_budget_s: float | None = None             # --time-budget, per fold (training only, not fold validation)
    budget_sets: list[str] = field(default_factory=list)  # what the budget chose: epochs, iters_per_epoch, val_iters
    measured_train_iter_s: float | None = None     # the warm-up's measurements behind the budget's choice
    measured_val_iter_s: float | None = None
    batch_size: int = 2
    oversample_foreground: float = 0.33
    rare_class_bias: float = 0.0   # share of foreground-forced samples centred on the rarest class (tumour)
    seed: int = 12345
    num_workers: int = 2
    device: str = "cpu"
    amp: str = "auto"
    deep_supervision: bool = True
    checkpoint_every: int = 50
    pretrained: str | None = None
    previous_stage: str | None = None
    ignore_class: int | None = None                # stored class of the "ignore" label: in no loss term
    region_classes: list[list[int]] | None = None  # region-based: each output's classes (sigmoid per region)
