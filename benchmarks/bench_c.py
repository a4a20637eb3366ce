"""Benchmark the generated C against the numba engine, single thread, batch 1, in one run.

    .venv/bin/python benchmarks/bench_c.py [--model small] [--width 1.0] [--target 0.5]
        [--round-to auto] [--rounds 10] [--repeats 30] [--json out.json] [--quick]

Exports the model (BatchNorm statistics randomized, as in bench_engine.py) and a pruned copy
(uniform plan for ``--target`` BOPs reduction, magnitude criterion) with
``bnnprune.deploy.cexport``, builds both with ``cc -std=c99 -O3 -march=native`` (the host
build docs/deploy.md recommends) and a small timing harness (``clock_gettime`` around
``model_run``), checks that their logits equal the engine's, and alternates rounds of C and
engine measurements (``program(x, batch_size=1, threads=1)``) so both see the same machine
load. Prints median batch-1 latencies; its last two lines are the ratios: pruned over
unpruned latency for the C and for the engine (the C should gain what the engine gains: the
issue's target is a difference within 0.05) next to the BOPs ratio, then C / engine latency
per model (target <= 1.3). ``--quick`` only checks that everything runs (tiny model, few
repeats): its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import input_shape, pruned_copy, randomize_bn  # noqa: E402
from bnnprune import engine  # noqa: E402
from bnnprune.deploy.cexport import export_c  # noqa: E402
from bnnprune.engine.bench import machine_info, program_bops  # noqa: E402
from bnnprune.models import build_model  # noqa: E402
from bnnprune.prune.policies import AUTO, check_round_to  # noqa: E402

CFLAGS = ["-std=c99", "-O3", "-march=native"]

HARNESS = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "model.h"

static uint64_t arena[(MODEL_SCRATCH_BYTES + 7) / 8];
static float input[MODEL_INPUT_SIZE], logits[MODEL_OUTPUT_SIZE];

/* usage: bench images.f32 repeats inner -> one line per repeat: seconds per model_run */
int main(int argc, char **argv)
{
    FILE *f;
    int r, i, repeats, inner;
    struct timespec a, b;
    if (argc != 4 || (f = fopen(argv[1], "rb")) == NULL)
        return 2;
    if (fread(input, sizeof(float), MODEL_INPUT_SIZE, f) != MODEL_INPUT_SIZE)
        return 2;
    fclose(f);
    repeats = atoi(argv[2]);
    inner = atoi(argv[3]);
    for (i = 0; i < inner; ++i)
        model_run(input, logits, arena);
    for (r = 0; r < repeats; ++r) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (i = 0; i < inner; ++i)
            model_run(input, logits, arena);
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%.9e\n", ((double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec))
               / inner);
    }
    return logits[0] != logits[0];
}
"""


def build(program: engine.Program, folder: Path) -> Path:
    """Export ``program`` to ``folder`` and build the timing harness; returns the executable."""
    fp = export_c(program, folder)
    (folder / "bench.c").write_text(HARNESS)
    cmd = ["cc", *CFLAGS, "model.c", "bnn_kernels.c", "bench.c", "-lm", "-o", "bench"]
    subprocess.run(cmd, cwd=folder, check=True)
    print(f"built {folder}: flash {fp.flash_bytes:,} B, RAM {fp.ram_bytes:,} B")
    return folder / "bench"


def c_samples(exe: Path, data: Path, repeats: int, inner: int) -> list[float]:
    out = subprocess.run([str(exe), str(data), str(repeats), str(inner)], check=True,
                         capture_output=True, text=True).stdout
    return [float(v) for v in out.split()]


def engine_samples(program: engine.Program, x: np.ndarray, repeats: int,
                   inner: int) -> list[float]:
    program(x, batch_size=1, threads=1)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            program(x, batch_size=1, threads=1)
        out.append((time.perf_counter() - t) / inner)
    return out


def check_same(exe_dir: Path, program: engine.Program, x: np.ndarray) -> None:
    """The C build's logits equal the engine's bit for bit (else the timing is moot)."""
    subprocess.run(["cc", *CFLAGS, "model.c", "bnn_kernels.c", "main.c", "-lm", "-o", "host"],
                   cwd=exe_dir, check=True)
    out = subprocess.run([str(exe_dir / "host"), str(exe_dir / "x.f32")], check=True,
                         capture_output=True, text=True).stdout
    got = np.array([float(v) for v in out.split()], np.float32)
    ref = program(x, threads=1)[0]
    if not np.array_equal(got, ref):
        raise SystemExit(f"C logits differ from the engine's in {exe_dir}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--target", type=float, default=0.5,
                    help="BOPs reduction of the pruned copy (uniform plan)")
    ap.add_argument("--round-to", type=check_round_to, default=AUTO)
    ap.add_argument("--rounds", type=int, default=10, help="alternations of C and engine")
    ap.add_argument("--repeats", type=int, default=30, help="samples per round and build")
    ap.add_argument("--inner", type=int, default=20, help="model runs per sample")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true",
                    help="check that it runs: width 0.25, 2 rounds x 3 samples (no real numbers)")
    args = ap.parse_args()
    if args.quick:
        args.width, args.rounds, args.repeats, args.inner = 0.25, 2, 3, 2
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = randomize_bn(build_model(args.model, width=args.width))
    shape = input_shape(args.model)
    pruned = pruned_copy(model, shape, args.target, args.round_to)
    programs = {"unpruned": engine.compile_model(model, shape),
                "pruned": engine.compile_model(pruned, shape)}
    x = np.random.default_rng(4).standard_normal((1, *shape)).astype(np.float32)
    samples: dict[str, list[float]] = {f"{k}_{w}": [] for k in programs for w in ("c", "engine")}
    with tempfile.TemporaryDirectory() as tmp:
        exes = {}
        for name, program in programs.items():
            folder = Path(tmp) / name
            exes[name] = build(program, folder)
            x.tofile(folder / "x.f32")
            check_same(folder, program, x)
        for _ in range(args.rounds):
            for name, program in programs.items():
                samples[f"{name}_c"] += c_samples(exes[name], Path(tmp) / name / "x.f32",
                                                  args.repeats, args.inner)
                samples[f"{name}_engine"] += engine_samples(program, x, args.repeats, args.inner)
    med = {k: statistics.median(v) for k, v in samples.items()}
    bops = {k: program_bops(p) for k, p in programs.items()}
    res = {
        "machine": {**machine_info(), "cc": subprocess.run(["cc", "--version"], text=True,
                                                           capture_output=True).stdout
                    .splitlines()[0], "cflags": CFLAGS, "arch": platform.machine()},
        "model": {"name": args.model, "width": args.width, "target": args.target,
                  "round_to": args.round_to},
        "median_latency_s": med,
        "c_over_engine": {k: med[f"{k}_c"] / med[f"{k}_engine"] for k in programs},
        "pruned_over_unpruned": {"c_latency": med["pruned_c"] / med["unpruned_c"],
                                 "engine_latency": med["pruned_engine"] / med["unpruned_engine"],
                                 "bops": bops["pruned"] / bops["unpruned"]},
        "quick": args.quick,
    }
    print(f"model {args.model} width {args.width}, batch 1, one thread, {' '.join(CFLAGS)}"
          + ("  (--quick: numbers are meaningless)" if args.quick else ""))
    for k in programs:
        print(f"  {k:<9} C {med[f'{k}_c'] * 1e6:9.1f} us   engine "
              f"{med[f'{k}_engine'] * 1e6:9.1f} us")
    p = res["pruned_over_unpruned"]
    print(f"pruned/unpruned latency: C {p['c_latency']:.3f}, engine {p['engine_latency']:.3f} "
          f"(difference {p['c_latency'] - p['engine_latency']:+.3f}), BOPs {p['bops']:.3f}")
    print("C / engine latency: " + ", ".join(f"{k} {v:.2f}"
                                             for k, v in res["c_over_engine"].items()))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
