"""The speed targets of pruning for measured speed, each measured in one interleaved run.

    .venv/bin/python benchmarks/bench_speed_targets.py [--threads N] [--repeats 30]
        [--json out.json] [--quick] [--models nin,small] [--ops]

1. ``nin`` with a uniform plan that removes 60% of the BOPs (full-precision producers
   pruned, the default) against the unpruned ``nin``: latency ratio at batch 1 and 64, with
   the default channel rounding (``auto``: counts the kernels pay for), with none
   (``--round-to 1``) and with ``--round-to 16`` (the engine's output blocks);
2. ``small`` at -50% BOPs against the unpruned ``small``: the same three roundings;
3. each unpruned model's share of the physical limit at batch 1 and 64;
4. each unpruned model against PyTorch float eager at batch 1 and 64 (speed-up);
5. with ``--ops``, every op's median time inside whole runs at batch 64, unpruned -> pruned.

Pairs are measured by :func:`bnnprune.engine.bench.compare_pair` (interleaved medians, with the
cost model's predicted ratio); BN statistics are randomized so no channel is trivially
constant. ``--quick`` checks the script on tiny models with few repeats: its numbers mean
nothing. Run it on a quiet machine.

Before timing, a child process compiles and runs every program once, so the timed process
loads its kernels from numba's cache as every later run of a user does: in a process that
compiled them itself, NIN's first conv pruned to 112 channels took 0.286 ms instead of 0.204
(the same machine code placed differently; AMD EPYC Zen 3, avx2 without avx512;
``benchmarks/bench_compiled_here.py``), which put the pruned NIN at 0.576
of the unpruned where runs with cached kernels gave 0.506-0.509.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import torch

from bnnprune import engine
from bnnprune.engine.bench import compare_pair, format_pair, op_times
from bnnprune.engine.timing import interleaved
from bnnprune.models import build_model
from bnnprune.prune.policies import AUTO

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import input_shape, pruned_copy, randomize_bn  # noqa: E402

# (model, BOPs reduction, round_to): the default rounding ("auto"), none, 16
CASES = tuple((name, cut, rt) for name, cut in (("nin", 0.6), ("small", 0.5))
              for rt in (AUTO, 1, 16))


def torch_speedup(model: torch.nn.Module, program: engine.Program, shape: tuple[int, ...],
                  batch: int, repeats: int) -> dict[str, float]:
    """Median latency of PyTorch eager and the engine at ``batch`` images, interleaved."""
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    xt = torch.from_numpy(x)

    def eager() -> None:
        with torch.inference_mode():
            model(xt)

    s_e, s_t = interleaved([lambda: program(x, batch_size=batch), eager], repeats)
    e, t = statistics.median(s_e), statistics.median(s_t)
    return {"engine_s": e, "torch_s": t, "speedup": t / e}


def op_profile(base: engine.Program, pruned: engine.Program,
               repeats: int) -> list[dict[str, float | str]]:
    """Median time of every op inside whole runs at batch 64, unpruned and pruned (the two
    programs have the same ops; only their channel counts differ)."""
    rows = zip(op_times(base, 64, repeats), op_times(pruned, 64, repeats), strict=True)
    return [{"op": a["op"], "kind": a["kind"], "unpruned_s": a["median_s"],
             "pruned_s": b["median_s"]} for a, b in rows]


def kept_channels(base: engine.Program, pruned: engine.Program) -> dict[str, list[int]]:
    """Output channels of every pruned conv: [kept, unpruned]."""
    return {p.name: [p.attrs["cout"], b.attrs["cout"]] for b, p in zip(base.ops, pruned.ops,
                                                                      strict=True)
            if p.kind in ("bconv", "fconv") and p.attrs["cout"] != b.attrs["cout"]}


def format_ops(ops: list[dict[str, float | str]]) -> str:
    lines = [f"  {'op':<12}{'kind':<18}{'unpruned ms':>12}{'pruned ms':>11}{'ratio':>7}"]
    for r in [*ops, {"op": "total", "kind": "",
                     "unpruned_s": sum(r["unpruned_s"] for r in ops),
                     "pruned_s": sum(r["pruned_s"] for r in ops)}]:
        u, p = float(r["unpruned_s"]), float(r["pruned_s"])
        lines.append(f"  {r['op']:<12}{r['kind']:<18}{u * 1e3:>12.3f}{p * 1e3:>11.3f}"
                     f"{p / u if u else float('nan'):>7.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="numba and torch threads")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny models, 2 repeats")
    ap.add_argument("--models", default=",".join(dict.fromkeys(c[0] for c in CASES)),
                    help="comma-separated cases to run (default: all)")
    ap.add_argument("--ops", action="store_true",
                    help="also time every op inside whole runs at batch 64, unpruned -> pruned")
    ap.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    width, repeats = (0.125, 2) if args.quick else (1.0, args.repeats)
    out = {}
    chosen = args.models.split(",")
    unknown = set(chosen) - {c[0] for c in CASES}
    if unknown:
        ap.error(f"unknown models: {', '.join(sorted(unknown))}")
    if not args.warm_only:  # compile in a child: the timed process loads cached kernels
        subprocess.run([sys.executable, __file__, "--warm-only", "--models", args.models,
                        *(["--threads", str(args.threads)] if args.threads else []),
                        *(["--quick"] if args.quick else [])], check=True)
    for name, target, round_to in (c for c in CASES if c[0] in chosen):
        shape = input_shape(name)
        torch.manual_seed(0)
        model = randomize_bn(build_model(name, width=width))  # sized for input_shape(name)
        base = engine.compile_model(model, shape)
        pruned = engine.compile_model(pruned_copy(model, shape, target, round_to), shape)
        if args.warm_only:
            for prog in (base, pruned):
                for batch in (1, 64):
                    prog(np.zeros((batch, *shape), np.float32), batch_size=batch)
            continue
        pair = compare_pair(pruned, base, batches=(1, 64), repeats=repeats,
                            table_repeats=3 if not args.quick else 1)
        case = name if round_to == AUTO else f"{name}, round_to {round_to}"
        kept = kept_channels(base, pruned)
        out[case] = {"bops_reduction": target, "round_to": round_to, "channels": kept,
                     "pair": pair}
        print(f"== {case}: uniform plan, {target:.0%} fewer BOPs (target ratio: "
              f"{'<= 0.55' if name == 'nin' else '<= 0.65'})")
        print("channels kept: " + ", ".join(f"{n} {k}/{c}" for n, (k, c) in kept.items()))
        print(format_pair(pair))
        if args.ops:
            out[case]["ops"] = ops = op_profile(base, pruned, repeats)
            print(format_ops(ops))
        if case == name:  # once per model
            for batch in (1, 64):
                sp = torch_speedup(model, base, shape, batch, repeats)
                out[case][f"torch_batch{batch}"] = sp
                print(f"unpruned {name} at batch {batch}: engine {sp['engine_s'] * 1e3:.3f} ms, "
                      f"PyTorch eager {sp['torch_s'] * 1e3:.3f} ms, speed-up "
                      f"{sp['speedup']:.1f}x{' (target >= 3x)' if name == 'nin' else ''}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
