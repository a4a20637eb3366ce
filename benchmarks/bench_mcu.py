"""Instructions per inference of the C export on emulated Cortex-M cores, unpruned vs pruned.

    .venv/bin/python benchmarks/bench_mcu.py [--model small] [--width 1.0] [--target 0.5]
        [--cores cortex-m4,cortex-m7,cortex-m3,cortex-m0plus] [--images 3] [--json out.json]
        [--per-op]

Builds the model (BatchNorm statistics randomized, as in bench_c.py) and a pruned copy
(uniform plan for ``--target`` BOPs reduction, magnitude criterion), exports both with
``bnnprune.deploy.cexport``, builds them with ``arm-none-eabi-gcc -O2`` for each core and
runs them on qemu's mps2 boards with the project's instruction-counting plugin
(``bnnprune.deploy.mcu``). Prints flash and RAM bytes, code bytes and instructions per
inference (mean over ``--images`` random images), and the pruned/unpruned ratios.
``--per-op`` adds where one inference's instructions go, by function: the export built
again with ``-fno-inline-functions-called-once`` (each layer's function stays a function;
the total differs a little from the table's) and run on one image with the plugin's
``blocks=`` profile, each block's count given to the function (``nm``) that holds it.

Instruction counts under emulation, not cycles: deterministic, so this can run on a busy
machine; qemu models no pipeline, cache or flash wait states. Every run also checks that the
logits equal the engine's bit for bit.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import input_shape, pruned_copy, randomize_bn  # noqa: E402
from bnnprune import engine  # noqa: E402
from bnnprune.deploy import mcu  # noqa: E402
from bnnprune.deploy.cexport import export_c  # noqa: E402
from bnnprune.engine.bench import program_bops  # noqa: E402
from bnnprune.models import build_model  # noqa: E402
from bnnprune.prune.policies import AUTO, check_round_to  # noqa: E402

NO_INLINE = "-fno-inline-functions-called-once"  # each layer's function stays a function


def _functions(elf: Path) -> list[tuple[int, int, str]]:
    """(start, size, name) of the ELF's functions, from nm (Thumb bit dropped)."""
    out = subprocess.run([mcu.NM, "-S", "-n", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    return [(int(r[0], 16) & ~1, int(r[1], 16), r[3]) for r in rows
            if len(r) == 4 and r[2] in "tTwW"]


def per_op(program: engine.Program, target: mcu.Target, image: np.ndarray
           ) -> tuple[int, dict[str, int]]:
    """One inference's instructions (between the marks) and the whole run's by function."""
    t = dataclasses.replace(target, cpu_flags=(*target.cpu_flags, NO_INLINE))
    with tempfile.TemporaryDirectory(prefix="bnnprune-mcu-") as tmp:
        export_c(program, tmp)
        elf, _ = mcu.build_firmware(tmp, t)
        run = mcu.run_firmware(elf, t, image[None], plugin=mcu.build_plugin(tmp),
                               plugin_options=("blocks=blocks.txt",))
        functions = _functions(elf)
        by_name: collections.Counter[str] = collections.Counter()
        for line in (elf.parent / "blocks.txt").read_text().splitlines():
            addr, insns, runs = int(line.split()[0], 16), *map(int, line.split()[1:])
            name = next((n for a, size, n in functions if a <= addr < a + size), "?")
            by_name[name] += insns * runs
    return run.insns[0], dict(by_name)


def print_per_op(total: int, by_name: dict[str, int]) -> None:
    """The functions with at least 0.5% of the inference's instructions."""
    print(f"{'':<14}  by function ({NO_INLINE}; one image, {total:,} between the marks)")
    for name, n in sorted(by_name.items(), key=lambda kv: -kv[1]):
        if n >= 0.005 * total:
            print(f"{'':<14}  {name:<28}{n:>14,}{100 * n / total:>7.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--target", type=float, default=0.5, help="BOPs ratio of the pruned copy")
    ap.add_argument("--round-to", type=check_round_to, default=AUTO)
    ap.add_argument("--cores", default="cortex-m4,cortex-m7,cortex-m3,cortex-m0plus")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--per-op", action="store_true", help="add the instructions by function")
    args = ap.parse_args()
    targets = [mcu.get_target(name) for name in args.cores.split(",")]
    mcu.require_tools()
    torch.manual_seed(0)
    model = randomize_bn(build_model(args.model, width=args.width))
    shape = input_shape(args.model)
    programs = {"unpruned": engine.compile_model(model, shape),
                "pruned": engine.compile_model(pruned_copy(model, shape, args.target,
                                                           args.round_to), shape)}
    bops = {k: program_bops(p) for k, p in programs.items()}
    gcc = subprocess.run([mcu.CC, "--version"], capture_output=True, text=True).stdout
    res = {"model": {"name": args.model, "width": args.width, "target": args.target},
           "compiler": gcc.splitlines()[0], "qemu": subprocess.run(
               [mcu.QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0],
           "bops": bops, "cores": {}}
    print(f"model {args.model} width {args.width}, pruned to {args.target} of the BOPs "
          f"(measured {bops['pruned'] / bops['unpruned']:.3f}); {res['compiler']}, {mcu.OPT}")
    print("instructions per inference: counted under qemu emulation, not cycles "
          f"(mean of {args.images} random images)")
    print(f"{'core':<14}{'':<10}{'flash (B)':>11}{'RAM (B)':>10}{'code (B)':>10}"
          f"{'instructions':>14}  exact")
    for t in targets:
        costs = {k: mcu.measure(p, t, images=args.images) for k, p in programs.items()}
        res["cores"][t.name] = {k: {"flash_bytes": c.footprint.flash_bytes,
                                    "ram_bytes": c.footprint.ram_bytes,
                                    "code_bytes": c.code_bytes, "instructions": c.insns,
                                    "exact": c.exact} for k, c in costs.items()}
        for k, c in costs.items():
            print(f"{t.name if k == 'unpruned' else '':<14}{k:<10}"
                  f"{c.footprint.flash_bytes:>11,}{c.footprint.ram_bytes:>10,}"
                  f"{c.code_bytes:>10,}{c.insns:>14,}  {'yes' if c.exact else 'NO'}")
        if args.per_op:
            image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            for k, prog in programs.items():
                total, by_name = per_op(prog, t, image)
                print(f"{'':<14}{k}")
                print_per_op(total, by_name)
                res["cores"][t.name][k]["by_function"] = by_name
        u, p = costs["unpruned"], costs["pruned"]
        print(f"{'':<14}{'ratio':<10}{p.footprint.flash_bytes / u.footprint.flash_bytes:>11.3f}"
              f"{p.footprint.ram_bytes / u.footprint.ram_bytes:>10.3f}"
              f"{p.code_bytes / u.code_bytes:>10.3f}{p.insns / u.insns:>14.3f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
