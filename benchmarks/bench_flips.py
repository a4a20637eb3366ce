"""Training-step time with vs without FlipTracker, measured in one run (interleaved blocks).

    .venv/bin/python benchmarks/bench_flips.py [--model small --width 0.5 --steps 40]

Prints the machine, the median step time of each variant and their ratio (goal <= 1.02), and
the time spent inside ``tracker.step()`` itself, which is robust to other load on the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from bnnprune.flips import FlipTracker
from bnnprune.models import build_model
from bnnprune.nn import clip_latent_weights


def step_times(model, tracker, x, y, opt, steps: int, tracker_times=None) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clip_latent_weights(model)
        if tracker is not None:
            t1 = time.perf_counter()
            tracker.step()
            if tracker_times is not None:
                tracker_times.append(time.perf_counter() - t1)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40, help="steps per block")
    ap.add_argument("--blocks", type=int, default=6, help="alternating blocks per variant")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = build_model(
        args.model, width=args.width, in_channels=args.in_channels, image_size=args.image_size
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, args.in_channels, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))
    tracker = FlipTracker(model)
    step_times(model, tracker, x, y, opt, 5)  # warm-up
    plain: list[float] = []
    tracked: list[float] = []
    own: list[float] = []  # time inside tracker.step() alone
    for _ in range(args.blocks):
        plain += step_times(model, None, x, y, opt, args.steps)
        tracked += step_times(model, tracker, x, y, opt, args.steps, own)
    p, t = statistics.median(plain), statistics.median(tracked)
    n_weights = sum(c.numel() for c in tracker.counts.values())
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"model {args.model} width {args.width}, batch {args.batch_size}, "
        f"{n_weights} tracked binary weights, {len(plain)} steps per variant"
    )
    print(f"median step: without tracker {p * 1e3:.2f} ms, with tracker {t * 1e3:.2f} ms")
    o = statistics.median(own)
    print(f"tracker.step() alone: median {o * 1e3:.3f} ms = {o / p:.2%} of a step")
    print(
        f"ratio with/without (interleaved blocks, noisy): {t / p:.3f}; "
        f"from the tracker's own time: {(p + o) / p:.4f}"
    )


if __name__ == "__main__":
    main()
