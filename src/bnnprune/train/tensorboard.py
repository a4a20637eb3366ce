"""TensorBoard logging of a training run (optional extra: ``pip install bnnprune[tensorboard]``).

Tags, all under the global optimizer step unless noted:

- ``train/loss``, ``train/accuracy``, ``train/lr``: every step (the step's batch);
- ``flip_ratio/<layer>``: every step, the fraction of the layer's weights that changed sign;
- ``test/loss``, ``test/accuracy``: every epoch (step = epoch);
- ``flip_counts/<layer>``: histogram, every epoch (step = epoch), of the per-weight flip
  counts in the flip window so far (logged once the window has begun).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnnprune.flips import FlipTracker

__all__ = ["TensorBoardLog"]


class TensorBoardLog:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing the tags above to ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "TensorBoard logging needs the tensorboard package: "
                "pip install 'bnnprune[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def step(
        self, step: int, loss: float, accuracy: float, lr: float, tracker: FlipTracker | None
    ) -> None:
        w = self.writer
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/accuracy", accuracy, step)
        w.add_scalar("train/lr", lr, step)
        if tracker is not None:
            for layer, ratio in tracker.last_ratios().items():
                w.add_scalar(f"flip_ratio/{layer}", ratio, step)

    def epoch(self, epoch: int, rec: dict[str, Any], tracker: FlipTracker | None) -> None:
        w = self.writer
        w.add_scalar("test/loss", rec["test_loss"], epoch)
        w.add_scalar("test/accuracy", rec["test_acc"], epoch)
        if tracker is not None and tracker.steps_in_window > 0:
            for layer, counts in tracker.counts.items():
                w.add_histogram(f"flip_counts/{layer}", counts.flatten().cpu(), epoch)
        w.flush()

    def close(self) -> None:
        self.writer.close()
