"""Flip tracking for Lightning: a Callback (``pip install bnnprune[lightning]``).

::

    cb = FlipTrackingCallback(last_epochs=2, path="flips.pt", submodule="net")
    Trainer(max_epochs=10, callbacks=[cb]).fit(lit_module)
    sens = compute_sensitivity(cb.tracker, lit_module.net)   # or torch.load("flips.pt")

The callback attaches a :class:`~bnnprune.flips.FlipTracker` (and, by default, latent-weight
clipping) to the optimizer through post-step hooks, counts flips over the last ``last_epochs``
epochs, stores the flip data in every Lightning checkpoint (and restores it on resume) and
writes it to ``path`` when training ends.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnprune.atomic import atomic_write_bytes
from bnnprune.flips import FlipTracker
from bnnprune.nn import ClippingHook, attach_clipping, binary_layers

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError:
        raise ImportError(
            "bnnprune.integrations.lightning needs Lightning: pip install 'bnnprune[lightning]'"
        ) from None

__all__ = ["CHECKPOINT_KEY", "FlipTrackingCallback"]

CHECKPOINT_KEY = "bnnprune_flips"
_NOT_YET = 2**62  # window start before the tracked epochs begin (set at their first epoch)


class FlipTrackingCallback(pl.Callback):
    """Count binary weight flips over the last ``last_epochs`` epochs of ``trainer.fit``.

    - ``path``: write the flip data when training ends (``.npz``: :meth:`FlipTracker.export_npz`;
      otherwise ``torch.save`` of :meth:`FlipTracker.state_dict`, which
      :func:`bnnprune.prune.compute_sensitivity` reads). Only the global-zero rank writes.
    - ``submodule``: track ``pl_module.get_submodule(submodule)`` (e.g. ``"net"``), so layer
      names match the bare network you prune later; default: the LightningModule itself.
    - ``clip``: also clip latent weights after every optimizer step (``attach_clipping``).
    """

    def __init__(
        self,
        last_epochs: int = 1,
        path: str | Path | None = None,
        submodule: str | None = None,
        clip: bool = True,
    ) -> None:
        if last_epochs < 1:
            raise ValueError(f"last_epochs must be >= 1, got {last_epochs}")
        self.last_epochs = int(last_epochs)
        self.path = Path(path) if path is not None else None
        self.submodule = submodule
        self.clip = clip
        self.tracker: FlipTracker | None = None
        self._clipping: ClippingHook | None = None
        self._restored: dict[str, Any] | None = None

    def _tracked(self, pl_module: nn.Module) -> nn.Module:
        return pl_module.get_submodule(self.submodule) if self.submodule else pl_module

    def _first_epoch(self, trainer: pl.Trainer) -> int:
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            raise ValueError(
                "FlipTrackingCallback needs Trainer(max_epochs=N) to find the last epochs"
            )
        return max(trainer.max_epochs - self.last_epochs, 0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._tracked(pl_module)
        latent = {id(m.weight) for m in binary_layers(model).values()}
        opts = [o for o in trainer.optimizers
                if any(id(p) in latent for g in o.param_groups for p in g["params"])]  # fmt: skip
        if len(opts) != 1:
            raise ValueError(
                f"FlipTrackingCallback needs exactly one optimizer updating the binary layers, "
                f"found {len(opts)}"
            )
        self._first_epoch(trainer)
        self.tracker = FlipTracker(model, window=(_NOT_YET, None))
        if self._restored is not None:
            self.tracker.load_state_dict(self._restored)
            self._restored = None
        self.tracker.attach(opts[0])
        if self.clip:
            self._clipping = attach_clipping(model, opts[0])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t = self.tracker
        if t is not None and trainer.current_epoch == self._first_epoch(trainer):
            t.set_window(t.step_count + 1, None)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.tracker is not None:
            self.tracker.end_epoch()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.tracker is None:
            return
        self.tracker.detach()
        if self._clipping is not None:
            self._clipping.detach()
            self._clipping = None
        if self.path is not None and trainer.is_global_zero:
            self.save(self.path)

    def save(self, path: str | Path) -> None:
        """Write the flip data to ``path`` atomically (``.npz`` or a torch file)."""
        if self.tracker is None:
            raise ValueError("no flip data yet: the callback has not seen training start")
        buf = io.BytesIO()
        if Path(path).suffix == ".npz":
            self.tracker.export_npz(buf)
        else:
            torch.save(self.tracker.state_dict(), buf)
        atomic_write_bytes(Path(path), buf.getvalue())

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.tracker is not None:
            checkpoint[CHECKPOINT_KEY] = self.tracker.state_dict()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._restored = checkpoint.get(CHECKPOINT_KEY)
