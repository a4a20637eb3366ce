"""Per-machine latency tables of the packed engine (NetAdapt-style lookup tables).

Each op of a program is timed alone, on random inputs and weights, at the channel counts a
caller asks for: a one-op program (with a ``sign``/``flatten`` in front and a cheap terminal
op behind where the op needs them) is planned for the batch size and thread count, and only
the op's own kernel calls (its padding / patch matrix included) are timed. A count is timed
interleaved with the same op at its full width (two runs of each in turn, the best of each
counts) and kept as the ratio of the two, so a table's entries are comparable even when the
machine's load changed between them. Each op of the unpruned program is also timed inside
whole runs of it, where it finds the caches colder (weights and activations evicted by the
ops before it): that time, at full width, scales the op's ratios (the cold share shrinks
with the channels too). A program's predicted latency is the sum of its ops' times (ratios
bilinear between measured counts) plus the measured per-run overhead of the unpruned program
(input copy, Python dispatch): by construction the unpruned prediction equals its measured
latency.

Measurements are cached as JSON in the user cache folder, one file per machine
(``~/.cache/bnnprune/latency/<machine-key>.json``; ``BNNPRUNE_CACHE_DIR`` or
``XDG_CACHE_HOME`` move it). Entries are keyed by the op's geometry, channel counts, batch
size and threads, and the file records a fingerprint of the kernel sources: kernels that
changed invalidate it. An unreadable or corrupt file is rebuilt, never an error.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnnprune.atomic import atomic_write_bytes
from bnnprune.engine.errors import EngineError
from bnnprune.engine.ir import Op, ValueInfo
from bnnprune.engine.kernels.base import KERNELS_HASH
from bnnprune.engine.kernels.chain import chain_calls
from bnnprune.engine.pack import tail_mask, words
from bnnprune.engine.program import Program, _threads, is_pruned_copy
from bnnprune.engine.timing import MIN_WINDOW_S, best_time, elapsed, runs, step_samples
from bnnprune.machine import machine_info

__all__ = ["CACHE_VERSION", "EngineCostModel", "LatencyCache", "OpTable", "build_cost_model",
           "cache_path", "cache_root", "machine_key", "op_channels", "program_at"]

# 2: ops timed as chained calls (kernels.chain), not a Python call per kernel; 3: a count's
# entry is its time over the op's full width, timed interleaved (not a time of its own)
CACHE_VERSION = 3
CONV_KINDS = ("bconv", "fconv")
SAVE_EVERY_S = 20.0  # a long table build writes the cache this often
WHOLE_REPEATS = 20  # at least this many runs of the whole program (its overhead is fragile)
RATIO_CHUNK = 6  # counts timed interleaved with one full-width reference (then saved)
RECHECK_TOLERANCE = 0.05  # an entry this much slower than one at more channels is re-timed


def _kernels_fingerprint() -> str:
    """Hash of the kernel sources (:data:`~bnnprune.engine.kernels.base.KERNELS_HASH`) and the
    plan's: a cache built by other kernels is not reused."""
    plan = Path(__file__).with_name("plan.py").read_bytes()
    return hashlib.sha1(KERNELS_HASH.encode() + plan).hexdigest()[:12]


def machine_key() -> str:
    """CPU model, logical cores and numba version as a file-name-safe key."""
    import numba

    m = machine_info()
    raw = f"{m['cpu']}-{m['logical_cores']}c-numba{numba.__version__}"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", raw).strip("-")[:80]
    return f"{slug}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


def cache_root() -> Path:
    """The user cache folder of bnnprune's measurement tables (``BNNPRUNE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/bnnprune`` or ``~/.cache/bnnprune``)."""
    env = os.environ.get("BNNPRUNE_CACHE_DIR")
    return (Path(env) if env else
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnnprune")


def cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The latency cache file of this machine."""
    if cache_dir is None:
        cache_dir = cache_root() / "latency"
    return Path(cache_dir) / f"{machine_key()}.json"


class LatencyCache:
    """Measured op times of this machine, read from and written back to one JSON file
    (also other measured op costs: ``fingerprint`` then names what they were measured with,
    in place of the engine's kernel sources)."""

    def __init__(self, path: str | os.PathLike[str], fingerprint: str | None = None) -> None:
        self.path = Path(path)
        self.kernels = fingerprint or _kernels_fingerprint()
        self.entries: dict[str, float] = {}
        self.rebuilt = False  # True when a damaged or outdated file was discarded
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            ok = (isinstance(data, dict) and data.get("version") == CACHE_VERSION
                  and isinstance(data.get("entries"), dict)
                  and all(isinstance(v, float) and v > 0 for v in data["entries"].values()))
        except (OSError, UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            warnings.warn(f"latency cache {self.path} is unreadable; rebuilding it", stacklevel=3)
            self.rebuilt = True
            return
        if data.get("kernels") != self.kernels:  # other kernels: their times do not apply
            self.rebuilt = True
            return
        self.entries = {str(k): float(v) for k, v in data["entries"].items()}

    def save(self) -> None:
        """Write the file atomically (a failure to write is a warning: the run goes on)."""
        data = {"version": CACHE_VERSION, "kernels": self.kernels, "machine": machine_key(),
                "entries": dict(sorted(self.entries.items()))}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(data, indent=0).encode())
        except OSError as e:
            warnings.warn(f"cannot write the latency cache {self.path}: {e}", stacklevel=2)


# --------------------------------------------------------------------------- one-op programs


def op_channels(program: Program, idx: int) -> tuple[int, int]:
    """(input channels, output channels) of op ``idx`` (a concatenation: its output twice)."""
    op = program.ops[idx]
    out = program.values[op.output].c
    if op.kind in ("concat", "concat_bits"):
        return out, out
    return program.values[op.inputs[0]].c, out


def _signature(program: Program, idx: int) -> str:
    """What an op's time depends on besides its channel counts."""
    op = program.ops[idx]
    x, y = program.values[op.inputs[0]], program.values[op.output]
    attrs = {k: v for k, v in sorted(op.attrs.items()) if k not in ("cin", "cout")}
    return json.dumps([op.kind, len(op.inputs), x.kind, x.h, x.w, x.flat, y.kind, y.h, y.w,
                       attrs], separators=(",", ":"))


def _entry_key(sig: str, cin: int, cout: int, batch: int, threads: int) -> str:
    return f"{sig}|{cin}|{cout}|b{batch}|t{threads}"


def _random_arrays(op: Op, cin: int, cout: int, rng: np.random.Generator) -> dict[str, Any]:
    """Weights and per-channel arrays of ``op`` resized to (cin, cout), random contents."""
    kh, kw = op.attrs.get("kernel", (1, 1))
    f32 = np.float32
    if op.kind == "bconv":
        w = rng.integers(0, 2**63, size=(cout, kh, kw * words(cin)), dtype=np.int64)
        arrays = {"w": w.view(np.uint64) & np.tile(tail_mask(cin), kw)}
        if op.attrs["mode"] == "bits":
            arrays.update(thr=np.full(cout, (cin * kh * kw) // 2, np.int32),
                          flip=np.zeros(cout, np.uint8))
        else:
            arrays.update({k: np.ones(cout, f32) for k in ("m1", "a1", "m2", "a2")})
        return arrays
    if op.kind == "fconv":
        return {"w": rng.standard_normal((kh * kw * cin, cout)).astype(f32),
                **{k: np.ones(cout, f32) for k in ("b", "alpha", "beta")}}
    return {k: np.ones(cout, f32) for k in op.arrays}  # affine, prelu: per channel


def _one_op_program(program: Program, idx: int, cin: int, cout: int,
                    rng: np.random.Generator) -> tuple[Program, int]:
    """A program whose op ``t`` is op ``idx`` at (cin, cout) channels; returns (program, t)."""
    op = program.ops[idx]
    x, y = program.values[op.inputs[0]], program.values[op.output]
    values = [ValueInfo("float", x.h, x.w, cin, False, "input")]
    ops: list[Op] = []

    def add(kind: str, inputs: list[int], v: ValueInfo, attrs: dict[str, Any] | None = None,
            arrays: dict[str, Any] | None = None) -> int:
        values.append(v)
        ops.append(Op(kind, inputs, len(values) - 1, attrs or {}, arrays or {}, kind))
        return len(values) - 1

    src = 0
    if x.kind == "bits":
        src = add("sign", [src], ValueInfo("bits", x.h, x.w, cin))
    if x.flat:
        src = add("flatten", [src], ValueInfo(x.kind, x.h, x.w, cin, True))
    attrs = dict(op.attrs)
    if op.kind in CONV_KINDS:
        attrs.update(cin=cin, cout=cout)
    n_in = len(op.inputs)
    out = add(op.kind, [src] * n_in, ValueInfo(y.kind, y.h, y.w, cout * (n_in if op.kind in (
        "concat", "concat_bits") else 1), y.flat), attrs, _random_arrays(op, cin, cout, rng))
    target = len(ops) - 1
    v = values[out]
    if v.kind == "bits":  # a program ends in floats: a cheap full-window op closes it
        kw = words(v.c)
        add("bconv", [out], ValueInfo("float", 1, 1, 1, v.flat),
            {"kernel": [v.h, v.w], "stride": [1, 1], "padding": [0, 0], "cin": v.c, "cout": 1,
             "pad_value": 1, "mode": "float"},
            {"w": np.zeros((1, v.h, v.w * kw), np.uint64),
             **{k: np.ones(1, np.float32) for k in ("m1", "a1", "m2", "a2")}})
    return Program((cin, x.h, x.w), values, ops, len(values) - 1), target


def program_at(program: Program, channels: Sequence[int]) -> Program:
    """``program``'s ops at other channel counts (``channels``: one per value), with random
    contents: what depends only on shapes (array sizes, buffers, kernel choices) is that of
    the channel-pruned program. A full-precision conv that cannot fold its epilogue into
    thresholds keeps it unfolded (random parameters would fold), so its bytes are not
    under-counted."""
    rng = np.random.default_rng(0)
    values = [dataclasses.replace(v, c=int(c)) for v, c in zip(program.values, channels,
                                                                strict=True)]
    ops = []
    for idx, op in enumerate(program.ops):
        cin, cout = values[op.inputs[0]].c, values[op.output].c
        attrs = dict(op.attrs)
        if op.kind in CONV_KINDS:
            attrs.update(cin=cin, cout=cout)
        arrays = _random_arrays(op, cin, cout, rng)
        if (op.kind == "fconv" and values[op.output].kind == "bits"
                and not program.prepared(idx).thresholds):
            arrays["alpha"] = np.zeros(cout, np.float32)
        ops.append(dataclasses.replace(op, attrs=attrs, arrays=arrays))
    return Program(program.input_shape, values, ops, program.output, program.meta)


def _op_runner(program: Program, idx: int, cin: int, cout: int, batch: int,
               threads: int) -> Callable[[], None]:
    """Op ``idx`` alone at (cin, cout) channels on ``batch`` random images, ready to run (run
    once): its kernel calls chained as inside a chained run."""
    rng = np.random.default_rng(cin * 7919 + cout)
    if program.ops[idx].kind in ("concat", "concat_bits"):
        n = len(program.ops[idx].inputs)  # n equal parts of the output channels
        cin = cout = max(1, cout // n)
    mini, t = _one_op_program(program, idx, cin, cout, rng)
    plan = mini.plan(batch, threads)
    x = rng.standard_normal((batch, *mini.input_shape)).astype(np.float32)
    plan.run(x)
    calls = chain_calls(plan.op_calls(t), min_run=1)

    def run() -> None:
        for c in calls:
            c()

    return run


def time_op_ratios(program: Program, idx: int, counts: Sequence[tuple[int, int]], batch: int,
                   threads: int, repeats: int) -> list[float]:
    """Best time of op ``idx`` alone at each (cin, cout) of ``counts`` over its best time at
    full width, the two timed interleaved (two runs of each in turn, at least ``repeats``
    rounds over at least ``MIN_WINDOW_S`` per program) so that both see the same load. Each
    program runs twice in a row: its second run finds its own data in the caches, as an op
    timed alone does, not the other program's."""
    fns = [_op_runner(program, idx, *c, batch, threads)
           for c in (op_channels(program, idx), *counts)]
    best = [float("inf")] * len(fns)
    for _ in runs(repeats, MIN_WINDOW_S * len(fns)):
        for i, f in enumerate(fns):
            best[i] = min(best[i], elapsed(f), elapsed(f))
    ref = max(best[0], 1e-9)
    return [max(b, 1e-9) / ref for b in best[1:]]


def time_program(program: Program, batch: int, threads: int, repeats: int) -> float:
    """Best time of a whole run of ``program`` on ``batch`` random images."""
    x = np.random.default_rng(5).standard_normal((batch, *program.input_shape))
    x = x.astype(np.float32)
    return max(best_time(lambda: program(x, batch_size=batch, threads=threads), repeats), 1e-9)


def time_ops_in_context(program: Program, batch: int, threads: int,
                        repeats: int) -> list[float]:
    """Best time of every op of ``program`` inside whole runs (its calls timed one step at a
    time): unlike an op timed alone, it pays for what the ops before it evicted from the
    caches (weights, activations), as a real run does."""
    x = np.random.default_rng(5).standard_normal((batch, *program.input_shape))
    x = x.astype(np.float32)
    with _threads(threads) as th:
        plan = program.plan(batch, th)
        samples = step_samples(plan, x, repeats, MIN_WINDOW_S)
    best = [float("inf")] * len(program.ops)
    for (idx, _), s in zip(plan.steps, samples, strict=True):
        best[idx] = min(s)
    return best


# --------------------------------------------------------------------------- tables


def _interp(xs: Sequence[int], x: float) -> tuple[int, int, float]:
    """Indices of the measured counts around ``x`` and the weight of the upper one (linear
    extrapolation beyond the ends)."""
    if len(xs) == 1:
        return 0, 0, 0.0
    j = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    lo, hi = xs[j - 1], xs[j]
    return j - 1, j, (x - lo) / (hi - lo)


@dataclass
class OpTable:
    """One op's latency on a grid of (input, output) channel counts: its time at full width
    inside whole runs of the unpruned program, times its ratios (alone, over its full width
    alone) at the measured counts."""

    kind: str
    cin: list[int]
    cout: list[int]
    ratios: list[list[float]]  # [input index][output index] (one row: output counts only)
    full_s: float  # seconds at full width inside a whole run
    proportional: bool = False  # one measured point: time scales with the output channels

    def ratio(self, cin: float, cout: float) -> float:
        """Time at (cin, cout) over the time at full width: bilinear between measured counts,
        >= 0."""
        if self.proportional:
            return self.ratios[0][0] * cout / self.cout[0]
        i0, i1, a = _interp(self.cin, cin)
        j0, j1, b = _interp(self.cout, cout)
        r = self.ratios
        top = r[i0][j0] * (1 - b) + r[i0][j1] * b
        bot = r[i1][j0] * (1 - b) + r[i1][j1] * b
        return max(top * (1 - a) + bot * a, 0.0)

    def at(self, cin: float, cout: float) -> float:
        """Seconds at (cin, cout) inside a whole run."""
        return self.full_s * self.ratio(cin, cout)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "cin": self.cin, "cout": self.cout, "ratios": self.ratios,
                "full_s": self.full_s, "proportional": self.proportional}


@dataclass
class EngineCostModel:
    """Latency tables of every op of ``program`` at one batch size and thread count."""

    program: Program
    batch: int
    threads: int
    tables: list[OpTable]
    overhead_s: float  # measured run minus the sum of its ops inside it (unpruned program)
    measured_s: float  # measured latency of the unpruned program
    cache_file: str = ""
    notes: list[str] = field(default_factory=list)

    def op_seconds(self, idx: int, cin: float, cout: float) -> float:
        return self.tables[idx].at(cin, cout)

    def predict_counts(self, counts: Sequence[tuple[float, float]]) -> float:
        """Predicted latency (s) with op ``i`` at ``counts[i]`` = (input, output) channels."""
        if len(counts) != len(self.tables):
            raise EngineError(f"{len(counts)} op counts for a program of {len(self.tables)} ops")
        return self.overhead_s + sum(t.at(ci, co) for t, (ci, co) in zip(self.tables, counts,
                                                                         strict=True))

    def predict(self, program: Program) -> float:
        """Predicted latency (s) of ``program``: the unpruned program with fewer channels."""
        if not is_pruned_copy(program, self.program):
            raise EngineError("the program is not a channel-pruned copy of the cost model's "
                              "program (its ops differ)")
        return self.predict_counts([op_channels(program, i) for i in range(len(program.ops))])

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "threads": self.threads, "overhead_s": self.overhead_s,
                "measured_s": self.measured_s, "cache_file": self.cache_file,
                "ops": [{"op": o.name or o.kind, **t.to_dict()}
                        for o, t in zip(self.program.ops, self.tables, strict=True)]}


def _check_counts(program: Program, grids: dict[int, tuple[Iterable[int], Iterable[int]]]
                  ) -> dict[int, tuple[list[int], list[int]]]:
    out = {}
    for idx in range(len(program.ops)):
        cin, cout = op_channels(program, idx)
        gi, go = grids.get(idx, ((cin,), (cout,)))
        ins = sorted({int(c) for c in gi} | {cin})
        outs = sorted({int(c) for c in go} | {cout})
        if ins[0] < 1 or outs[0] < 1 or ins[-1] > cin or outs[-1] > cout:
            raise EngineError(f"op {idx}: channel counts must lie in [1, {cin}] x [1, {cout}]")
        out[idx] = (ins, outs)
    return out


def _slower_than_larger(ratio: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """The (cin, cout) counts of a table whose time exceeds, by more than
    :data:`RECHECK_TOLERANCE`, that of a count with at least as many channels on both axes."""
    return [c for c, r in ratio.items()
            if any(d != c and d[0] >= c[0] and d[1] >= c[1]
                   and r > q * (1 + RECHECK_TOLERANCE) for d, q in ratio.items())]


def _op_axes(program: Program, idx: int, ins: list[int], outs: list[int]
             ) -> tuple[list[int], list[int], list[list[tuple[int, int]]]]:
    """Op ``idx``'s table from the requested counts: its input axis, its output axis and the
    (cin, cout) pair of every entry, row by row. A conv's table is a grid over both; any
    other op's one row over its output channels (a concatenation's only its full width: it
    scales with its channels)."""
    op = program.ops[idx]
    if op.kind in CONV_KINDS:
        return ins, outs, [[(ci, co) for co in outs] for ci in ins]
    if op.kind in ("concat", "concat_bits"):
        outs = outs[-1:]
    return outs[-1:], outs, [[(co, co) for co in outs]]


def _program_key(program: Program, batch: int, threads: int) -> str:
    return f"program:{_program_hash(program)}|b{batch}|t{threads}"


def _context_keys(program: Program, batch: int, threads: int) -> list[str]:
    h = _program_hash(program)
    return [f"context:{h}|{i}|b{batch}|t{threads}" for i in range(len(program.ops))]


def _untimed(store: LatencyCache, program: Program, idx: int, pairs: Iterable[tuple[int, int]],
             batch: int, threads: int) -> list[tuple[int, int]]:
    """The (cin, cout) pairs of op ``idx`` the cache lacks (its full width is 1 by definition)."""
    sig, full = _signature(program, idx), op_channels(program, idx)
    return [c for c in pairs if c != full
            and _entry_key(sig, *c, batch, threads) not in store.entries]


def _missing(store: LatencyCache, program: Program,
             counts: dict[int, tuple[list[int], list[int]]], batch: int, threads: int) -> bool:
    """Whether building ``program``'s tables at ``counts`` would time anything."""
    keys = [_program_key(program, batch, threads), *_context_keys(program, batch, threads)]
    return any(k not in store.entries for k in keys) or any(
        _untimed(store, program, idx, (c for row in _op_axes(program, idx, ins, outs)[2]
                                       for c in row), batch, threads)
        for idx, (ins, outs) in counts.items())


def kernels_compiled_here() -> bool:
    """Whether this process compiled an engine kernel itself instead of loading it from
    numba's cache. Such code can run slower than the same kernel loaded from the cache by
    every later process (AMD EPYC Zen 3: NIN's first conv at 112 channels 0.286 against 0.204
    ms), so latency tables are not timed in such a process."""
    from numba.core.registry import CPUDispatcher

    from bnnprune.engine import kernels
    for m in pkgutil.iter_modules(kernels.__path__):
        mod = sys.modules.get(f"{kernels.__name__}.{m.name}")
        for v in vars(mod).values() if mod is not None else ():
            if isinstance(v, CPUDispatcher) and sum(v.stats.cache_misses.values()):
                return True
    return False


def _build_in_child(program: Program, counts: dict[int, tuple[list[int], list[int]]],
                    batch: int, threads: int, repeats: int, cache: Path) -> None:
    """Time ``program``'s tables in a fresh Python process, which loads the kernels this one
    compiled from numba's cache, into the cache file ``cache``."""
    from bnnprune.engine.fileformat import save

    with tempfile.TemporaryDirectory() as tmp:
        save(program, Path(tmp) / "program.bnn")
        spec = {"program": str(Path(tmp) / "program.bnn"), "batch": batch, "threads": threads,
                "repeats": repeats, "cache": str(cache),
                "grids": {str(i): [list(a), list(b)] for i, (a, b) in counts.items()}}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        run = subprocess.run([sys.executable, "-m", __name__, str(Path(tmp) / "spec.json")],
                             capture_output=True, text=True)
    if run.returncode != 0:
        tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"timing the latency tables in a fresh process failed: {tail}")


def _child_main(spec_path: str) -> None:
    from bnnprune.engine.fileformat import load

    spec = json.loads(Path(spec_path).read_text())
    grids = {int(i): (a, b) for i, (a, b) in spec["grids"].items()}
    build_cost_model(load(spec["program"]), grids, batch=spec["batch"],
                     threads=spec["threads"], repeats=spec["repeats"], cache=spec["cache"],
                     isolate=False)


def build_cost_model(program: Program, grids: dict[int, tuple[Iterable[int], Iterable[int]]]
                     | None = None, *, batch: int = 1, threads: int = 1, repeats: int = 10,
                     cache: LatencyCache | str | os.PathLike[str] | None = None,
                     progress: Callable[[str], None] | None = None,
                     isolate: bool = True) -> EngineCostModel:
    """Time every op of ``program`` at the counts of ``grids`` (op index -> (input counts,
    output counts); the program's own counts are always included) and the whole program.

    Entries found in ``cache`` (a :class:`LatencyCache`, a file path, or None for this
    machine's default file) are reused; new ones are written back. With ``isolate``, when
    something must be timed and this process compiled the kernels itself
    (:func:`kernels_compiled_here`), the timing runs in a fresh process instead.
    """
    for name, v in (("batch", batch), ("threads", threads), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise EngineError(f"{name} must be a positive integer, got {v!r}")
    store = cache if isinstance(cache, LatencyCache) else LatencyCache(
        cache if cache is not None else cache_path())
    counts = _check_counts(program, grids or {})
    with _threads(threads) as th:
        missing = isolate and _missing(store, program, counts, batch, th)
    if missing:
        # compile the kernels as the timing runs them (batch and threads)
        program(np.zeros((batch, *program.input_shape), np.float32), batch_size=batch,
                threads=threads)
        if kernels_compiled_here():
            if progress is not None:
                progress("latency tables: timed in a fresh process (this one compiled the "
                         "kernels)")
            store.save()
            _build_in_child(program, counts, batch, threads, repeats, store.path)
            store = LatencyCache(store.path, store.kernels)
    tables: list[OpTable] = []
    fresh = 0
    saved_at = time.perf_counter()
    with _threads(threads) as th:
        whole_key = _program_key(program, batch, th)
        # the whole run is timed before and after the ops (the best of both counts): one
        # disturbed measurement would otherwise bias every prediction through the overhead
        whole_s = (None if whole_key in store.entries else
                   time_program(program, batch, th, max(repeats, WHOLE_REPEATS)))
        ctx_keys = _context_keys(program, batch, th)
        if any(k not in store.entries for k in ctx_keys):
            for k, t in zip(ctx_keys, time_ops_in_context(program, batch, th,
                                                          max(repeats, WHOLE_REPEATS)),
                            strict=True):
                store.entries[k] = max(t, 1e-9)
            fresh += 1
        for idx, (ins, outs) in counts.items():
            op = program.ops[idx]
            sig = _signature(program, idx)
            ins, outs, rows = _op_axes(program, idx, ins, outs)
            pairs = [c for row in rows for c in row]
            full = op_channels(program, idx)
            todo = _untimed(store, program, idx, pairs, batch, th)
            for k in range(0, len(todo), RATIO_CHUNK):
                chunk = todo[k:k + RATIO_CHUNK]
                for c, r in zip(chunk, time_op_ratios(program, idx, chunk, batch, th, repeats),
                                strict=True):
                    store.entries[_entry_key(sig, *c, batch, th)] = r
                fresh += 1
                if time.perf_counter() - saved_at > SAVE_EVERY_S:
                    store.save()  # an interrupted build resumes from here
                    saved_at = time.perf_counter()
            ratio = {c: 1.0 if c == full else store.entries[_entry_key(sig, *c, batch, th)]
                     for c in pairs}
            # fewer channels should not take longer: an entry slower than one at more channels
            # on both axes was most likely disturbed, so it is timed once more (the smaller
            # ratio is kept; a real step survives both timings)
            suspects = [c for c in _slower_than_larger(ratio) if c != full and
                        _entry_key(sig, *c, batch, th) + "|rechecked" not in store.entries]
            if suspects:
                for c, r in zip(suspects, time_op_ratios(program, idx, suspects, batch, th,
                                                         repeats), strict=True):
                    key = _entry_key(sig, *c, batch, th)
                    ratio[c] = store.entries[key] = min(ratio[c], r)
                    store.entries[key + "|rechecked"] = 1.0
                fresh += 1
            grid = [[ratio[c] for c in row] for row in rows]
            tables.append(OpTable(op.kind, list(ins), list(outs), grid,
                                  store.entries[ctx_keys[idx]],
                                  op.kind in ("concat", "concat_bits")))
            if progress is not None:
                progress(f"latency table: op {idx + 1}/{len(counts)} ({op.name or op.kind})")
        if whole_s is not None:
            store.entries[whole_key] = min(whole_s, time_program(program, batch, th,
                                                                 max(repeats, WHOLE_REPEATS)))
            fresh += 1
    if fresh or store.rebuilt:
        store.save()
    full = [op_channels(program, i) for i in range(len(program.ops))]
    ops_s = sum(t.at(ci, co) for t, (ci, co) in zip(tables, full, strict=True))
    measured = store.entries[whole_key]
    # the per-run overhead (input copy, Python dispatch) is what the whole run costs beyond
    # its ops in context; timing noise can make that negative: it is 0 then, so every
    # prediction stays a positive time
    return EngineCostModel(program, batch, th, tables, max(0.0, measured - ops_s), measured,
                           str(store.path))


def _program_hash(program: Program) -> str:
    h = hashlib.sha1()
    for i in range(len(program.ops)):
        h.update(_signature(program, i).encode())
        h.update(str(op_channels(program, i)).encode())
    return h.hexdigest()[:16]


if __name__ == "__main__":  # the fresh process of _build_in_child
    _child_main(sys.argv[1])
