"""The packed program: a validated list of ops over SSA values, and its executor.

A value is channels-last: ``float`` values are float32 (N, H, W, C), ``bits`` values are
packed sign bits (N, H, W, words(C)) uint64. ``flat`` marks a value whose PyTorch tensor
is the 2-D flattening (N, C*H*W) of it (a linear layer then acts as a full-window conv).
Every op is checked by :func:`validate` before anything runs, so a malformed program (from
a corrupted file, say) raises :class:`EngineError` instead of reaching a kernel.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np

from bnnprune.engine import kernels as K
from bnnprune.engine.errors import EngineError
from bnnprune.engine.ir import Op, ValueInfo
from bnnprune.engine.pack import tail_mask, unpack_signs, words
from bnnprune.engine.plan import ExecutionPlan, prepare_bconv, prepare_fconv

__all__ = ["Op", "Program", "ValueInfo", "is_pruned_copy", "validate"]

MAX_DIM = 1 << 16
MAX_CHANNELS = 1 << 20
MAX_WINDOW = 64
MAX_INPUTS = 256  # inputs of one concatenation
MAX_PLANS = 8  # cached execution plans per program (batch size x thread count x caller)
MAX_PLAN_BYTES = 1 << 28  # larger plans (huge batch sizes) are rebuilt for every call


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[int]:
    """Run with at most ``threads`` numba threads; yields the count in effect."""
    cur = numba.get_num_threads()
    if threads is None:
        yield cur
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EngineError(f"threads must be a positive integer, got {threads!r}")
    th = min(int(threads), numba.config.NUMBA_NUM_THREADS)
    if th == cur:
        yield th
        return
    numba.set_num_threads(th)
    try:
        yield th
    finally:
        numba.set_num_threads(cur)

FLOAT_OPS = ("fconv", "avgpool", "adaptive_avgpool", "maxpool", "add", "affine", "clamp",
             "concat", "prelu")
OP_KINDS = FLOAT_OPS + ("bconv", "maxpool_bits", "sign", "flatten", "concat_bits")
# op kinds added in .bnn format version 2 (a file using none of them is written as version 1)
V2_KINDS = frozenset({"concat", "concat_bits", "prelu"})


def _pair(attrs: dict[str, Any], key: str) -> tuple[int, int]:
    v = attrs.get(key)
    if (not isinstance(v, list | tuple) or len(v) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in v)):
        raise EngineError(f"attribute {key!r} must be a pair of integers, got {v!r}")
    return int(v[0]), int(v[1])


def _int(attrs: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = attrs.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise EngineError(f"attribute {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _bool(attrs: dict[str, Any], key: str) -> bool:
    v = attrs.get(key, False)
    if not isinstance(v, bool):
        raise EngineError(f"attribute {key!r} must be true or false, got {v!r}")
    return v


def _array(op: Op, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    a = op.arrays.get(name)
    if a is None:
        raise EngineError(f"op {op.name or op.kind}: missing array {name!r}")
    if a.dtype != dtype or tuple(a.shape) != tuple(shape):
        raise EngineError(f"op {op.name or op.kind}: array {name!r} is {a.dtype}{list(a.shape)}, "
                          f"expected {np.dtype(dtype)}{list(shape)}")
    return a


def _window(op: Op, limit: int = MAX_WINDOW) -> tuple[tuple[int, int], ...]:
    k = _pair(op.attrs, "kernel")
    s = _pair(op.attrs, "stride")
    p = _pair(op.attrs, "padding")
    if not (1 <= min(k) and max(k) <= max(limit, 1) and 1 <= min(s) and max(s) <= MAX_WINDOW
            and 0 <= min(p) and max(p) <= MAX_WINDOW):
        raise EngineError(f"op {op.name or op.kind}: window {k}, stride {s}, padding {p} "
                          "out of range")
    return k, s, p


def _expect(cond: bool, op: Op, what: str) -> None:
    if not cond:
        raise EngineError(f"op {op.name or op.kind}: {what}")


def _check_value(v: ValueInfo, i: int) -> None:
    if v.kind not in ("float", "bits"):
        raise EngineError(f"value {i}: kind must be 'float' or 'bits', got {v.kind!r}")
    for name, val, hi in (("h", v.h, MAX_DIM), ("w", v.w, MAX_DIM), ("c", v.c, MAX_CHANNELS)):
        if not isinstance(val, int) or isinstance(val, bool) or not 1 <= val <= hi:
            raise EngineError(f"value {i}: {name} must be an integer in [1, {hi}], got {val!r}")
    if not isinstance(v.flat, bool) or not isinstance(v.source, str):
        raise EngineError(f"value {i}: malformed flat/source fields")


def _same_shape(a: ValueInfo, b: ValueInfo) -> bool:
    return (a.h, a.w, a.c, a.flat) == (b.h, b.w, b.c, b.flat)


def _check_op(op: Op, ins: list[ValueInfo], out: ValueInfo) -> None:  # noqa: C901
    kind = op.kind
    if kind in ("concat", "concat_bits"):
        _expect(2 <= len(ins) <= MAX_INPUTS, op, f"takes 2 to {MAX_INPUTS} inputs, got {len(ins)}")
    else:
        n_in = 2 if kind == "add" else 1
        _expect(len(ins) == n_in, op, f"takes {n_in} input(s), got {len(ins)}")
    x = ins[0]
    packs = kind in FLOAT_OPS and _bool(op.attrs, "pack")
    if kind in FLOAT_OPS:
        _expect(out.kind == ("bits" if packs else "float"), op, "output kind does not match 'pack'")
    if kind in ("bconv", "fconv"):
        (kh, kw), (sh, sw), (ph, pw) = _window(op, limit=MAX_DIM)
        cin = _int(op.attrs, "cin", 1, MAX_CHANNELS)
        cout = _int(op.attrs, "cout", 1, MAX_CHANNELS)
        _expect(x.kind == ("bits" if kind == "bconv" else "float"), op, "wrong input kind")
        _expect(x.c == cin, op, f"input has {x.c} channels, op expects {cin}")
        ho = (x.h + 2 * ph - kh) // sh + 1
        wo = (x.w + 2 * pw - kw) // sw + 1
        _expect(x.h + 2 * ph >= kh and x.w + 2 * pw >= kw, op, "kernel larger than input")
        _expect((out.h, out.w, out.c) == (ho, wo, cout), op,
                f"output value is {out.h}x{out.w}x{out.c}, op computes {ho}x{wo}x{cout}")
        if x.flat:
            _expect((kh, kw, ph, pw, sh, sw) == (x.h, x.w, 0, 0, 1, 1), op,
                    "a linear layer must cover its whole flattened input")
        _expect(out.flat == x.flat, op, "output flatness must follow the input")
        if kind == "bconv":
            pv = op.attrs.get("pad_value")
            _expect(pv in (1, -1) and not isinstance(pv, bool), op, "pad_value must be +1 or -1")
            mode = op.attrs.get("mode")
            _expect(mode in ("bits", "float"), op, "mode must be 'bits' or 'float'")
            _expect(out.kind == mode, op, "output kind does not match mode")
            w = _array(op, "w", np.dtype(np.uint64), (cout, kh, kw * words(cin)))
            mask = np.tile(tail_mask(cin), kw)
            _expect(not np.any(w & ~mask), op, "weights have bits set beyond the input channels")
            if mode == "bits":
                _array(op, "thr", np.dtype(np.int32), (cout,))
                flip = _array(op, "flip", np.dtype(np.uint8), (cout,))
                _expect(bool(np.all(flip <= 1)), op, "flip must be 0 or 1")
            else:
                for name in ("m1", "a1", "m2", "a2"):
                    _array(op, name, np.dtype(np.float32), (cout,))
        else:
            _array(op, "w", np.dtype(np.float32), (kh * kw * cin, cout))
            for name in ("b", "alpha", "beta"):
                _array(op, name, np.dtype(np.float32), (cout,))
    elif kind in ("maxpool", "maxpool_bits", "avgpool"):
        k, s, p = _window(op)
        ceil = _bool(op.attrs, "ceil_mode")
        _expect(not x.flat, op, "pooling needs a spatial input")
        _expect(x.kind == ("bits" if kind == "maxpool_bits" else "float"), op, "wrong input kind")
        _expect(2 * p[0] <= k[0] and 2 * p[1] <= k[1], op, "padding exceeds half the window")
        _expect(x.h + 2 * p[0] >= k[0] and x.w + 2 * p[1] >= k[1], op, "window larger than input")
        ho = K.pool_out_size(x.h, k[0], s[0], p[0], ceil)
        wo = K.pool_out_size(x.w, k[1], s[1], p[1], ceil)
        _expect((out.h, out.w, out.c, out.flat) == (ho, wo, x.c, False), op, "wrong output shape")
        if kind == "maxpool_bits":
            _expect(out.kind == "bits", op, "bit max-pool outputs bits")
        if kind == "avgpool":
            _bool(op.attrs, "count_include_pad")
    elif kind == "adaptive_avgpool":
        _expect(x.kind == "float" and not x.flat, op, "needs a spatial float input")
        oh, ow = _pair(op.attrs, "output_size")
        _expect(1 <= oh <= MAX_DIM and 1 <= ow <= MAX_DIM, op, "output size out of range")
        _expect((out.h, out.w, out.c, out.flat) == (oh, ow, x.c, False), op, "wrong output shape")
    elif kind == "add":
        _expect(x.kind == "float" and ins[1].kind == "float", op, "adds float values")
        _expect(_same_shape(x, ins[1]) and _same_shape(x, out), op, "operand shapes differ")
    elif kind == "affine":
        _expect(x.kind == "float" and _same_shape(x, out), op, "wrong input/output")
        _expect(not x.flat or x.h * x.w == 1, op, "per-channel affine on a flattened image")
        _array(op, "alpha", np.dtype(np.float32), (x.c,))
        _array(op, "beta", np.dtype(np.float32), (x.c,))
    elif kind == "clamp":
        _expect(x.kind == "float" and _same_shape(x, out), op, "wrong input/output")
        for key in ("lo", "hi"):
            v = op.attrs.get(key)
            _expect(v is None or (isinstance(v, float | int) and not isinstance(v, bool)
                                  and math.isfinite(v)), op, f"{key} must be a number or null")
    elif kind in ("concat", "concat_bits"):
        want = "bits" if kind == "concat_bits" else "float"
        _expect(all(v.kind == want for v in ins), op, f"concatenates {want} values")
        _expect(all((v.h, v.w, v.flat) == (x.h, x.w, x.flat) for v in ins), op,
                "inputs of different sizes")
        _expect(not x.flat or x.h * x.w == 1, op, "concatenation of flattened images")
        _expect((out.h, out.w, out.flat) == (x.h, x.w, x.flat)
                and out.c == sum(v.c for v in ins), op, "wrong output shape")
        if kind == "concat_bits":
            _expect(out.kind == "bits", op, "bit concatenation outputs bits")
    elif kind == "prelu":
        _expect(x.kind == "float" and (out.h, out.w, out.c, out.flat) == (x.h, x.w, x.c, x.flat),
                op, "wrong input/output")
        for name in ("shift", "slope", "bias"):
            _array(op, name, np.dtype(np.float32), (x.c,))
    elif kind == "sign":
        _expect(x.kind == "float" and out.kind == "bits" and _same_shape(x, out), op,
                "sign maps a float value to bits of the same shape")
    elif kind == "flatten":
        _expect(not x.flat and out.flat and out.kind == x.kind
                and (out.h, out.w, out.c) == (x.h, x.w, x.c), op, "wrong flatten")
    else:
        raise EngineError(f"unknown op kind {kind!r}")


def validate(program: Program) -> None:
    """Check every value and op of ``program``; raise :class:`EngineError` on the first fault."""
    if not program.values:
        raise EngineError("program has no values")
    for i, v in enumerate(program.values):
        _check_value(v, i)
    c, h, w = program.input_shape
    v0 = program.values[0]
    if (v0.kind, v0.h, v0.w, v0.c, v0.flat) != ("float", h, w, c, False):
        raise EngineError("value 0 must be the float input of the declared input shape")
    defined = {0}
    for op in program.ops:
        if op.kind not in OP_KINDS:
            raise EngineError(f"unknown op kind {op.kind!r}")
        for i in op.inputs:
            if not isinstance(i, int) or i not in defined:
                raise EngineError(f"op {op.name or op.kind}: input {i!r} is not defined before it")
        if (not isinstance(op.output, int) or not 0 <= op.output < len(program.values)
                or op.output in defined):
            raise EngineError(f"op {op.name or op.kind}: output {op.output!r} is invalid or reused")
        _check_op(op, [program.values[i] for i in op.inputs], program.values[op.output])
        defined.add(op.output)
    out = program.output
    if not isinstance(out, int) or out not in defined or program.values[out].kind != "float":
        raise EngineError("program output must be a defined float value")


class Program:
    """A compiled packed BNN. Call it on (N, C, H, W) numpy or torch input to get logits."""

    def __init__(self, input_shape: tuple[int, int, int], values: list[ValueInfo], ops: list[Op],
                 output: int, meta: dict[str, Any] | None = None) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise EngineError(f"input_shape must be (C, H, W), got {input_shape}")
        self.values = values
        self.ops = ops
        self.output = output
        self.meta = dict(meta or {})
        validate(self)
        self._prepared: dict[int, Any] = {}
        self._plans: OrderedDict[tuple[int, int, int], ExecutionPlan] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ running
    def __call__(self, x: Any, batch_size: int = 64, threads: int | None = None) -> np.ndarray:
        """Logits for a batch (N, C, H, W); processed in chunks of ``batch_size`` images.

        ``threads`` caps the numba threads for this call (default: numba's current setting;
        1 runs every kernel on the calling thread).
        """
        x = self._as_input(x)
        if batch_size < 1:
            raise EngineError(f"batch_size must be >= 1, got {batch_size}")
        if threads is None:  # numba's current count: nothing to switch and restore
            return self._batches(x, batch_size, numba.get_num_threads())
        with _threads(threads) as th:
            return self._batches(x, batch_size, th)

    def _batches(self, x: np.ndarray, batch_size: int, threads: int) -> np.ndarray:
        outs = []
        for i in range(0, max(len(x), 1), batch_size):
            chunk = x[i:i + batch_size]
            if not len(chunk):
                outs.append(self._to_torch_layout(self._empty_output(), self.output))
                continue
            y = self.plan(len(chunk), threads).run(chunk)
            outs.append(self._to_torch_layout(y, self.output))
        return np.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]

    def intermediates(self, x: Any) -> dict[str, np.ndarray]:
        """Every value by the PyTorch node it represents, in PyTorch layout (bits as ±1)."""
        env = self._run(self._as_input(x))
        out: dict[str, np.ndarray] = {}
        for vid, arr in env.items():
            v = self.values[vid]
            key = f"{v.source}:{v.kind}"
            if v.source and key not in out:
                out[key] = self._to_torch_layout(arr, vid)
        return out

    def _as_input(self, x: Any) -> np.ndarray:
        if hasattr(x, "detach") and hasattr(x, "cpu"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise EngineError(f"input must have shape (N, {', '.join(map(str, self.input_shape))}),"
                              f" got {tuple(x.shape)}")
        if x.dtype.kind not in "fiu":  # floating or integer
            raise EngineError(f"input must be numeric, got dtype {x.dtype}")
        return x.astype(np.float32, copy=False)

    def _empty_output(self) -> np.ndarray:
        v = self.values[self.output]
        return np.zeros((0, v.h, v.w, v.c), np.float32)

    def _to_torch_layout(self, arr: np.ndarray, vid: int) -> np.ndarray:
        v = self.values[vid]
        if v.kind == "bits":
            arr = unpack_signs(arr, v.c)
        nchw = np.array(arr.transpose(0, 3, 1, 2), order="C")  # always a copy
        return nchw.reshape(len(nchw), v.c * v.h * v.w) if v.flat else nchw  # -1 fails at 0 images

    def _run(self, x: np.ndarray, threads: int | None = None) -> dict[int, np.ndarray]:
        """Every value (channels-last, bits packed) for input ``x``, as fresh arrays."""
        if not len(x):
            raise EngineError("intermediates need at least one image")
        with _threads(threads) as th:
            plan = self.plan(len(x), th)
            plan.run(x)
            return plan.env()

    def prepared(self, idx: int) -> Any:
        """Op ``idx``'s weights in kernel layout (blocked, dense bit rows, thresholds)."""
        if idx not in self._prepared:
            op = self.ops[idx]
            if op.kind == "bconv":
                v = self.values[op.output]
                self._prepared[idx] = prepare_bconv(op, (v.h, v.w))
            elif op.kind == "fconv":
                self._prepared[idx] = prepare_fconv(op, self.values[op.output].kind == "bits")
            else:
                raise EngineError(f"op {op.name or op.kind} has no kernel weights")
        return self._prepared[idx]

    def plan(self, n: int, threads: int | None = None) -> ExecutionPlan:
        """The validated execution plan for batches of ``n`` images (cached per thread)."""
        th = numba.get_num_threads() if threads is None else int(threads)
        key = (threading.get_ident(), int(n), th)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = ExecutionPlan(self, n, th)
        if plan.nbytes <= MAX_PLAN_BYTES:  # a huge batch's buffers are not kept around
            with self._lock:
                self._plans[key] = plan
                while len(self._plans) > MAX_PLANS:
                    self._plans.popitem(last=False)
        return plan

    # ------------------------------------------------------------------ facts
    def binary_params(self) -> int:
        """Number of binary weights (bits) in the program."""
        total = 0
        for op in self.ops:
            if op.kind == "bconv":
                kh, kw = op.attrs["kernel"]
                total += op.attrs["cout"] * op.attrs["cin"] * kh * kw
        return total

    def float_params(self) -> int:
        """Number of float32 parameters stored (thresholds and flips excluded)."""
        return sum(int(arr.size) for op in self.ops for arr in op.arrays.values()
                   if arr.dtype == np.float32)

    def summary(self) -> list[dict[str, Any]]:
        """One JSON-friendly row per op: name, kind, output shape and representation."""
        rows = []
        for op in self.ops:
            v = self.values[op.output]
            rows.append({"name": op.name, "op": op.kind, "out": [v.h, v.w, v.c], "repr": v.kind})
        return rows


def is_pruned_copy(program: Program, baseline: Program) -> bool:
    """Whether ``program`` has ``baseline``'s ops (kinds and names, in order), so it can
    differ only in channel counts: a channel-pruned copy, or the baseline itself."""
    return [(o.kind, o.name) for o in program.ops] == [(o.kind, o.name) for o in baseline.ops]
