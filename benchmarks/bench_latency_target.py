"""Predicted vs measured latency ratio of latency-targeted plans, on every zoo model, in one run.

    .venv/bin/python benchmarks/bench_latency_target.py [--models nin,small] [--targets 0.5,0.7]
        [--batches 1,64] [--threads 1] [--width 1.0] [--repeats 30] [--json out.json] [--quick]

For each model (random BN statistics, so no channel is trivially constant) and batch size:
build the engine's latency tables on this machine (or read them from the cache), plan to each
target latency with the uniform policy, prune, compile, and measure the pruned and unpruned
programs interleaved (:func:`bnnprune.engine.bench.compare_pair`). Prints the target, the
predicted and measured ratios and their relative error (the issue asks for <= 10%), the BOPs
and float MAC ratios, and the share of the physical limit. ``--quick`` checks the script on
tiny models with one repeat: its numbers mean nothing. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import torch

from bnnprune import engine
from bnnprune.engine.bench import compare_pair, machine_info, share_text
from bnnprune.models import MODELS, build_model
from bnnprune.prune import apply_plan, make_plan
from bnnprune.prune.latency import latency_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import input_shape, randomize_bn  # noqa: E402


def run(models: list[str], targets: list[float], batches: list[int], threads: int, width: float,
        repeats: int, table_repeats: int) -> list[dict]:
    rows = []
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    for name in models:
        shape = input_shape(name)
        torch.manual_seed(0)
        model = randomize_bn(build_model(name, width=width, in_channels=shape[0],
                                         image_size=shape[1]))
        base = engine.compile_model(model, shape)
        for batch in batches:
            t0 = time.perf_counter()
            lm = latency_model(model, shape, batch=batch, threads=threads, repeats=table_repeats)
            build_s = time.perf_counter() - t0
            for target in targets:
                plan = make_plan(model, shape, "uniform", target_latency=target, latency_model=lm)
                pruned = apply_plan(model, plan, "magnitude").model.eval()
                pair = compare_pair(engine.compile_model(pruned, shape), base, batches=(batch,),
                                    repeats=repeats, table_repeats=table_repeats)
                e = pair["batches"][str(batch)]
                pred = plan.latency["ratio"]
                rows.append({"model": name, "batch": batch, "threads": threads, "target": target,
                             "predicted_ratio": pred, "measured_ratio": e["ratio"],
                             "relative_error": abs(pred - e["ratio"]) / e["ratio"],
                             "bops_ratio": pair["bops"]["ratio"],
                             "float_macs_ratio": pair["float_macs"]["ratio"],
                             "fraction_of_limit_unpruned": e["unpruned_fraction_of_limit"],
                             "fraction_of_limit_pruned": e["pruned_fraction_of_limit"],
                             "table_build_s": build_s, "granularity": plan.latency["granularity"],
                             "keep": plan.keep})
                r = rows[-1]
                print(f"{name:<12}{batch:>6}{target:>8.2f}{pred:>11.3f}{e['ratio']:>10.3f}"
                      f"{100 * r['relative_error']:>8.1f}%{r['bops_ratio']:>8.3f}"
                      f"{r['float_macs_ratio']:>8.3f}"
                      f"{share_text(r['fraction_of_limit_unpruned']):>9}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(sorted(MODELS)))
    ap.add_argument("--targets", default="0.5,0.7")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--table-repeats", type=int, default=10)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--quick", action="store_true",
                    help="tiny models, one repeat: checks that the script runs")
    args = ap.parse_args()
    models = args.models.split(",")
    if args.quick:
        models, args.width, args.repeats, args.table_repeats = ["small"], 0.125, 1, 1
        args.batches, args.targets = "1", "0.6"
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['logical_cores']} logical cores, {args.threads} thread(s)")
    print(f"{'model':<12}{'batch':>6}{'target':>8}{'predicted':>11}{'measured':>10}{'error':>9}"
          f"{'BOPs':>8}{'fMACs':>8}{'%limit':>9}")
    rows = run(models, [float(t) for t in args.targets.split(",")],
               [int(b) for b in args.batches.split(",")], args.threads, args.width,
               args.repeats, args.table_repeats)
    worst = max(r["relative_error"] for r in rows)
    print(f"worst predicted-vs-measured error: {100 * worst:.1f}% (target <= 10%)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
