"""Instructions per inference of the engine on aarch64 (NEON), counted under qemu-aarch64.

    .venv/bin/python benchmarks/aarch64_instructions.py [--models nin:0.75,small]
        [--configs popcount/off,popcount/default,csa/off,csa/default] [--batch 1]
        [--json out.json]

No ARM hardware is needed: each model (BN statistics randomized, as in bench_engine.py) is
compiled to a ``.bnn`` here, then run by the aarch64 CPython with numba under qemu-user of
``scripts/aarch64_python.sh`` (prepared on first use), once per configuration
``SCHEME/BYTES``: ``BNNPRUNE_COUNTING=SCHEME`` and ``BNNPRUNE_BYTE_COUNTS=BYTES`` (``off``:
64-bit lanes, per-word ``cnt`` + ``uaddlp`` x2 + ``uadalp``; ``N``: windows of N words or
more counted in bytes, ``cnt`` + a bytewise ``add`` per word and the widening chain once per
31 words; ``default``: not set, NEON's own choice, ``intrinsics.byte_min_words``). The
project's instruction-counting qemu plugin
(``bnnprune/deploy/c/mcu/qemu_insn_count.c``, :func:`bnnprune.deploy.mcu.build_plugin`)
counts the guest instructions between two calls of a marker function (a ``ret`` the guest
maps at a fixed address): after an untimed first run (numba compiles or loads the kernels),
one whole inference (``plan.run``), then every op alone in order (inputs as a run leaves
them; the op's kernel calls as one chained call, as a run makes them), each less the count
of an empty pair of marks (the marker calls themselves). The Python interpreter's own
instructions between the marks (the plan's calls) are in the figures, the same in every
configuration. Every configuration's logits must equal the x86
engine's bit for bit.

Instructions counted under emulation (qemu), not cycles: qemu models no pipeline, so an
instruction of the widening chain counts as much as a bytewise ``add``. The kernels' counts
are deterministic; the whole inference is counted twice, the second count printed as the
difference to the first (a few thousand instructions of the interpreter).

The first run of a byte-count setting compiles the kernels under qemu (20-30 minutes on a
2-core machine beside another job; the schemes of one setting share them; the settings run
in parallel), cached in ``$BNNPRUNE_AARCH64_CACHE/numba`` (default
``.cache/aarch64-python/numba``, a subfolder per forced ``BNNPRUNE_BYTE_COUNTS``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bnnprune import engine
from bnnprune.deploy.mcu import build_plugin
from bnnprune.engine.kernels.intrinsics import BYTE_ENV, SCHEME_ENV
from bnnprune.machine import machine_info
from bnnprune.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import input_shape, randomize_bn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "aarch64_python.sh"
MARK = 0x5A5A000000  # where the guest maps its marker function (a lone `ret`)

# run under qemu-aarch64: argv = folder, batch; marks around each counted segment
GUEST = """
import ctypes, json, sys
from pathlib import Path
import numpy as np
from bnnprune.engine import load
from bnnprune.engine.kernels import chain_calls
from bnnprune.engine.kernels import intrinsics as I
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
MAP_PRIVATE_ANON_FIXED_NOREPLACE = 0x02 | 0x20 | 0x100000
page = libc.mmap(MARK, 4096, 7, MAP_PRIVATE_ANON_FIXED_NOREPLACE, -1, 0)
assert page == MARK, f"marker page at {page!r}, wanted {MARK:#x}"
ctypes.memmove(page, bytes.fromhex("c0035fd6"), 4)  # ret
mark = ctypes.CFUNCTYPE(None)(page)
folder, batch = Path(sys.argv[1]), int(sys.argv[2])
info = {"arch": I.target_arch(), "isa": I.instruction_set(), "scheme": I.counting_scheme(),
        "byte_min_words": I.BYTE_MIN_WORDS, "segments": []}
for f in sorted(folder.glob("*.bnn")):
    prog = load(f)
    x = np.load(folder / f"{f.stem}.x.npy")
    plan = prog.plan(batch, 1)
    np.save(folder / f"{f.stem}.{sys.argv[3]}.npy", plan.run(x).copy())  # compiles or loads
    segs = info["segments"]
    for _ in range(3):
        mark(); mark()
        segs.append([f.stem, "empty"])
    for _ in range(2):
        mark(); plan.run(x); mark()
        segs.append([f.stem, "run"])
    # each op as one chained call (the run's compiled chain, no other kernel to compile)
    steps = [(idx, chain_calls(calls, min_run=1)) for idx, calls in plan.steps]
    plan.load(x)
    for _, calls in steps:
        for c in calls:
            c()
    plan.load(x)
    for idx, calls in steps:
        mark()
        for c in calls:
            c()
        mark()
        segs.append([f.stem, idx])
print(json.dumps(info))
"""


def export(models: list[tuple[str, float]], batch: int, folder: Path) -> dict:
    """Each model as ``.bnn`` with an input and the x86 engine's logits; per model its ops'
    kinds and binary convs' words per window (``dense``: patch-matrix rows)."""
    facts = {}
    for name, width in models:
        stem = f"{name}_w{width:g}"
        shape = input_shape(name)
        prog = engine.compile_model(randomize_bn(build_model(name, width=width)), shape)
        engine.save(prog, folder / f"{stem}.bnn")
        x = np.random.default_rng(7).standard_normal((batch, *shape)).astype(np.float32)
        np.save(folder / f"{stem}.x.npy", x)
        ops = []
        for idx, op in enumerate(prog.ops):
            row = {"idx": idx, "name": op.name or f"op{idx}", "kind": op.kind}
            if op.kind == "bconv":
                wb = prog.prepared(idx).wb
                row |= {"words": int(wb.shape[1] * wb.shape[2]),
                        "dense": bool(prog.prepared(idx).dense),
                        "cout": int(op.attrs["cout"])}
            ops.append(row)
        facts[stem] = {"ref": prog.plan(batch, 1).run(x).copy(), "ops": ops}
    return facts


def run_config(config: str, folder: Path, batch: int, plugin: Path, env: dict) -> dict:
    """One configuration ``SCHEME/BYTES`` under qemu: the guest's info and its counts per
    segment."""
    scheme, nbytes = config.split("/")
    out = folder / f"insns.{config.replace('/', '_')}.txt"
    qemu_plugin = f"{plugin},mark={MARK:#x},out={out}"
    code = GUEST.replace("MARK", f"{MARK:#x}")
    tag = config.replace("/", "_")
    forced = {} if nbytes == "default" else {BYTE_ENV: nbytes}
    r = subprocess.run(["bash", str(SCRIPT), "-c", code, str(folder), str(batch), tag],
                       env={**env, SCHEME_ENV: scheme, **forced, "QEMU_PLUGIN": qemu_plugin},
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        sys.exit(f"{config}: the aarch64 run failed:\n{r.stderr[-4000:]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    counts = [int(v) for v in out.read_text().split()]
    if len(counts) != len(info["segments"]):
        sys.exit(f"{config}: {len(counts)} counts for {len(info['segments'])} segments")
    info["counts"] = counts
    return info


def tabulate(facts: dict, runs: dict, configs: list[str], batch: int) -> dict:
    """Per model: the whole inference and every op, net of the empty marks, per config."""
    res = {}
    for stem, fact in facts.items():
        per: dict[str, dict] = {}
        for config, info in runs.items():
            segs = [(s, c) for (m, s), c in zip(info["segments"], info["counts"], strict=True)
                    if m == stem]
            empty = min(c for s, c in segs if s == "empty")
            run = [c - empty for s, c in segs if s == "run"]
            ops = {s: c - empty for s, c in segs if isinstance(s, int)}
            per[config] = {"run": run, "ops": ops}
        rows = []
        for op in fact["ops"]:
            if op["idx"] not in per[configs[0]]["ops"]:
                continue  # an op the plan folds into another's step
            rows.append({**op, **{c: per[c]["ops"][op["idx"]] for c in configs}})
        res[stem] = {"batch": batch, "run": {c: per[c]["run"] for c in configs}, "ops": rows}
    return res


def report(res: dict, configs: list[str], base: str) -> str:
    lines = []
    for stem, r in res.items():
        lines.append(f"\n{stem}, batch {r['batch']}: instructions per inference (ratio to {base})")
        for c in configs:
            v = r["run"][c]
            lines.append(f"  {c:<14} {v[0]:>14,} ({v[0] / r['run'][base][0]:.3f}); "
                         f"second count {v[1] - v[0]:+,}")
        lines.append("  binary convs, instructions per op (ratio to " + base + "):")
        head = f"  {'op':<12}{'words':>6}{'dense':>6}" + "".join(f"{c:>22}" for c in configs)
        lines.append(head)
        for op in r["ops"]:
            if op["kind"] != "bconv":
                continue
            cells = "".join(f"{op[c]:>13,} ({op[c] / op[base]:.3f})" for c in configs)
            lines.append(f"  {op['name']:<12}{op['words']:>6}{'yes' if op['dense'] else '':>6}"
                         + cells)
        other = {c: sum(op[c] for op in r["ops"] if op["kind"] != "bconv") for c in configs}
        lines.append(f"  {'other ops':<24}" + "".join(
            f"{other[c]:>13,} ({other[c] / other[base]:.3f})" for c in configs))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="nin:0.75,small",
                    help="NAME[:WIDTH],... (nin, small)")
    ap.add_argument("--configs",
                    default="popcount/off,popcount/default,csa/off,csa/default",
                    help="SCHEME/BYTES,...: BNNPRUNE_COUNTING / BNNPRUNE_BYTE_COUNTS "
                         "(default: not set)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    models = [(m.split(":")[0], float(m.split(":")[1]) if ":" in m else 1.0)
              for m in args.models.split(",")]
    configs = args.configs.split(",")
    cache = Path(os.environ.get("BNNPRUNE_AARCH64_CACHE", REPO / ".cache" / "aarch64-python"))
    env = {**os.environ, "PYTHON": sys.executable, "NUMBA_CACHE_DIR": str(cache / "numba"),
           "BNNPRUNE_AARCH64_CACHE": str(cache)}
    for k in (SCHEME_ENV, BYTE_ENV):
        env.pop(k, None)
    qemu = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True)
    print("instructions counted under emulation (qemu), not cycles")
    print(f"emulator: {qemu.stdout.splitlines()[0]}; host {platform.machine()}, "
          f"flags {' '.join(machine_info().get('cpu_flags', []))}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        facts = export(models, args.batch, folder)
        plugin = build_plugin(folder / "plugin")
        # one thread per byte-count setting (each compiles into a numba cache folder of its
        # own), its schemes one after the other
        groups: dict[str, list[str]] = {}
        for config in configs:
            groups.setdefault(config.split("/")[1], []).append(config)

        def run_group(group: list[str]) -> dict:
            return {c: run_config(c, folder, args.batch, plugin, env) for c in group}

        with ThreadPoolExecutor(len(groups)) as pool:
            done = list(pool.map(run_group, groups.values()))
        runs = {c: info for d in done for c, info in d.items()}
        for config in configs:
            info = runs[config]
            if info["arch"] != "aarch64" or info["isa"] != "neon":
                sys.exit(f"{config}: the guest is {info['arch']} / {info['isa']}, not aarch64")
            tag = config.replace("/", "_")
            for stem, fact in facts.items():
                got = np.load(folder / f"{stem}.{tag}.npy")
                if not np.array_equal(got.view(np.uint32), fact["ref"].view(np.uint32)):
                    sys.exit(f"{config}: {stem}'s logits differ from the x86 engine's")
            print(f"{config}: scheme {info['scheme']}, byte counts from "
                  f"{info['byte_min_words']} words; logits equal the x86 engine's", flush=True)
    res = tabulate(facts, runs, configs, args.batch)
    print(report(res, configs, configs[0]))
    if args.json:
        args.json.write_text(json.dumps({"configs": configs, "models": res}, indent=1))


if __name__ == "__main__":
    main()
