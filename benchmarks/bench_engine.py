"""Benchmark the packed XNOR-popcount engine against PyTorch float eager, in one run.

    .venv/bin/python benchmarks/bench_engine.py [--model nin] [--keep 0.6] [--json out.json]

Prints the machine, the roofline and kernel throughput, batch-1 latency and batch-64
throughput (packed vs PyTorch eager on the same full-width model, BN statistics randomized
so no channel is trivially constant), and a channel-sliced "pruned" model's packed latency
next to its BOPs ratio. Speeds are ratios measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and "--threads" in sys.argv:
    # BLAS reads its thread count at import: set it before numpy/torch load
    os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import numba  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bnnprune import engine  # noqa: E402
from bnnprune.metrics import count_bops  # noqa: E402
from bnnprune.models import build_model, resize_to_state_dict  # noqa: E402
from bnnprune.nn import binary_layers  # noqa: E402


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine terms (some gammas < 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 2)
                m.running_var.copy_(torch.rand(n, generator=g) * 4 + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model.eval()


def slice_channels(model: nn.Module, name: str, kwargs: dict, keep: float) -> nn.Module:
    """A "pruned" copy: every binary layer keeps the first round(keep*C) output channels."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    names = list(binary_layers(model))
    mods = dict(model.named_modules())
    order = [n for n, _ in model.named_modules()]
    kept = {n: max(1, round(mods[n].weight.shape[0] * keep)) for n in names}
    # slice each binary layer's outputs, its BatchNorm, and the next layer's inputs
    for i, n in enumerate(order):
        if n in kept:
            c = kept[n]
            sd[f"{n}.weight"] = sd[f"{n}.weight"][:c]
            following = order[i + 1:]
            bn = next(f for f in following if isinstance(mods[f], nn.BatchNorm2d))
            for key in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{bn}.{key}"] = sd[f"{bn}.{key}"][:c]
            nxt = next(f for f in following if isinstance(mods[f], nn.Conv2d | nn.Linear))
            sd[f"{nxt}.weight"] = sd[f"{nxt}.weight"][:, :c]
    pruned = build_model(name, **kwargs)
    resize_to_state_dict(pruned, sd)
    pruned.load_state_dict(sd)
    return pruned.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nin")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--keep", type=float, default=0.6, help="channel fraction of the pruned copy")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for numba, torch and OpenBLAS (default: all cores)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kwargs = {"width": args.width}
    model = randomize_bn(build_model(args.model, **kwargs))
    shape = (3, 32, 32) if args.model != "small" else (1, 28, 28)
    pruned = slice_channels(model, args.model, kwargs, args.keep)
    program = engine.compile_model(model, shape)
    pruned_program = engine.compile_model(pruned, shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.bnn"
        engine.save(program, path)
        res = engine.benchmark(path, model, repeats=args.repeats)
    pr = engine.benchmark(pruned_program, None, baseline=program, repeats=args.repeats)
    res["pruned"] = pr["pruned"]
    res["pruned"]["keep"] = args.keep
    res["pruned"]["count_bops_ratio"] = count_bops(pruned, shape) / count_bops(model, shape)
    res["model"] = {"name": args.model, **kwargs}
    print(f"model {args.model} width {args.width} (pruned copy keeps {args.keep:.0%} channels)")
    print(engine.format_benchmark(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
