"""Per-epoch training log: ``training_log.txt`` (one line per epoch) and ``progress.png``."""

from __future__ import annotations

import math
from pathlib import Path

from autoseg.io.json_io import atomic_write_bytes

KEYS = ("train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time_s")


class ProgressLog:
    """Holds the history (a dict of lists, stored in checkpoints) and renders it."""

    def __init__(self, folder: Path, history: dict | None = None):
        self.folder = Path(folder)
        self.history: dict[str, list] = {k: list((history or {}).get(k, [])) for k in KEYS + ("pseudo_dice_per_class",)}

    def log_epoch(self, epoch: int, **values) -> str:
        for k in KEYS + ("pseudo_dice_per_class",):
            self.history[k].append(values.get(k))
        pc = values.get("pseudo_dice_per_class") or []
        line = (f"epoch {epoch}: train_loss {values['train_loss']:.4f}  val_loss {values['val_loss']:.4f}  "
                f"pseudo_dice {[round(d, 4) if d is not None else math.nan for d in pc]}  ema {values['ema_pseudo_dice']:.4f}  "
                f"lr {values['lr']:.2e}  {values['epoch_time_s']:.1f}s")
        with open(self.folder / "training_log.txt", "a") as f:
            f.write(line + "\n")
        return line

    def rewrite_log(self) -> None:
        """Rewrite ``training_log.txt`` from the history: after a resume, lines of epochs that the
        checkpoint does not hold (trained after it was written) are gone, so none appears twice."""
        history, self.history = self.history, {k: [] for k in self.history}
        (self.folder / "training_log.txt").unlink(missing_ok=True)
        for epoch in range(len(history["train_loss"])):
            self.log_epoch(epoch, **{k: v[epoch] if epoch < len(v) else None for k, v in history.items()})

    @property
    def ema(self) -> float:
        e = self.history["ema_pseudo_dice"]
        return e[-1] if e else float("nan")

    def plot(self) -> None:
        """Write ``progress.png``: losses, pseudo-Dice (and EMA), learning rate, epoch time."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        h = self.history
        n = len(h["train_loss"])
        if n == 0:
            return
        ep = list(range(n))
        fig, ax = plt.subplots(3, 1, figsize=(10, 11))
        ax[0].plot(ep, h["train_loss"], "b-", label="train loss")
        ax[0].plot(ep, h["val_loss"], "r-", label="val loss")
        ax0b = ax[0].twinx()
        ax0b.plot(ep, [_nan(v) for v in h["pseudo_dice"]], "g:", label="pseudo Dice")
        ax0b.plot(ep, [_nan(v) for v in h["ema_pseudo_dice"]], "g-", label="pseudo Dice (EMA)")
        ax0b.set_ylabel("pseudo Dice")
        ax[0].set_ylabel("loss")
        ax[0].legend(loc="upper left")
        ax0b.legend(loc="upper right")
        ax[1].plot(ep, h["lr"], "k-")
        ax[1].set_ylabel("learning rate")
        ax[2].plot(ep, h["epoch_time_s"], "m-")
        ax[2].set_ylabel("epoch time (s)")
        ax[2].set_xlabel("epoch")
        fig.tight_layout()
        tmp = self.folder / ".progress.tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        atomic_write_bytes(self.folder / "progress.png", tmp.read_bytes())
        tmp.unlink()


def _nan(v):
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else v
