"""FINN's own estimates of zoo models, unpruned vs pruned copies (FINN's front end, no Vivado).

    .venv/bin/python benchmarks/finn_estimate.py [--models small,nin] [--target 0.4]
        [--round-to 1,8] [--target-fps 1000] [--clock-mhz 200] [--ladder 1.25,1.5,2,3]
        [--int8] [--segments]

Needs FINN (``bash scripts/setup.sh --fpga``). For each model (built with a -1 border, the
padding FINN's FMPadding makes): the full-width zoo model and copies pruned by
``bnnprune.prune`` (uniform plan for ``--target`` BOPs reduction, magnitude criterion, each
``--round-to``), taken through FINN's front end by ``bnnprune.deploy.finn_run`` and folded by
FINN's SetFolding for ``--target-fps``. Printed: FINN's LUTs (all dataflow layers and the
MVAUs alone), BRAM18 and fps; the fps a pruned copy reaches within the unpruned LUTs (the
fastest of ``--target-fps`` times each ``--ladder`` factor that FINN folds into them: SetFolding
is greedy, so this is a ladder, not a bisection); and bnnprune's cost model against FINN per
binary MVAU at FINN's folding. Estimates depend only on layer shapes and bit widths:
untrained weights give the figures trained ones would. ``--int8`` rounds the first layer's
weights to 8 bits (scale 2^-7) and exports with the 8-bit input quantizer (scale 1/128), so
FINN maps the first layer too. ``--segments``: a model with float ops between hardware
layers (e.g. a ceil-mode average pool) is taken as one FINN dataflow per contiguous run of hardware
layers, each folded for ``--target-fps``; totals are over all segments, and the ops between
them (outside FINN, float, on the host) are printed. A model FINN refuses is reported with
FINN's error.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from bnnprune.deploy import fpga
from bnnprune.deploy.finn_run import FinnResult, run_finn
from bnnprune.engine import EngineError, compile_model
from bnnprune.metrics import count_bops
from bnnprune.models import MODELS, build_model
from bnnprune.prune import apply_plan, plan_uniform


def round_first_layer(model: nn.Module) -> nn.Module:
    """The first convolution's weights on the 8-bit grid k / 128 (|k| <= 127), in place."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        conv.weight.copy_(torch.clamp(torch.round(conv.weight * 128), -128, 127) / 128)
    return model


def mvau_luts(r: FinnResult) -> float:
    return sum(layer["LUT"] for layer in r.layers if layer["op_type"].startswith("MVAU"))


def model_errors(program, r: FinnResult) -> list[str]:
    """bnnprune's LUT/BRAM model at FINN's PE/SIMD of each binary MVAU, relative to FINN."""
    ours = [l for l in fpga.mvau_layers(program) if l.binary]
    finn = [l for l in r.layers
            if l["op_type"].startswith("MVAU") and l["weightDataType"] == "BIPOLAR"]
    out = []
    for l, f in zip(ours, finn):
        layer = fpga.MvauLayer(l.name, l.mw, l.mh, l.vectors, 1, 1, None)
        luts = fpga.lut_estimate(layer, f["PE"], f["SIMD"])
        brams = fpga.bram_estimate(layer, f["PE"], f["SIMD"])
        out.append(f"{l.name} {l.mw}x{l.mh} PE/SIMD {f['PE']}/{f['SIMD']}: LUT {luts} vs FINN "
                   f"{f['LUT']:.0f} ({(luts - f['LUT']) / f['LUT']:+.1%}), BRAM18 {brams} vs "
                   f"{f['BRAM_18K']:g}")
    return out


def segment_notes(r: FinnResult) -> list[str]:
    """FINN's totals per dataflow segment (a model run with --segments) and the float ops
    between them, which stay on the host outside FINN."""
    if r.report.get("segments", 1) < 2:
        return []
    out = []
    for k in range(r.report["segments"]):
        rows = [layer for layer in r.layers if layer["segment"] == k]
        out.append(f"  segment {k}: {len(rows)} layers, {sum(l['LUT'] for l in rows):,.0f} LUTs, "
                   f"{sum(l['BRAM_18K'] for l in rows):g} BRAM18, "
                   f"{sum(l.get('DSP', 0) for l in rows):g} DSP, slowest layer "
                   f"{max(l['cycles'] for l in rows):,} cycles")
        if k < len(r.report["between"]):
            out.append(f"  between segments {k} and {k + 1} (float, outside FINN): "
                       f"{', '.join(r.report['between'][k])}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small,nin")
    ap.add_argument("--target", type=float, default=0.4, help="BOPs reduction of the copies")
    ap.add_argument("--round-to", default="1,8", help="channel rounding of each pruned copy")
    ap.add_argument("--target-fps", type=float, default=1000.0)
    ap.add_argument("--clock-mhz", type=float, default=200.0)
    ap.add_argument("--ladder", default="1.25,1.5,2,3",
                    help="fps factors tried for the pruned copies within the unpruned LUTs")
    ap.add_argument("--int8", action="store_true",
                    help="8-bit input quantizer and first layer: FINN maps it to hardware")
    ap.add_argument("--segments", action="store_true",
                    help="a model with float ops between hardware layers (e.g. a ceil-mode "
                         "average pool) as one FINN dataflow per contiguous run of them")
    args = ap.parse_args()
    opts = {"clock_mhz": args.clock_mhz, "input_scale": 1 / 128 if args.int8 else None,
            "segments": args.segments}
    ladder = [float(v) for v in args.ladder.split(",")]
    print(f"| model | channel rounding | LUTs at {args.target_fps:g} fps (pruned / unpruned) | "
          "MVAU LUTs | BRAM18 | fps within the unpruned LUTs |")
    print("|---|---|---|---|---|---|")
    notes: list[str] = []
    for name in args.models.split(","):
        shape = MODELS[name].input_shape
        torch.manual_seed(0)
        base = build_model(name, pad_value=-1.0).eval()
        if args.int8:
            round_first_layer(base)
        try:
            b = run_finn(compile_model(base, shape), target_fps=args.target_fps, **opts)
        except EngineError as e:
            notes.append(f"{name}: {e}")
            continue
        notes += [f"{name} unpruned: {b.fps():,.0f} fps, outside the dataflow: "
                  f"{', '.join(b.report['outside'])}"]
        notes += segment_notes(b)
        notes += [f"  {line}" for line in model_errors(compile_model(base, shape), b)]
        base_bops = count_bops(base, shape)
        for r in (int(v) for v in args.round_to.split(",")):
            pruned = apply_plan(base, plan_uniform(base, shape, args.target, round_to=r),
                                "magnitude").model.eval()
            cut = 1 - count_bops(pruned, shape) / base_bops
            prog = compile_model(pruned, shape)
            p = run_finn(prog, target_fps=args.target_fps, **opts)
            fit = p.fps() if p.total("LUT") <= b.total("LUT") else 0.0
            for f in ladder:
                q = run_finn(prog, target_fps=args.target_fps * f, **opts)
                if q.total("LUT") <= b.total("LUT"):
                    fit = max(fit, q.fps())
            print(f"| {name} {shape} -{cut:.0%} BOPs | {r} | {p.total('LUT'):,.0f} / "
                  f"{b.total('LUT'):,.0f} = {p.total('LUT') / b.total('LUT'):.2f}x | "
                  f"{mvau_luts(p) / mvau_luts(b):.2f}x | {p.total('BRAM_18K'):g} / "
                  f"{b.total('BRAM_18K'):g} | {fit:,.0f} / {b.fps():,.0f} = "
                  f"{fit / b.fps():.2f}x |")
            notes += [f"{name} -{cut:.0%} BOPs, round-to {r}: {p.fps():,.0f} fps"]
            notes += segment_notes(p)
            notes += [f"  {line}" for line in model_errors(prog, p)]
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()
