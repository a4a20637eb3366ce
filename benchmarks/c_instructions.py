"""Instructions per inference of the C export, counted by valgrind's callgrind (not time).

    .venv/bin/python benchmarks/c_instructions.py [--check] [--per-op] [--cflags "-O3 ..."]
        [--model small] [--aarch64]

Exports the zoo's ``small`` (width 1, BatchNorm statistics randomized as in bench_c.py) and
its copy pruned to half the BOPs (uniform plan, magnitude criterion), builds each with a
harness that calls ``model_run`` once on a fixed image, and counts the instructions executed
inside ``model_run`` with ``valgrind --tool=callgrind --toggle-collect=model_run``: the same
count on every run of the same binary, so it can gate CI on a shared machine where timing
cannot. Default flags ``-std=c99 -O3 -march=x86-64-v3`` (AVX2, FMA, POPCNT, BMI2: the x86-64
build docs/deploy.md recommends), independent of the machine's own CPU.

``--check`` compares the counts with ``c_instructions_budget.json`` (next to this file, or
``--budget``) and exits 1 when one is over its budget. ``--per-op`` also prints each layer
function's own count (built with ``-fno-inline-functions-called-once``: one function a
layer).
``--model nin`` counts another zoo model (3x32x32 input) instead of ``small``.
``--aarch64`` builds with ``aarch64-linux-gnu-gcc -static`` (default flags ``-std=c99 -O3``:
the NEON path) and counts under ``qemu-aarch64`` (user mode) with the project's plugin
(``deploy.mcu.build_plugin``) between the two ``mcu_mark`` calls around ``model_run``.
Instruction counts are not cycles: an instruction of a vector path does 4-16 channels' work.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import input_shape, pruned_copy, randomize_bn  # noqa: E402
from bnnprune import engine  # noqa: E402
from bnnprune.deploy.cexport import export_c  # noqa: E402
from bnnprune.deploy.mcu import MARK, build_plugin  # noqa: E402
from bnnprune.models import build_model  # noqa: E402
from bnnprune.prune.policies import AUTO  # noqa: E402

BUDGET = Path(__file__).resolve().parent / "c_instructions_budget.json"
CFLAGS = ("-std=c99", "-O3", "-march=x86-64-v3")
ARM_CFLAGS = ("-std=c99", "-O3")
ARM_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"

HARNESS = r"""
#include <stdio.h>
#include "model.h"

static uint64_t arena[(MODEL_SCRATCH_BYTES + 7) / 8];
static float input[MODEL_INPUT_SIZE], logits[MODEL_OUTPUT_SIZE];

/* called before and after model_run: the qemu plugin counts between the two calls */
__attribute__((noinline)) void mcu_mark(void) { __asm__ volatile(""); }

/* one model_run on a fixed image (values -6..6): callgrind counts what runs inside it */
int main(void)
{
    int i, r;
    for (i = 0; i < MODEL_INPUT_SIZE; ++i)
        input[i] = (float)((i * 7919) % 13) - 6.0f;
    mcu_mark();
    r = model_run(input, logits, arena);
    mcu_mark();
    if (r != 0)
        return 1;
    printf("%.9g\n", (double)logits[0]);
    return 0;
}
"""


def programs(name: str = "small") -> dict[str, engine.Program]:
    """The exported zoo model (random BatchNorm, seed 0) and its half-BOPs pruned copy."""
    torch.manual_seed(0)
    shape = input_shape(name)
    model = randomize_bn(build_model(name))
    pruned = pruned_copy(model, shape, 0.5, AUTO)
    return {"unpruned": engine.compile_model(model, shape),
            "pruned": engine.compile_model(pruned, shape)}


def count_aarch64(program: engine.Program, folder: Path, cflags: tuple[str, ...]) -> int:
    """Instructions inside one ``model_run`` of the aarch64 build, under qemu-aarch64."""
    export_c(program, folder)
    (folder / "count.c").write_text(HARNESS)
    subprocess.run([ARM_CC, *cflags, "-static", "-no-pie", "model.c", "bnn_kernels.c",
                    "count.c", "-lm", "-o", "count"], cwd=folder, check=True)
    syms = subprocess.run([ARM_CC.replace("gcc", "nm"), "count"], cwd=folder, check=True,
                          capture_output=True, text=True).stdout
    mark = next(int(line.split()[0], 16) for line in syms.splitlines()
                if line.split()[-1:] == [MARK])
    plugin = build_plugin(folder)
    subprocess.run([QEMU, "-plugin", f"{plugin},mark={mark:#x},out=insns.txt", "./count"],
                   cwd=folder, check=True, capture_output=True)
    return int((folder / "insns.txt").read_text().split()[0])


def count(program: engine.Program, folder: Path, cflags: tuple[str, ...],
          per_op: bool = False) -> tuple[int, dict[str, int]]:
    """Instructions inside one ``model_run`` (and, with ``per_op``, each function's own)."""
    export_c(program, folder)
    (folder / "count.c").write_text(HARNESS)
    extra = ["-g", "-fno-inline-functions-called-once"] if per_op else []
    subprocess.run(["cc", *cflags, *extra, "model.c", "bnn_kernels.c", "count.c", "-lm", "-o",
                    "count"], cwd=folder, check=True)
    out = folder / "callgrind.out"
    subprocess.run(["valgrind", "--tool=callgrind", "--toggle-collect=model_run",
                    f"--callgrind-out-file={out}", "./count"], cwd=folder, check=True,
                   capture_output=True)
    text = out.read_text()
    total = int(re.search(r"^totals:\s+(\d+)", text, re.M).group(1))
    funcs: dict[str, int] = {}
    if per_op:
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)], check=True,
                             capture_output=True, text=True).stdout
        for n, name in re.findall(r"^\s*([\d,]+) \([^)]*\)\s+\S*?:(\w+)", ann, re.M):
            funcs[name] = funcs.get(name, 0) + int(n.replace(",", ""))
    return total, funcs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when over the budget file")
    ap.add_argument("--per-op", action="store_true", help="each layer function's own count")
    ap.add_argument("--cflags", default=" ".join(CFLAGS))
    ap.add_argument("--budget", type=Path, default=BUDGET, help="budget file (JSON)")
    ap.add_argument("--model", default="small", help="zoo model (budget: small only)")
    ap.add_argument("--aarch64", action="store_true",
                    help=f"count the {ARM_CC} build under {QEMU} (NEON path)")
    args = ap.parse_args()
    if args.aarch64:
        if args.check or args.per_op:
            ap.error("--aarch64 counts totals only (no --check, no --per-op)")
        missing = [t for t in (ARM_CC, QEMU) if shutil.which(t) is None]
        if missing:
            raise SystemExit(f"{', '.join(missing)} not found (Debian: apt-get install "
                             "gcc-aarch64-linux-gnu qemu-user)")
        cflags = tuple(args.cflags.split()) if args.cflags != " ".join(CFLAGS) else ARM_CFLAGS
        with tempfile.TemporaryDirectory() as tmp:
            counts = {name: count_aarch64(p, Path(tmp) / name, cflags)
                      for name, p in programs(args.model).items()}
        print(f"instructions per inference ({QEMU} with the counting plugin, {ARM_CC} "
              f"{' '.join(cflags)}; instructions under emulation, not cycles)")
        for name, n in counts.items():
            print(f"  {args.model} {name:<9} {n:>12,}")
        print(f"  pruned/unpruned {counts['pruned'] / counts['unpruned']:.3f}")
        return
    if args.check and args.model != "small":
        ap.error("the budget is for small")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (Debian: apt-get install valgrind)")
    cflags = tuple(args.cflags.split())
    budget = json.loads(args.budget.read_text())
    if args.check and cflags != tuple(budget["cflags"]):
        raise SystemExit(f"--check counts with the budget's flags {budget['cflags']}")
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, program in programs(args.model).items():
            counts[name], funcs = count(program, Path(tmp) / name, cflags, args.per_op)
            for fn, n in sorted(funcs.items(), key=lambda kv: -kv[1]):
                print(f"  {name:<9} {fn:<28} {n:>12,}")
    print(f"instructions per inference (callgrind, {' '.join(cflags)}; instructions, not "
          "time)")
    over = []
    for name, n in counts.items():
        if args.model != "small":  # the budget is small's
            print(f"  {args.model} {name:<9} {n:>12,}")
            continue
        limit = budget["budget"][name]
        print(f"  {args.model} {name:<9} {n:>12,}   budget {limit:>12,}")
        if n > limit:
            over.append(name)
    print(f"  pruned/unpruned {counts['pruned'] / counts['unpruned']:.3f}")
    if args.check and over:
        raise SystemExit(f"over the instruction budget: {', '.join(over)} (see {args.budget})")


if __name__ == "__main__":
    main()
