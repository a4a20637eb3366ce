"""The paper's GPU speed claim in one command: pruned vs unpruned in PyTorch, on the GPU.

    python benchmarks/bench_gpu.py [--models nin,alexnet] [--target 0.4] [--round-to 8]
        [--device auto] [--dtypes bfloat16,float16] [--modes cudagraph,compile]
        [--batches 1,64,256] [--repeats 50] [--json gpu.json]

Each model is built at full width (BatchNorm statistics randomized so no channel is
trivially constant), pruned by ``bnnprune.prune`` (uniform plan for ``--target`` fewer
BOPs, magnitude criterion, channel counts rounded to ``--round-to``: 8 suits tensor cores),
and both are timed by ``bnnprune.torchbench.compare_models`` (interleaved, medians, CUDA
events; see docs/engine.md, "PyTorch on a GPU"). Prints each comparison and a Markdown
table of the fastest form per batch size. Speeds are ratios measured in this run on this
device; without a GPU it runs on the CPU (slow, and not the claim).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from bnnprune import torchbench
from bnnprune.metrics import binary_channels
from bnnprune.models import build_model
from bnnprune.prune.policies import check_round_to
from bnnprune.train import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import input_shape, pruned_copy, randomize_bn  # noqa: E402


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def markdown(rows: list[tuple[str, dict[str, Any]]], target: float) -> str:
    """One row per model and batch size: each model's fastest form and the two latencies."""
    lines = [f"| model | batch | unpruned (fastest form) | -{target:.0%} BOPs (fastest form) "
             "| ratio | speed-up |", "|---|---|---|---|---|---|"]
    for name, res in rows:
        for batch, b in res["best"].items():
            lines.append(f"| {name} | {batch} | {b['unpruned_s'] * 1e3:.3f} ms "
                         f"({b['unpruned_form']}) | {b['pruned_s'] * 1e3:.3f} ms "
                         f"({b['pruned_form']}) | {b['ratio']:.3f} | {b['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=_csv, default=["nin", "alexnet"])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--target", type=float, default=0.4, help="BOPs reduction of the pruned copy")
    ap.add_argument("--round-to", type=check_round_to, default=8,
                    help="channel counts of the pruned copy: multiples of N, or auto (the CPU "
                         "engine's choice)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtypes", type=_csv, default=None)
    ap.add_argument("--modes", type=_csv, default=None)
    ap.add_argument("--batches", type=lambda t: [int(v) for v in _csv(t)],
                    default=list(torchbench.DEFAULT_BATCHES))
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    torchbench.check_request(device, args.dtypes, args.modes, args.batches, args.repeats)
    rows: list[tuple[str, dict[str, Any]]] = []
    for name in args.models:
        torch.manual_seed(0)
        model = randomize_bn(build_model(name, width=args.width))
        shape = input_shape(name)
        pruned = pruned_copy(model, shape, args.target, args.round_to)
        res = torchbench.compare_models(pruned, model, shape, device=device, dtypes=args.dtypes,
                                        modes=args.modes, batches=args.batches,
                                        repeats=args.repeats)
        res["model"] = {"name": name, "width": args.width, "target": args.target,
                        "round_to": args.round_to, "channels": binary_channels(pruned),
                        "unpruned_channels": binary_channels(model)}
        print(f"== {name} width {args.width}: uniform plan, {args.target:.0%} fewer BOPs, "
              f"channels rounded to {args.round_to} "
              f"({', '.join(str(c) for c in res['model']['channels'].values())})")
        print(torchbench.format_comparison(res))
        print()
        rows.append((name, res))
    print(markdown(rows, args.target))
    if args.json:
        args.json.write_text(json.dumps({name: res for name, res in rows}, indent=2))


if __name__ == "__main__":
    main()
