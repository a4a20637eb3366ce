"""Benchmark the packed XNOR-popcount engine against PyTorch float eager, in one run.

    .venv/bin/python benchmarks/bench_engine.py [--model nin] [--target 0.6] [--round-to auto]
        [--threads N] [--json out.json]

Prints the machine, the roofline and kernel throughput, batch-1 latency and batch-64
throughput (packed vs PyTorch eager on the same full-width model, BN statistics randomized
so no channel is trivially constant), a pruned copy's packed latency next to its BOPs
ratio, and what the plan's chained kernel calls save at batch 1 on one thread over one
Python call per kernel. The pruned copy is made by ``bnnprune.prune`` (uniform plan for
``--target`` BOPs reduction, magnitude criterion; ``--round-to`` as in ``bnnprune prune``:
``auto``, the default, keeps counts the kernels pay for, ``64`` whole 64-bit words of
channels).
Speeds are ratios measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and "--threads" in sys.argv:
    # BLAS reads its thread count at import: set it before numpy/torch load
    os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bnnprune import engine  # noqa: E402
from bnnprune.engine import kernels as K  # noqa: E402
from bnnprune.engine.timing import interleaved  # noqa: E402
from bnnprune.metrics import binary_channels, count_bops  # noqa: E402
from bnnprune.models import MODELS, build_model  # noqa: E402
from bnnprune.prune import apply_plan, plan_uniform  # noqa: E402
from bnnprune.prune.policies import AUTO, check_round_to  # noqa: E402


def input_shape(name: str) -> tuple[int, int, int]:
    """The benchmarks' input shape of a zoo model: the one it is sized for by default
    (Fashion-MNIST's for `small`, CIFAR's for the others)."""
    return MODELS[name].input_shape


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


def pruned_copy(model: nn.Module, shape: tuple[int, int, int], target: float,
                round_to: int | str) -> nn.Module:
    """A real pruned copy: uniform plan for ``target`` BOPs reduction, magnitude criterion."""
    plan = plan_uniform(model, shape, target, round_to=round_to)
    return apply_plan(model, plan, "magnitude").model.eval()


def call_cost(program: engine.Program, repeats: int) -> dict[str, float]:
    """Median time of a batch-1, one-thread plan's kernel calls made one Python call each
    and chained as the plan runs them (interleaved; the input copy is not timed)."""
    plan = program.plan(1, 1)
    plan.load(np.random.default_rng(0).standard_normal((1, *program.input_shape))
              .astype(np.float32))
    calls = [c for _, cs in plan.steps for c in cs]
    chained = K.chain_calls(calls)

    def each() -> None:
        for c in calls:
            c()

    def chain() -> None:
        for c in chained:
            c()

    s_each, s_chain = (statistics.median(s) for s in interleaved([each, chain], 10 * repeats))
    return {"calls": len(calls), "chained_calls": len(chained), "each_s": s_each,
            "chained_s": s_chain,
            "saved_per_call_s": (s_each - s_chain) / max(1, len(calls) - len(chained))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nin")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--target", type=float, default=0.6,
                    help="BOPs reduction of the pruned copy (uniform plan)")
    ap.add_argument("--round-to", type=check_round_to, default=AUTO,
                    help="channel rounding of the pruned copy: auto or N (64: whole words)")
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
    shape = input_shape(args.model)
    pruned = pruned_copy(model, shape, args.target, args.round_to)
    program = engine.compile_model(model, shape)
    pruned_program = engine.compile_model(pruned, shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.bnn"
        engine.save(program, path)
        res = engine.benchmark(path, model, repeats=args.repeats)
    pr = engine.benchmark(pruned_program, None, baseline=program, repeats=args.repeats)
    res["pruned"] = pr["pruned"]
    res["pruned"]["target"] = args.target
    res["pruned"]["round_to"] = args.round_to
    res["pruned"]["channels"] = binary_channels(pruned)
    res["pruned"]["count_bops_ratio"] = count_bops(pruned, shape) / count_bops(model, shape)
    res["model"] = {"name": args.model, **kwargs}
    print(f"model {args.model} width {args.width}; pruned copy: uniform plan, "
          f"{args.target:.0%} fewer BOPs, channels rounded to {args.round_to} "
          f"({', '.join(str(c) for c in res['pruned']['channels'].values())})")
    print(engine.format_benchmark(res))
    res["call_cost"] = cc = call_cost(program, args.repeats)
    print(f"\nkernel calls at batch 1, one thread: {cc['calls']} Python calls "
          f"{cc['each_s'] * 1e6:.1f} us, chained into {cc['chained_calls']} "
          f"{cc['chained_s'] * 1e6:.1f} us: {cc['saved_per_call_s'] * 1e6:.2f} us saved per call")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
