"""Plots (matplotlib): flip ratios over training, flip-count histograms, accuracy vs BOPs
and vs engine latency.

The library never chooses matplotlib's backend (a notebook keeps its own); the CLI picks
Agg before it draws anything.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from bnnprune.atomic import atomic_write_bytes
from bnnprune.flips import FlipTracker

__all__ = [
    "plot_accuracy_vs_bops",
    "plot_accuracy_vs_latency",
    "plot_channels",
    "plot_flip_histograms",
    "plot_flip_ratios",
    "save_figure",
    "write_flip_plots",
]


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Render to PNG in memory and write atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(x) < k:
        return x
    return np.convolve(x, np.ones(k) / k, mode="valid")


def plot_flip_ratios(
    history: dict[str, np.ndarray], epoch_ends: list[int], window: tuple[int, int], path: str | Path
) -> Path:
    """Per-layer flip ratio per step (moving average), epochs and pruning interval marked."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = max((len(h) for h in history.values()), default=0)
    k = max(1, steps // 200)
    for name, h in history.items():
        if len(h):
            ys = _smooth(h, k)
            ax.plot(np.arange(len(ys)) + k, ys, label=name, lw=1)
    for e in epoch_ends:
        ax.axvline(e, color="0.85", lw=0.8, zorder=0)
    ax.axvspan(window[0] - 1, window[1], color="tab:orange", alpha=0.08, label="pruning interval")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"flip ratio (moving mean of {k} steps)")
    ax.set_title("Fraction of binary weights that change sign per step")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def plot_flip_histograms(counts: dict[str, np.ndarray], steps: int, path: str | Path) -> Path:
    """One histogram of per-weight flip counts in the pruning interval per binary layer."""
    n = len(counts)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, c) in zip(axes.flat, counts.items()):
        c = np.asarray(c).ravel()
        top = int(c.max()) if c.size else 0
        bins = np.arange(top + 2) - 0.5 if top < 40 else 40
        ax.hist(c, bins=bins, color="tab:blue")
        ax.set_yscale("log")
        ax.set_title(f"{name}: {np.mean(c > 0):.1%} flipped", fontsize=9)
        ax.set_xlabel(f"flips in {steps} steps", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Per-weight flip counts in the pruning interval")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_channels(before: dict[str, int], after: dict[str, int], path: str | Path) -> Path:
    """Output channels per binary layer before and after pruning."""
    names = list(before)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), 3.8))
    ax.bar(x - 0.2, [before[n] for n in names], 0.4, label="before", color="0.7")
    ax.bar(x + 0.2, [after.get(n, 0) for n in names], 0.4, label="after", color="tab:blue")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("output channels")
    ax.set_title("Channels per binary layer")
    ax.legend()
    return save_figure(fig, path)


MARKERS = "o^sDvP*X"  # one per model, in the order of the report's table, on every plot


def plot_accuracy_vs_bops(points: list[dict], baseline_bops: float, path: str | Path) -> Path:
    """Test accuracy against BOPs (relative to the unpruned baseline), one marker per method."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, pt in enumerate(points):
        ax.scatter(
            100 * pt["bops"] / baseline_bops,
            100 * pt["test_acc"],
            s=60,
            marker=MARKERS[i % len(MARKERS)],
            label=pt["label"],
            zorder=3,
        )
    ax.set_xlabel("BOPs (% of unpruned)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs binary operations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_accuracy_vs_latency(points: list[dict], speed: dict, path: str | Path) -> Path:
    """Test accuracy against packed-engine latency (relative to the unpruned baseline), one
    panel per batch size; ``points`` as for :func:`plot_accuracy_vs_bops` (same markers), and
    those ``speed["models"]`` does not time are left out."""
    ratios = {m["label"]: m["latency_ratio"] for m in speed["models"]}
    batches = list(speed["repeats"])
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4.2), squeeze=False,
                             sharey=True)
    for ax, b in zip(axes.flat, batches):
        for i, pt in enumerate(points):
            if pt["label"] in ratios:
                ax.scatter(100 * ratios[pt["label"]][b], 100 * pt["test_acc"], s=60,
                           marker=MARKERS[i % len(MARKERS)], label=pt["label"], zorder=3,
                           color=f"C{i % 10}")
        ax.set_xlabel(f"engine latency, batch {b} (% of unpruned)")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("test accuracy (%)")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Accuracy vs packed-engine latency ({speed['cpu']}, {speed['threads']} "
                 "thread(s); wall-clock)")
    fig.tight_layout()
    return save_figure(fig, path)


def write_flip_plots(tracker: FlipTracker, out_dir: str | Path) -> list[Path]:
    """flip_histograms.png and flip_ratio.png of a tracker's recorded training."""
    out = Path(out_dir)
    lo, hi = tracker.window
    counts = {n: c.cpu().numpy() for n, c in tracker.counts.items()}
    return [
        plot_flip_histograms(counts, tracker.steps_in_window, out / "flip_histograms.png"),
        plot_flip_ratios(
            tracker.ratio_history(),
            tracker.epoch_ends,
            (lo, hi if hi is not None else tracker.step_count),
            out / "flip_ratio.png",
        ),
    ]
