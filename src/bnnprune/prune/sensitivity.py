"""Sensitivity of a trained BNN, read from its flip counts (the paper's steps 1-2).

- weight flipping frequency (WFF): flip count / steps in the pruning interval;
- insensitive fraction ``p_l`` of a binary layer: share of its weights whose flip count
  exceeds ``threshold``;
- channel score: mean WFF of an output channel's filter (higher = less important).

Default threshold 0, i.e. "flipped at least once in the interval". Near convergence only a
few percent of binary weights flip at all (a small BNN on Fashion-MNIST: about 6% over the last two
epochs, 5-8% per layer with threshold 0 and 4-6% with threshold 2), so a higher threshold
leaves the paper policy almost nothing to prune per round and makes ``p_l`` depend on the
interval length; 0 is the one value that means the same for any interval. Raise it when the
interval is long or the learning rate in it is high.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bnnprune.flips import FlipTracker
from bnnprune.nn import binary_layers

__all__ = [
    "DEFAULT_THRESHOLD",
    "RECORD_HINT",
    "FlipTable",
    "Sensitivity",
    "check_flip_data",
    "compute_sensitivity",
    "flip_frequencies",
    "flip_table",
]

DEFAULT_THRESHOLD = 0

RECORD_HINT = (
    "record flips by training with flip tracking (e.g. `bnnprune train --track-last K`, "
    "or bnnprune.flips.FlipTracker in your own loop)"
)


@dataclass(frozen=True)
class Sensitivity:
    """Per-layer insensitive fractions and per-channel scores of one pruning interval."""

    p: dict[str, float]  # binary layer -> fraction of weights with count > threshold
    channel_scores: dict[str, torch.Tensor]  # binary layer -> mean WFF per output channel
    insensitive: dict[str, int]  # binary layer -> number of insensitive weights
    numel: dict[str, int]  # binary layer -> number of weights
    threshold: int
    steps: int
    counts: dict[str, torch.Tensor] | None = None  # binary layer -> per-weight flip counts

    @property
    def max_p(self) -> float:
        """The largest insensitive fraction (the paper iterates until it stops decreasing)."""
        return max(self.p.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-layer p, counts, threshold, steps)."""
        return {
            "threshold": self.threshold,
            "steps": self.steps,
            "layers": {
                n: {"p": self.p[n], "insensitive": self.insensitive[n], "weights": self.numel[n]}
                for n in self.p
            },
        }


def _unpack(
    flips: FlipTracker | Mapping[str, Any], steps: int | None
) -> tuple[dict[str, torch.Tensor], int]:
    if isinstance(flips, FlipTracker):
        return dict(flips.counts), flips.steps_in_window if steps is None else steps
    if not isinstance(flips, Mapping) or not flips:
        raise ValueError(f"no flip data; {RECORD_HINT}")
    if "counts" in flips:
        counts = flips["counts"]
        if steps is None:
            steps = flips.get("steps_in_window")
        if not isinstance(counts, Mapping) or not counts:
            raise ValueError(f"no flip data; {RECORD_HINT}")
        flips = counts
    if steps is None:
        raise ValueError("steps is required when flip counts are given as a plain mapping")
    return dict(flips), int(steps)


def check_flip_data(counts: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Raise ValueError unless ``counts`` covers exactly the model's binary layers and shapes."""
    layers = binary_layers(model)
    missing = sorted(set(layers) - set(counts))
    extra = sorted(set(counts) - set(layers))
    if missing or extra:
        what = f"missing {missing}" if missing else f"unknown layers {extra}"
        raise ValueError(
            f"flip data does not match the model's binary layers ({what}); "
            f"{RECORD_HINT} for this model"
        )
    for n, m in layers.items():
        if tuple(counts[n].shape) != tuple(m.weight.shape):
            raise ValueError(
                f"flip data for layer {n!r} has shape {tuple(counts[n].shape)}, the model's "
                f"weight {tuple(m.weight.shape)}; {RECORD_HINT} for this model"
            )


def flip_frequencies(counts: Mapping[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
    """Per-weight flip frequency (count / steps) of every layer, float64 on the CPU."""
    if steps <= 0:
        raise ValueError(f"no optimizer step fell inside the flip window; {RECORD_HINT}")
    return {n: c.detach().cpu().double() / steps for n, c in counts.items()}


def compute_sensitivity(
    flips: FlipTracker | Mapping[str, Any],
    model: nn.Module | None = None,
    *,
    steps: int | None = None,
    threshold: int = DEFAULT_THRESHOLD,
) -> Sensitivity:
    """Sensitivity from a FlipTracker, its ``state_dict()``, or a name -> counts mapping.

    ``steps`` (the steps in the pruning interval) is read from the tracker or its state;
    give it for a plain mapping. With ``model``, the counts must match its binary layers.
    """
    counts, steps = _unpack(flips, steps)
    if threshold < 0 or int(threshold) != threshold:
        raise ValueError(f"threshold must be a whole number of flips >= 0, got {threshold}")
    if model is not None:
        check_flip_data(counts, model)
    freqs = flip_frequencies(counts, steps)
    p, scores, insensitive, numel, kept = {}, {}, {}, {}, {}
    for n, c in counts.items():
        c = kept[n] = c.detach().cpu()
        if c.numel() == 0 or c.dim() < 2:
            raise ValueError(f"flip counts of layer {n!r} must be shaped like its weight")
        if bool((c < 0).any()) or int(c.max()) > steps:
            raise ValueError(
                f"flip counts of layer {n!r} lie outside [0, {steps}] (steps in the window)"
            )
        numel[n] = int(c.numel())
        insensitive[n] = int((c > threshold).sum())
        p[n] = insensitive[n] / numel[n]
        scores[n] = freqs[n].flatten(1).mean(dim=1)
    return Sensitivity(p, scores, insensitive, numel, int(threshold), steps, kept)


@dataclass(frozen=True)
class FlipTable:
    """Flip statistics of every binary layer over a tracker's window, with its ``p_l``: what
    ``bnnprune flips`` prints and writes to flips.json."""

    window: tuple[int, int | None]
    steps: int  # optimizer steps recorded inside the window
    threshold: int
    layers: list[dict[str, Any]]  # per layer: weights, channels, flipped, p, mean_wff, ratios

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (flips.json)."""
        return {"window": list(self.window), "steps": self.steps, "threshold": self.threshold,
                "layers": self.layers}


def flip_table(tracker: FlipTracker, model: nn.Module,
               threshold: int = DEFAULT_THRESHOLD) -> FlipTable:
    """Per binary layer: weights, output channels, share of weights that flipped, ``p_l`` at
    ``threshold``, mean WFF and the mean flip ratio of every epoch."""
    sens = compute_sensitivity(tracker, model, threshold=threshold)
    epoch = tracker.epoch_ratios()
    rows = []
    for name, counts in tracker.counts.items():
        c = counts.float()
        rows.append({
            "layer": name,
            "weights": c.numel(),
            "channels": int(c.shape[0]),
            "flipped": float((c > 0).float().mean()),
            "p": sens.p[name],
            "mean_wff": float(c.mean() / max(tracker.steps_in_window, 1)),
            "epoch_flip_ratio": epoch[name].tolist(),
        })
    return FlipTable(tuple(tracker.window), tracker.steps_in_window, threshold, rows)
