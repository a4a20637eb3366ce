"""The binary GEMM's counting schemes side by side on this machine, in one interleaved run.

    .venv/bin/python benchmarks/bench_counting.py [--models nin,small] [--batches 1,64]
        [--threads 1] [--repeats 15] [--clock wall|cpu] [--ops] [--json out.json]

For each model (full width, BN statistics randomized) the same program is compiled twice,
its binary convs counting by per-word popcount (``popcount``) and by carry-save accumulation
(``csa``, :func:`bnnprune.engine.kernels.intrinsics.counting_scheme`); the two give the same
logits (checked), and are timed interleaved: end to end per batch, then every binary conv
at the largest batch (best of ``--repeats``). Also the roofline probe of each scheme and
the scheme this CPU gets by default. Prints ratios popcount / csa (> 1: carry-save faster)
and the CPU's vector flags.

``--ops`` adds each scheme's breakdown of a whole run at every batch: the median time of
every op inside whole runs (:func:`bnnprune.engine.timing.step_samples`: an op's padding and
patch matrix count with it; the input load is its own row), binary convs with their words
per window, and each op's share of the sum.

``--clock cpu`` times with the thread's CPU time (one thread only), which a shared machine
disturbs less than wall-clock; figures for the docs come from ``--clock wall`` on a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from bnnprune import engine
from bnnprune.engine.bench import roofline
from bnnprune.engine.kernels.intrinsics import (
    SCHEME_ENV,
    SCHEMES,
    counting_scheme,
    instruction_set,
)
from bnnprune.engine.timing import elapsed, step_samples
from bnnprune.machine import machine_info
from bnnprune.models import MODELS, build_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import input_shape, randomize_bn  # noqa: E402


def compile_per_scheme(model: torch.nn.Module, shape: tuple[int, ...],
                       batches: list[int]) -> dict[str, engine.Program]:
    """The model compiled once per counting scheme, its plans for ``batches`` built while
    that scheme is forced (kernels bind their scheme when a plan is made)."""
    progs = {}
    before = os.environ.get(SCHEME_ENV)
    try:
        for scheme in SCHEMES:
            os.environ[SCHEME_ENV] = scheme
            progs[scheme] = engine.compile_model(model, shape)
            for b in batches:
                progs[scheme].plan(b)
    finally:
        if before is None:
            os.environ.pop(SCHEME_ENV, None)
        else:
            os.environ[SCHEME_ENV] = before
    return progs


def best_times(fns: dict[str, Callable[[], Any]], repeats: int, clock: Callable[[], float]
               ) -> dict[str, float]:
    """Best time of each function over ``repeats`` interleaved rounds (after one warm-up)."""
    for f in fns.values():
        f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for k, f in fns.items():
            t = clock()
            f()
            best[k] = min(best[k], clock() - t)
    return best


def op_best(progs: dict[str, engine.Program], batch: int, repeats: int,
            clock: Callable[[], float]) -> list[dict[str, Any]]:
    """Every binary conv of each scheme's plan alone (inputs as a run leaves them), best
    time per scheme, interleaved."""
    plans = {s: p.plan(batch) for s, p in progs.items()}
    x = np.random.default_rng(3).standard_normal((batch, *progs["csa"].input_shape))
    for plan in plans.values():
        plan.run(x.astype(np.float32))
    rows = []
    first = progs["csa"]
    for idx, _ in plans["csa"].steps:
        op = first.ops[idx]
        if op.kind != "bconv":
            continue
        fns = {}
        for s, plan in plans.items():
            calls = plan.op_calls(idx)
            fns[s] = lambda calls=calls: [c() for c in calls]
        t = best_times(fns, repeats, clock)
        v = first.values[op.output]
        a = op.attrs
        rows.append({"op": op.name or f"op{idx}",
                     "words_per_window": int(first.prepared(idx).wb.shape[1]
                                             * first.prepared(idx).wb.shape[2]),
                     "dense": bool(first.prepared(idx).dense),
                     "macs": batch * v.h * v.w * a["cout"] * a["cin"] * a["kernel"][0]
                     * a["kernel"][1], **{f"{s}_s": t[s] for s in t},
                     "ratio": t["popcount"] / t["csa"]})
    return rows


def op_breakdown(prog: engine.Program, batch: int, repeats: int) -> list[dict[str, Any]]:
    """Median seconds of the input load and of every op inside whole runs at ``batch``
    (:func:`~bnnprune.engine.timing.step_samples`), with each binary conv's words per window
    (``dense``: patch-matrix rows)."""
    plan = prog.plan(batch)
    x = np.random.default_rng(3).standard_normal((batch, *prog.input_shape)).astype(np.float32)
    rows = [{"op": "load", "kind": "input load", "words": 0, "dense": False,
             "median_s": float(np.median([elapsed(lambda: plan.load(x))
                                          for _ in range(repeats)]))}]
    for (idx, _), t in zip(plan.steps, step_samples(plan, x, repeats), strict=True):
        op = prog.ops[idx]
        words, dense = 0, False
        if op.kind == "bconv":
            wb = prog.prepared(idx).wb
            words, dense = int(wb.shape[1] * wb.shape[2]), bool(prog.prepared(idx).dense)
        rows.append({"op": op.name or f"op{idx}", "kind": op.kind, "words": words,
                     "dense": dense, "median_s": float(np.median(t))})
    return rows


def format_breakdown(rows: dict[str, list[dict[str, Any]]]) -> str:
    """The schemes' breakdowns side by side: ms and share of the op sum per scheme."""
    schemes = list(rows)
    tot = {s: sum(r["median_s"] for r in rows[s]) for s in schemes}
    head = "".join(f"{s + ' ms':>13}{'share':>7}" for s in schemes)
    lines = [f"    {'op':<10}{'kind':<18}{'window':<14}{head}"]
    for i, r in enumerate(rows[schemes[0]]):
        win = (f"{r['words']} words" + (" dense" if r["dense"] else "")) if r["words"] else ""
        vals = "".join(f"{rows[s][i]['median_s'] * 1e3:>13.4f}"
                       f"{rows[s][i]['median_s'] / tot[s]:>7.1%}" for s in schemes)
        lines.append(f"    {r['op']:<10}{r['kind']:<18}{win:<14}{vals}")
    lines.append(f"    {'sum':<42}" + "".join(f"{tot[s] * 1e3:>13.4f}{'':>7}" for s in schemes))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="nin,small")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--ops", action="store_true",
                    help="each scheme's per-op breakdown of whole runs at every batch")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    models = args.models.split(",")
    if set(models) - set(MODELS):
        ap.error(f"models: one of {', '.join(MODELS)}")
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu counts one thread's CPU time: use --threads 1")
    batches = [int(b) for b in args.batches.split(",")]
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    m = machine_info()
    roof = roofline()
    out: dict[str, Any] = {"machine": m, "instruction_set": instruction_set(),
                           "default_scheme": counting_scheme(), "clock": args.clock,
                           "roofline": roof, "models": {}}
    print(f"{m['cpu']}; flags: {' '.join(m['cpu_flags'])}; {args.threads} thread(s); "
          f"{args.clock} clock")
    print(f"engine: {instruction_set()}, default counting {counting_scheme()}; roofline "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in roof["schemes"].items())
          + " G binary MACs/s (ratio csa / popcount "
          f"{roof['schemes']['csa'] / roof['schemes']['popcount']:.2f})")
    for name in models:
        shape = input_shape(name)
        torch.manual_seed(0)
        model = randomize_bn(build_model(name))
        progs = compile_per_scheme(model, shape, batches)
        res: dict[str, Any] = {"end_to_end": {}}
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32)
            logits = {s: p(x, batch_size=b) for s, p in progs.items()}
            if not np.array_equal(logits["popcount"], logits["csa"]):
                raise SystemExit(f"{name} batch {b}: the schemes' logits differ")
            t = best_times({s: (lambda p=p, x=x, b=b: p(x, batch_size=b))
                            for s, p in progs.items()}, args.repeats, clock)
            res["end_to_end"][str(b)] = {**{f"{s}_s": t[s] for s in t},
                                         "ratio": t["popcount"] / t["csa"]}
            print(f"{name} batch {b}: popcount {t['popcount'] * 1e3:.3f} ms, csa "
                  f"{t['csa'] * 1e3:.3f} ms, popcount / csa {t['popcount'] / t['csa']:.2f}")
        if args.ops:
            res["breakdown"] = {}
            for b in batches:
                bd = {s: op_breakdown(p, b, args.repeats) for s, p in progs.items()}
                res["breakdown"][str(b)] = bd
                print(f"  {name} batch {b}, median per op inside whole runs:")
                print(format_breakdown(bd))
        rows = op_best(progs, max(batches), args.repeats, clock)
        res["ops"] = rows
        for r in rows:
            dense = " (dense)" if r["dense"] else ""
            print(f"  {r['op']:<10} {r['words_per_window']:>3} words{dense:<9}"
                  f" popcount {r['popcount_s'] * 1e3:8.3f} ms  csa {r['csa_s'] * 1e3:8.3f} ms"
                  f"  {r['ratio']:.2f}")
        out["models"][name] = res
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
