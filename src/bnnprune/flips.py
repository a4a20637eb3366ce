"""FlipTracker: how often each binary weight changes sign during training.

Two lines from user code::

    tracker = FlipTracker(model, window=(start_step, end_step)).attach(optimizer)
    ...                                             # train as usual: every optimizer.step() counts
    freqs = tracker.frequencies()                   # per-layer flip frequency tensors

(``tracker.step()`` right after ``optimizer.step()`` does the same by hand; ``detach()``
stops counting.)
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from bnnprune.nn import binary_layers

__all__ = ["FlipTracker"]


class FlipTracker:
    """Counts sign flips of every binary layer's latent weights after each optimizer step.

    A step ``s`` (1-based: the s-th call of :meth:`step`) counts toward the per-weight flip
    counts when ``window[0] <= s <= window[1]`` (``window[1] = None``: no end). The sign
    before the first step is taken when the tracker is attached, so, as in Larq's
    ``FlipRatio``, that first observation is not a step. Any optimizer works: the tracker only
    compares ``sign(w)`` before and after each step (sign(0) = +1, as in the forward pass).

    Also recorded for every step (inside the window or not): each layer's flip ratio, the
    fraction of its weights whose sign changed in that step, and its mean per epoch
    (:meth:`end_epoch` marks epoch boundaries).

    Memory: per tracked weight one int32 counter and one bool of the previous sign (5 bytes),
    plus one float per layer per step for the ratio history.
    """

    def __init__(self, model: nn.Module, window: tuple[int, int | None] = (1, None)) -> None:
        self.layers = binary_layers(model)
        if not self.layers:
            raise ValueError(
                "model has no binary layers to track (use bnnprune.nn.BinaryConv2d / BinaryLinear)"
            )
        self.set_window(*window)
        self.step_count = 0
        self.steps_in_window = 0
        self.prev = {n: self._neg(m) for n, m in self.layers.items()}
        self.counts = {n: torch.zeros_like(p, dtype=torch.int32) for n, p in self.prev.items()}
        self.numel = {n: p.numel() for n, p in self.prev.items()}
        self.ratios: list[list[float]] = []  # per step: one ratio per layer (layer order)
        self.epoch_ends: list[int] = []  # step_count at the end of each epoch
        # counts (and steps in the window) at the end of each epoch that had window steps:
        # the counts of the last k epochs of the interval are counts - epoch_counts[-k - 1]
        self.epoch_counts: list[dict[str, torch.Tensor]] = []
        self.epoch_window_steps: list[int] = []
        self._pending: list[torch.Tensor] = []  # per-step flip sums, not yet moved to host
        self._hook: RemovableHandle | None = None

    def attach(self, optimizer: torch.optim.Optimizer) -> FlipTracker:
        """Record every ``optimizer.step()`` through a post-step hook (returns ``self``)."""
        if self._hook is not None:
            raise ValueError("this tracker is attached to an optimizer already; detach() first")
        params = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not any(id(m.weight) in params for m in self.layers.values()):
            raise ValueError("the optimizer does not update any binary layer this tracker tracks")
        self._hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.step())
        return self

    def detach(self) -> None:
        """Remove the hook of :meth:`attach` (no-op when not attached); counts are kept."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @staticmethod
    def _neg(m: nn.Module) -> torch.Tensor:
        return m.weight.detach() < 0

    def set_window(self, start: int, end: int | None = None) -> None:
        """Count flips only in steps start..end (1-based, inclusive; end=None: open)."""
        if start < 1 or (end is not None and end < start):
            raise ValueError(f"invalid flip window ({start}, {end}): need 1 <= start <= end")
        self.window = (int(start), None if end is None else int(end))

    def in_window(self, step: int) -> bool:
        start, end = self.window
        return step >= start and (end is None or step <= end)

    @torch.no_grad()
    def step(self) -> None:
        """Record one optimizer step (call right after ``optimizer.step()``)."""
        self.step_count += 1
        counting = self.in_window(self.step_count)
        sums = []
        for n, m in self.layers.items():
            cur = self._neg(m)
            if cur.shape != self.prev[n].shape:
                raise ValueError(
                    f"layer {n!r} changed shape since the tracker was attached; "
                    "attach a new tracker"
                )
            changed = cur != self.prev[n]
            if counting:
                self.counts[n] += changed
            sums.append(changed.sum())
            self.prev[n] = cur
        if counting:
            self.steps_in_window += 1
        self._pending.append(torch.stack(sums))

    def _flush(self) -> None:
        if self._pending:
            sums = torch.stack(self._pending).cpu().double()
            numel = torch.tensor(list(self.numel.values()), dtype=torch.float64)
            self.ratios.extend((sums / numel).tolist())
            self._pending = []

    def last_ratios(self) -> dict[str, float]:
        """Per layer: the flip ratio of the latest step (moves it to the host)."""
        if self.step_count == 0:
            raise ValueError("no optimizer step recorded yet")
        self._flush()
        return dict(zip(self.layers, self.ratios[-1], strict=True))

    def end_epoch(self) -> None:
        self._flush()
        self.epoch_ends.append(self.step_count)
        if self.steps_in_window > 0:
            self.epoch_counts.append({n: c.cpu().clone() for n, c in self.counts.items()})
            self.epoch_window_steps.append(self.steps_in_window)

    def last_epochs_counts(self, k: int) -> tuple[dict[str, torch.Tensor], int]:
        """Flip counts and window steps of the last ``k`` epochs of the interval only."""
        n = len(self.epoch_counts)
        if not 1 <= k <= n:
            raise ValueError(f"the interval holds {n} finished epochs, asked for the last {k}")
        if k == n:
            return {name: c.clone() for name, c in self.epoch_counts[-1].items()}, \
                self.epoch_window_steps[-1]
        before, steps = self.epoch_counts[-k - 1], self.epoch_window_steps[-k - 1]
        return ({name: c - before[name] for name, c in self.epoch_counts[-1].items()},
                self.epoch_window_steps[-1] - steps)

    def ratio_history(self) -> dict[str, np.ndarray]:
        """Per layer: flip ratio of every recorded step, shape (steps,)."""
        self._flush()
        arr = np.asarray(self.ratios, dtype=np.float64).reshape(-1, len(self.layers))
        return {n: arr[:, i] for i, n in enumerate(self.layers)}

    def epoch_ratios(self) -> dict[str, np.ndarray]:
        """Per layer: mean flip ratio of each finished epoch."""
        hist = self.ratio_history()
        bounds = [0, *self.epoch_ends]
        return {
            n: np.array([h[a:b].mean() if b > a else 0.0 for a, b in zip(bounds, bounds[1:])])
            for n, h in hist.items()
        }

    def frequencies(self) -> dict[str, torch.Tensor]:
        """Per layer: flip count / steps in the window (the weight flipping frequency)."""
        if self.steps_in_window == 0:
            raise ValueError("no optimizer step fell inside the flip window yet")
        return {n: c.double().cpu() / self.steps_in_window for n, c in self.counts.items()}

    def state_dict(self) -> dict:
        self._flush()
        return {
            "window": list(self.window),
            "step_count": self.step_count,
            "steps_in_window": self.steps_in_window,
            "prev": {n: t.cpu().clone() for n, t in self.prev.items()},
            "counts": {n: t.cpu().clone() for n, t in self.counts.items()},
            "ratios": torch.tensor(self.ratios, dtype=torch.float64).reshape(-1, len(self.layers)),
            "epoch_ends": list(self.epoch_ends),
            "epoch_counts": [{n: t.clone() for n, t in d.items()} for d in self.epoch_counts],
            "epoch_window_steps": list(self.epoch_window_steps),
        }

    @classmethod
    def from_state(cls, model: nn.Module, state: dict) -> FlipTracker:
        """The tracker of ``model`` as saved in ``state`` (a checkpoint's ``"flips"``);
        ValueError when the flip data belongs to another model."""
        tracker = cls(model)
        tracker.load_state_dict(state)
        return tracker

    def load_state_dict(self, state: dict) -> None:
        names = list(self.layers)
        if sorted(state["counts"]) != sorted(names):
            raise ValueError("flip data belongs to a model with other binary layers")
        for n in names:
            if tuple(state["counts"][n].shape) != tuple(self.counts[n].shape):
                raise ValueError(f"flip data for layer {n!r} has another shape than the model's")
        dev = {n: self.counts[n].device for n in names}
        self.set_window(*state["window"])
        self.step_count = int(state["step_count"])
        self.steps_in_window = int(state["steps_in_window"])
        self.prev = {n: state["prev"][n].to(dev[n]).bool() for n in names}
        self.counts = {n: state["counts"][n].to(dev[n]).int() for n in names}
        self.ratios = [list(map(float, r)) for r in state["ratios"].tolist()]
        self._pending = []
        self.epoch_ends = [int(x) for x in state["epoch_ends"]]
        self.epoch_counts = [{n: d[n].int() for n in names}
                             for d in state.get("epoch_counts") or []]
        self.epoch_window_steps = [int(x) for x in state.get("epoch_window_steps") or []]

    def export_npz(self, path: str | Path | BinaryIO) -> None:
        """Write counts, flip ratios and window to ``.npz`` (one array per layer)."""
        hist = self.ratio_history()
        arrays: dict[str, np.ndarray] = {
            "window": np.array([self.window[0], -1 if self.window[1] is None else self.window[1]]),
            "steps_in_window": np.array(self.steps_in_window),
            "epoch_ends": np.array(self.epoch_ends, dtype=np.int64),
        }
        for n in self.layers:
            arrays[f"counts/{n}"] = self.counts[n].cpu().numpy()
            arrays[f"ratios/{n}"] = hist[n]
        np.savez_compressed(path, **arrays)
