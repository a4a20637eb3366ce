"""FINN dataflow estimate of zoo models, unpruned vs pruned copies (arithmetic, no timing).

    .venv/bin/python benchmarks/fpga_estimate.py [--models nin,small] [--target 0.4]
        [--round-to 1,8] [--target-fps 1000] [--clock-mhz 200] [--search min-lut]

For each model: the full-width zoo model and copies pruned by ``bnnprune.prune`` (uniform
plan for ``--target`` BOPs reduction, magnitude criterion, each ``--round-to`` channel
rounding), folded by ``bnnprune.deploy.fpga`` for ``--target-fps``: the per-layer table
and the pruned / unpruned ratios at the same fps and at the same LUTs. The estimates
depend only on the layer shapes, so untrained weights give the same figures as trained ones.
"""

from __future__ import annotations

import argparse

import torch

from bnnprune.deploy import fpga
from bnnprune.engine import compile_model
from bnnprune.metrics import count_bops
from bnnprune.models import MODELS, build_model
from bnnprune.prune import apply_plan, plan_uniform


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="nin,small")
    ap.add_argument("--target", type=float, default=0.4, help="BOPs reduction of the copies")
    ap.add_argument("--round-to", default="1,8", help="channel rounding of each pruned copy")
    ap.add_argument("--target-fps", type=float, default=1000.0)
    ap.add_argument("--clock-mhz", type=float, default=200.0)
    ap.add_argument("--search", choices=["min-lut", "finn"], default="min-lut")
    args = ap.parse_args()
    for name in args.models.split(","):
        shape = MODELS[name].input_shape
        torch.manual_seed(0)
        base = build_model(name).eval()
        base_bops = count_bops(base, shape)
        for r in (int(v) for v in args.round_to.split(",")):
            pruned = apply_plan(base, plan_uniform(base, shape, args.target, round_to=r),
                                "magnitude").model.eval()
            cut = 1 - count_bops(pruned, shape) / base_bops
            print(f"\n## {name} {shape}: unpruned vs uniform -{cut:.0%} BOPs (round-to {r}), "
                  f"{args.target_fps:g} fps target, {args.clock_mhz:g} MHz, {args.search}\n")
            text, _ = fpga.report(compile_model(pruned, shape), compile_model(base, shape),
                                  target_fps=args.target_fps, clock_mhz=args.clock_mhz,
                                  search=args.search)
            print(text)


if __name__ == "__main__":
    main()
