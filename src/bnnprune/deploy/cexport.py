"""Export a compiled :class:`Program` as dependency-free C99 for microcontrollers and boards.

``export_c(program, out_dir)`` writes ``model.h`` / ``model.c`` (the program's weights,
thresholds and float parameters as ``static const`` arrays in the engine's kernel layout, one
function per convolution that calls the inline kernels of ``bnn_conv.h`` with the layer's sizes
as constants, and one entry point ``int model_run(const float *input, float *logits, void
*scratch)``), the other runtime kernels ``bnn_kernels.h`` / ``bnn_kernels.c`` and a host check
program ``main.c``.

No allocation: every value lives in one caller-provided scratch arena whose size,
``MODEL_SCRATCH_BYTES``, is planned here from the values' lifetimes (buffers that are never
alive at the same time share bytes). The kernels repeat the engine's arithmetic operation by
operation, so the C logits equal the engine's (see docs/deploy.md).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from bnnprune.atomic import atomic_write_bytes
from bnnprune.engine.errors import EngineError
from bnnprune.engine.kernels import BLOCK_CH, words
from bnnprune.engine.kernels.bitpatch import patch_schedule
from bnnprune.engine.plan import PreparedBconv, PreparedFconv
from bnnprune.engine.program import Op, Program, ValueInfo, validate

__all__ = ["C_OP_KINDS", "FILES", "Footprint", "c_footprint", "export_c", "format_footprint",
           "plan_arena"]

C_OP_KINDS = ("fconv", "bconv", "sign", "maxpool_bits", "maxpool", "avgpool", "adaptive_avgpool",
              "add", "affine", "clamp", "flatten", "prelu", "concat", "concat_bits")
RUNTIME = ("bnn_conv.h", "bnn_kernels.h", "bnn_kernels.c", "main.c")
FILES = ("model.h", "model.c", *RUNTIME)
ALIGN = 16  # byte alignment of every scratch buffer (SIMD loads, uint64 words)
C_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Footprint:
    """Bytes a C export needs: const data in flash and the scratch arena in RAM.

    ``flash_bytes`` counts the const arrays (packed weights, thresholds, flips, float
    parameters; each 8-byte aligned, padding included), not the code; ``ram_bytes`` is
    ``MODEL_SCRATCH_BYTES``; the caller's input and logits buffers are ``input_bytes`` and
    ``output_bytes``.
    """

    flash_bytes: int
    ram_bytes: int
    input_bytes: int
    output_bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# --------------------------------------------------------------------------- arena


@dataclass
class _Buffer:
    """A scratch region alive from op ``first`` to op ``last`` (inclusive)."""

    size: int
    first: int
    last: int
    offset: int = -1


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_arena(buffers: list[_Buffer]) -> int:
    """Give every buffer an offset so that buffers alive at the same op never overlap.

    Greedy first fit, largest buffers first (as TFLite Micro's arena planner); returns the
    arena size in bytes.
    """
    placed: list[_Buffer] = []
    for b in sorted(buffers, key=lambda b: (-b.size, b.first, b.last)):
        live = sorted((p for p in placed if p.first <= b.last and b.first <= p.last),
                      key=lambda p: p.offset)
        off = 0
        for p in live:
            if off + b.size <= p.offset:
                break
            off = max(off, _align(p.offset + p.size))
        b.offset = off
        placed.append(b)
    return max((_align(b.offset + b.size) for b in buffers), default=0)


# --------------------------------------------------------------------------- C text


def _cfloat(v: float) -> str:
    v = float(v)
    if v != v:
        return "NAN"
    if v in (float("inf"), float("-inf")):
        return "INFINITY" if v > 0 else "-INFINITY"
    mant, exp = v.hex().split("p")
    return f"{mant.rstrip('0').rstrip('.')}p{exp}f"


def _literals(a: np.ndarray) -> list[str]:
    if a.dtype == np.uint64:
        return [f"0x{int(x):016x}ull" for x in a.ravel()]
    if a.dtype == np.float32:
        return [_cfloat(x) for x in a.ravel()]
    lo = int(np.iinfo(a.dtype).min)  # INT32_MIN has no literal of its own
    return [f"(-{-lo - 1} - 1)" if lo < 0 and x == lo else str(int(x)) for x in a.ravel()]


_CTYPE = {np.dtype(np.uint64): "uint64_t", np.dtype(np.float32): "float",
          np.dtype(np.int32): "int32_t", np.dtype(np.uint8): "uint8_t"}


@dataclass
class _Source:
    """What model.c is made of: const arrays, layer functions and model_run statements."""

    arrays: list[tuple[str, np.ndarray]] = field(default_factory=list)
    funcs: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)

    def array(self, name: str, a: np.ndarray) -> str:
        self.arrays.append((name, np.ascontiguousarray(a)))
        return name

    @property
    def flash_bytes(self) -> int:
        """Bytes of the const arrays, each 8-byte aligned (MODEL_CONST): the padding counts,
        so this bounds the section the compiler emits from above, at most 7 bytes over."""
        return sum(_align8(int(a.nbytes)) for _, a in self.arrays)

    def render_arrays(self) -> str:
        out = []
        for name, a in self.arrays:
            lits = _literals(a)
            per = 4 if a.dtype == np.uint64 else 8
            rows = [", ".join(lits[i:i + per]) for i in range(0, len(lits), per)]
            out.append(f"static const {_CTYPE[a.dtype]} {name}[{a.size}] MODEL_CONST = {{\n    "
                       + ",\n    ".join(rows) + "\n};\n")
        return "\n".join(out)


def _align8(n: int) -> int:
    return -(-n // 8) * 8


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)[:40]


def _nbytes(v: ValueInfo) -> int:
    return v.h * v.w * (8 * words(v.c) if v.kind == "bits" else 4 * v.c)


class _Exporter:
    """Lays out one program's buffers and writes its model.c statements."""

    def __init__(self, program: Program) -> None:
        for i, op in enumerate(program.ops):
            if op.kind not in C_OP_KINDS:
                raise EngineError(f"op {i} {op.name or op.kind!r} ({op.kind}): the C export "
                                  f"cannot express this op kind")
        validate(program)
        self.p = program
        self.src = _Source()
        vals = program.values
        self.root = list(range(len(vals)))  # flatten outputs share their input's buffer
        for op in program.ops:
            if op.kind == "flatten":
                self.root[op.output] = self.root[op.inputs[0]]
        for v in vals:
            if _nbytes(v) > C_INT_MAX:
                raise EngineError(f"value {v.source!r} ({_nbytes(v)} bytes) is too large for "
                                  "the C export")
        self.input_alias = program.input_shape[0] == 1  # (1, H, W) is already channels-last
        self.buffers: dict[int, _Buffer] = {}
        n_ops = len(program.ops)
        for i, op in [(-1, None), *enumerate(program.ops)]:
            if op is None:
                if not self.input_alias:
                    self.buffers[0] = _Buffer(_nbytes(vals[0]), -1, -1)
                continue
            r = self.root[op.output]
            if r == op.output:
                self.buffers[r] = _Buffer(_nbytes(vals[r]), i, i)
            for x in op.inputs:
                if self.root[x] in self.buffers:
                    self.buffers[self.root[x]].last = i
        if self.root[program.output] in self.buffers:
            self.buffers[self.root[program.output]].last = n_ops
        self.temps: dict[int, _Buffer] = {}
        for i, op in enumerate(program.ops):
            size = self._temp_bytes(i, op)
            if size:
                self.temps[i] = _Buffer(size, i, i)
        self.scratch = plan_arena([*self.buffers.values(), *self.temps.values()])
        for i, op in enumerate(program.ops):
            self._emit(i, op)
        out = vals[program.output]
        self.src.body.append(f"bnn_hwc_to_chw({self.ref(program.output)}, {out.h}, {out.w}, "
                             f"{out.c}, logits);")

    # ------------------------------------------------------------------ layout
    def _band_units(self, op: Op) -> int:
        """Words (bconv) or floats (fconv) of a conv's padded band of input rows, 0 when the
        conv reads its windows in place from its unpadded input."""
        x = self.p.values[op.inputs[0]]
        ph, pw = op.attrs["padding"]
        if (ph, pw) == (0, 0):
            return 0
        per_pixel = words(x.c) if op.kind == "bconv" else x.c
        return op.attrs["kernel"][0] * (x.w + 2 * pw) * per_pixel

    def _patch_words(self, i: int, op: Op) -> int:
        """Words of a dense bconv's patch row (0: the windows are read in place)."""
        prep = self.p.prepared(i)
        if not (isinstance(prep, PreparedBconv) and prep.dense):
            return 0
        kh, kw = op.attrs["kernel"]
        return self.p.values[op.output].w * words(kh * kw * op.attrs["cin"])

    def _temp_bytes(self, i: int, op: Op) -> int:
        if op.kind in ("bconv", "fconv"):
            unit = 8 if op.kind == "bconv" else 4
            return unit * self._band_units(op) + 8 * self._patch_words(i, op)
        if op.attrs.get("pack") and op.kind != "affine":  # packing applies an affine itself
            v = self.p.values[op.output]
            return 4 * v.h * v.w * v.c
        return 0

    def ref(self, vid: int) -> str:
        r = self.root[vid]
        return "input" if r == 0 and self.input_alias else f"v{r}"

    def _tmp(self, i: int, ctype: str) -> str:
        return f"({ctype} *)(void *)(s + {self.temps[i].offset})"

    # ------------------------------------------------------------------ ops
    def _emit(self, i: int, op: Op) -> None:
        v = self.p.values[op.output]
        b = self.src.body
        b.append(f"/* op {i}: {op.kind} {op.name!r} -> {v.kind} {v.h}x{v.w}x{v.c} */")
        if op.kind == "flatten":
            return
        getattr(self, f"_op_{op.kind}")(i, op, v)

    def _float_dst(self, i: int, op: Op) -> str:
        """Where a float op writes: its output, or a temporary that is then sign-packed."""
        return self._tmp(i, "float") if op.attrs.get("pack") else self.ref(op.output)

    def _pack_after(self, i: int, op: Op, v: ValueInfo) -> None:
        if op.attrs.get("pack"):
            self.src.body.append(f"bnn_sign_pack({self._tmp(i, 'const float')}, {v.h * v.w}, "
                                 f"{v.c}, NULL, NULL, {self.ref(op.output)});")

    def _row_source(self, i: int, op: Op) -> tuple[str | None, str]:
        """The statement that fills output row ``oy``'s padded band of input rows in ``t``
        (None: windows read in place from ``x``) and the C expression of that row's first
        window, inside a layer function (parameters ``x``, ``out``, ``t``)."""
        a, x = op.attrs, self.p.values[op.inputs[0]]
        (kh, _), (sh, _), (ph, pw) = a["kernel"], a["stride"], a["padding"]
        if not self._band_units(op):
            per_pixel = words(x.c) if op.kind == "bconv" else x.c
            return None, f"x + oy * {sh * x.w * per_pixel}"
        y0 = f"oy * {sh} - {ph}"
        if op.kind == "bconv":
            pad = self.src.array(f"l{i}_pad", self.p.prepared(i).pad_words)
            return (f"bnn_band_bits(x, {x.h}, {x.w}, {words(x.c)}, {pw}, {y0}, {kh}, {pad}, t);",
                    "t")
        return f"bnn_band_f(x, {x.h}, {x.w}, {x.c}, {pw}, {y0}, {kh}, t);", "t"

    def _layer(self, i: int, op: Op, in_type: str, out_type: str, lines: list[str]) -> None:
        """Add layer function ``op{i}_*`` (``lines`` its body) and its call from model_run."""
        name = f"op{i}_{_ident(op.name)}"
        temp = self._tmp(i, in_type) if i in self.temps else "NULL"
        if i not in self.temps:
            lines.insert(0, "    (void)t;")
        self.src.funcs.append(
            f"/* op {i}: {op.kind} {op.name!r} */\n"
            f"static BNN_LAYER void {name}(const {in_type} *x, {out_type} *out, {in_type} *t)\n{{\n"
            + "\n".join(lines) + "\n}\n")
        self.src.body.append(f"{name}({self.ref(op.inputs[0])}, {self.ref(op.output)}, {temp});")

    def _patch_fn(self, i: int, op: Op, row_words: int) -> str:
        """A dense bconv's patch builder: the window's taps packed back to back, each patch
        word assembled from the tap words that land in it (the engine's patch_schedule)."""
        kh, kw = op.attrs["kernel"]
        start, rel, shl, shr = patch_schedule(kh, kw, op.attrs["cin"], row_words)
        lines = []
        for j in range(len(start) - 1):
            terms = []
            for c in range(int(start[j]), int(start[j + 1])):
                t = f"s[{int(rel[c])}]"
                t = f"({t} << {int(shl[c])})" if shl[c] else t
                terms.append(f"({t} >> {int(shr[c])})" if shr[c] else t)
            lines.append(f"    p[{j}] = {' | '.join(terms)};")
        name = f"op{i}_patch"
        self.src.funcs.append(f"static void {name}(const uint64_t *s, uint64_t *p)\n{{\n"
                              + "\n".join(lines) + "\n}\n")
        return name

    def _op_bconv(self, i: int, op: Op, v: ValueInfo) -> None:
        a, x = op.attrs, self.p.values[op.inputs[0]]
        (kh, kw), (_, sw) = a["kernel"], a["stride"]
        cin, cout = a["cin"], a["cout"]
        if cin * kh * kw > C_INT_MAX:
            raise EngineError(f"op {op.name!r}: {cin * kh * kw} bits per window is too many "
                              "for the C export")
        prep = self.p.prepared(i)
        assert isinstance(prep, PreparedBconv)
        s, n, wd = self.src, f"l{i}", words(cin)
        lines = ["    int oy;"]
        band, src = self._row_source(i, op)
        row = (x.w + 2 * a["padding"][1]) * wd  # words per (padded) input row
        w = s.array(f"{n}_w", prep.wb)
        if prep.dense:
            kp = words(kh * kw * cin)
            patch = self._patch_fn(i, op, row)
            lines[0] = "    int oy, ox;"
            lines.append(f"    uint64_t *const patch = t + {self._band_units(op)};")
            lo_last = int(0 < kh * kw * cin % 64 <= 32)  # the patch's last word half empty
            win, xrow = f"{{{kp}, 0, 1, {kp}, {lo_last}}}", "patch"
        else:
            win, xrow = f"{{{sw * wd}, {row}, {kh}, {kw * wd}, 0}}", src
        lines.insert(1, f"    const bnn_win_t win = {win};")
        lines.append(f"    for (oy = 0; oy < {v.h}; ++oy) {{")
        if band:
            lines.append(f"        {band}")
        if prep.dense:
            lines.append(f"        for (ox = 0; ox < {v.w}; ++ox)")
            lines.append(f"            {patch}({src} + ox * {sw * wd}, patch + ox * {kp});")
        if a["mode"] == "bits":
            # the engine's starts -(thr+1) fit int32 (thr does); its padding channels' start
            # -2**62 becomes INT32_MIN, still negative after any count (< 2**31)
            init32 = np.maximum(prep.init, np.iinfo(np.int32).min).astype(np.int32)
            init, xmask = s.array(f"{n}_init", init32), s.array(f"{n}_xmask", prep.xmask)
            lines.append(f"        bnn_bconv_bits_row({xrow}, {v.w}, win, {w}, {cout}, {init}, "
                         f"{xmask}, out + oy * {v.w * words(cout)});")
            out_type = "uint64_t"
        else:
            aff = [s.array(f"{n}_{k}", op.arrays[k]) for k in ("m1", "a1", "m2", "a2")]
            lines.insert(2, f"    const float *const aff[4] = {{{', '.join(aff)}}};")
            lines.append(f"        bnn_bconv_affine_row({xrow}, {v.w}, win, {w}, {cout}, "
                         f"{cin * kh * kw}, aff, out + oy * {v.w * cout});")
            out_type = "float"
        lines.append("    }")
        self._layer(i, op, "uint64_t", out_type, lines)

    def _op_fconv(self, i: int, op: Op, v: ValueInfo) -> None:
        a, x = op.attrs, self.p.values[op.inputs[0]]
        (kh, kw), (_, sw) = a["kernel"], a["stride"]
        cin, cout = a["cin"], a["cout"]
        prep = self.p.prepared(i)
        assert isinstance(prep, PreparedFconv)
        s, n = self.src, f"l{i}"
        lines = ["    int oy;"]
        band, xrow = self._row_source(i, op)
        row = (x.w + 2 * a["padding"][1]) * cin
        # the engine's (folded) weights unblocked to (taps, Co), BNN_BLOCK zeros after them
        taps = prep.wf.shape[1]
        flat = prep.wf.transpose(1, 0, 2).reshape(taps, -1)[:, :cout].ravel()
        w = s.array(f"{n}_w", np.concatenate([flat, np.zeros(BLOCK_CH, np.float32)]))
        lines.insert(1, f"    const bnn_win_t win = {{{sw * cin}, {row}, {kh}, {kw * cin}, 0}};")
        bias, alpha, beta, wmask = prep.epilogue
        if prep.thresholds:
            epi = f"{s.array(f'{n}_thr', bias)}, NULL, NULL, NULL"
        else:
            epi = "NULL, " + ", ".join(s.array(f"{n}_{k}", arr) for k, arr in
                                       (("b", bias), ("alpha", alpha), ("beta", beta)))
        lines.insert(2, f"    const bnn_fepi_t e = {{{epi}}};")
        lines.append(f"    for (oy = 0; oy < {v.h}; ++oy) {{")
        if band:
            lines.append(f"        {band}")
        if a["pack"]:
            lines.append(f"        bnn_fconv_bits_row({xrow}, {v.w}, win, {w}, {cout}, e, "
                         f"{s.array(f'{n}_wmask', wmask)}, out + oy * {v.w * words(cout)});")
        else:
            lines.append(f"        bnn_fconv_float_row({xrow}, {v.w}, win, {w}, {cout}, e, "
                         f"out + oy * {v.w * cout});")
        lines.append("    }")
        self._layer(i, op, "float", "uint64_t" if a["pack"] else "float", lines)

    def _op_sign(self, i: int, op: Op, v: ValueInfo) -> None:  # noqa: ARG002
        self.src.body.append(f"bnn_sign_pack({self.ref(op.inputs[0])}, {v.h * v.w}, {v.c}, "
                             f"NULL, NULL, {self.ref(op.output)});")

    def _pool_args(self, op: Op) -> str:
        a, x = op.attrs, self.p.values[op.inputs[0]]
        (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
        return f"{x.h}, {x.w}, {x.c}, {kh}, {kw}, {sh}, {sw}, {ph}, {pw}"

    def _op_maxpool_bits(self, i: int, op: Op, v: ValueInfo) -> None:  # noqa: ARG002
        self.src.body.append(f"bnn_maxpool_bits({self.ref(op.inputs[0])}, {self._pool_args(op)}, "
                             f"{v.h}, {v.w}, {self.ref(op.output)});")

    def _op_maxpool(self, i: int, op: Op, v: ValueInfo) -> None:
        self.src.body.append(f"bnn_maxpool_f({self.ref(op.inputs[0])}, {self._pool_args(op)}, "
                             f"{v.h}, {v.w}, {self._float_dst(i, op)});")
        self._pack_after(i, op, v)

    def _op_avgpool(self, i: int, op: Op, v: ValueInfo) -> None:
        inc = int(op.attrs.get("count_include_pad", True))
        self.src.body.append(f"bnn_avgpool({self.ref(op.inputs[0])}, {self._pool_args(op)}, "
                             f"{inc}, {v.h}, {v.w}, {self._float_dst(i, op)});")
        self._pack_after(i, op, v)

    def _op_adaptive_avgpool(self, i: int, op: Op, v: ValueInfo) -> None:
        x = self.p.values[op.inputs[0]]
        self.src.body.append(f"bnn_adaptive_avgpool({self.ref(op.inputs[0])}, {x.h}, {x.w}, "
                             f"{x.c}, {v.h}, {v.w}, {self._float_dst(i, op)});")
        self._pack_after(i, op, v)

    def _op_add(self, i: int, op: Op, v: ValueInfo) -> None:
        a, b = (self.ref(x) for x in op.inputs)
        self.src.body.append(f"bnn_add({a}, {b}, {v.h * v.w * v.c}, {self._float_dst(i, op)});")
        self._pack_after(i, op, v)

    def _op_affine(self, i: int, op: Op, v: ValueInfo) -> None:
        n = f"l{i}_{_ident(op.name)}"
        al = self.src.array(f"{n}_alpha", op.arrays["alpha"])
        be = self.src.array(f"{n}_beta", op.arrays["beta"])
        x = self.ref(op.inputs[0])
        if op.attrs.get("pack"):  # as the engine: sign of x*alpha + beta in one pass
            self.src.body.append(f"bnn_sign_pack({x}, {v.h * v.w}, {v.c}, {al}, {be}, "
                                 f"{self.ref(op.output)});")
        else:
            self.src.body.append(f"bnn_affine({x}, {v.h * v.w}, {v.c}, {al}, {be}, "
                                 f"{self.ref(op.output)});")

    def _op_prelu(self, i: int, op: Op, v: ValueInfo) -> None:
        n = f"l{i}_{_ident(op.name)}"
        shift, slope, bias = (self.src.array(f"{n}_{k}", op.arrays[k])
                              for k in ("shift", "slope", "bias"))
        self.src.body.append(f"bnn_prelu({self.ref(op.inputs[0])}, {v.h * v.w}, {v.c}, {shift}, "
                             f"{slope}, {bias}, {self._float_dst(i, op)});")
        self._pack_after(i, op, v)

    def _op_concat(self, i: int, op: Op, v: ValueInfo) -> None:
        off = 0
        for x in op.inputs:
            c = self.p.values[x].c
            self.src.body.append(f"bnn_concat_f({self.ref(x)}, {v.h * v.w}, {c}, {off}, {v.c}, "
                                 f"{self._float_dst(i, op)});")
            off += c
        self._pack_after(i, op, v)

    def _op_concat_bits(self, i: int, op: Op, v: ValueInfo) -> None:
        out = self.ref(op.output)
        self.src.body.append(f"memset({out}, 0, {_nbytes(v)});")
        off = 0
        for x in op.inputs:
            c = self.p.values[x].c
            self.src.body.append(f"bnn_concat_bits({self.ref(x)}, {v.h * v.w}, {c}, {off}, "
                                 f"{v.c}, {out});")
            off += c

    def _op_clamp(self, i: int, op: Op, v: ValueInfo) -> None:
        lo, hi = op.attrs.get("lo"), op.attrs.get("hi")
        bounds = (f"{int(lo is not None)}, {_cfloat(np.float32(lo or 0.0))}, "
                  f"{int(hi is not None)}, {_cfloat(np.float32(hi or 0.0))}")
        self.src.body.append(f"bnn_clamp({self.ref(op.inputs[0])}, {v.h * v.w * v.c}, "
                             f"{bounds}, {self._float_dst(i, op)});")
        self._pack_after(i, op, v)

    # ------------------------------------------------------------------ files
    def footprint(self) -> Footprint:
        out = self.p.values[self.p.output]
        return Footprint(self.src.flash_bytes, self.scratch, 4 * int(np.prod(self.p.input_shape)),
                         4 * out.h * out.w * out.c)

    def header(self) -> str:
        c, h, w = self.p.input_shape
        out = self.p.values[self.p.output]
        fp = self.footprint()
        model = self.p.meta.get("model") or "model"
        return f"""/* model.h: {model} exported by bnnprune (generated; do not edit).
 *
 * int model_run(const float *input, float *logits, void *scratch)
 *   input:   MODEL_INPUT_SIZE floats, one image in (C, H, W) order, normalized as in training
 *   logits:  MODEL_OUTPUT_SIZE floats
 *   scratch: MODEL_SCRATCH_BYTES bytes, 8-byte aligned, owned by the caller (no malloc)
 *   returns 0, or -1 if a pointer is NULL or scratch is misaligned
 */
#ifndef MODEL_H
#define MODEL_H

#include <stdint.h>

#define MODEL_INPUT_C {c}
#define MODEL_INPUT_H {h}
#define MODEL_INPUT_W {w}
#define MODEL_INPUT_SIZE {c * h * w}
#define MODEL_OUTPUT_SIZE {out.h * out.w * out.c}

/* Footprint: RAM = the scratch arena (input and logits buffers not included); flash = the
 * const data (packed weights, thresholds, float parameters; code not included). */
#define MODEL_SCRATCH_BYTES {fp.ram_bytes}
#define MODEL_RAM_BYTES MODEL_SCRATCH_BYTES
#define MODEL_FLASH_BYTES {fp.flash_bytes}

#ifdef __cplusplus
extern "C" {{
#endif

int model_run(const float *input, float *logits, void *scratch);

#ifdef __cplusplus
}}
#endif

#endif /* MODEL_H */
"""

    def source(self) -> str:
        p = self.p
        c, h, w = p.input_shape
        lines = []
        for r, buf in sorted(self.buffers.items()):
            ctype = "uint64_t" if p.values[r].kind == "bits" else "float"
            lines.append(f"    {ctype} *const v{r} = ({ctype} *)(void *)(s + {buf.offset});")
        if not self.input_alias:
            lines.append(f"    bnn_chw_to_hwc(input, {c}, {h}, {w}, v0);")
        lines += [f"    {stmt}" for stmt in self.src.body]
        body = "\n".join(lines)
        funcs = "\n".join(self.src.funcs)
        return f"""/* model.c: generated by bnnprune from a compiled program; do not edit.
 * Values are channels-last; binary values are packed 64 channels per word (bit 1 = -1).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bnn_conv.h"
#include "bnn_kernels.h"
#include "model.h"

/* Where the const arrays go: by default .rodata (flash on Cortex-M toolchains); build with
 * -DMODEL_WEIGHTS_SECTION='".name"' to place them in a section of your linker script
 * (external flash, a tightly coupled memory, ...). Each array is 8-byte aligned, as
 * MODEL_FLASH_BYTES counts them. */
#if defined(MODEL_WEIGHTS_SECTION)
#define MODEL_CONST __attribute__((section(MODEL_WEIGHTS_SECTION), aligned(8)))
#elif defined(__GNUC__)
#define MODEL_CONST __attribute__((aligned(8)))
#else
#define MODEL_CONST
#endif

{self.src.render_arrays()}
{funcs}
int model_run(const float *input, float *logits, void *scratch)
{{
    unsigned char *const s = (unsigned char *)scratch;
    if (input == NULL || logits == NULL || s == NULL || ((uintptr_t)(void *)s & 7u) != 0)
        return -1;
    {{
{body}
    }}
    return 0;
}}
"""


def _runtime(name: str) -> str:
    return resources.files("bnnprune.deploy").joinpath("c", name).read_text(encoding="utf-8")


def c_footprint(program: Program) -> Footprint:
    """Flash and RAM bytes the C export of ``program`` needs (nothing is written)."""
    return _Exporter(program).footprint()


def export_c(program: Program, out_dir: str | os.PathLike[str]) -> Footprint:
    """Write the C export of ``program`` into ``out_dir`` (created if missing): :data:`FILES`.

    Raises :class:`EngineError` naming the first op the C export cannot express.
    """
    ex = _Exporter(program)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EngineError(f"{out} exists and is not a folder")
    texts = {"model.h": ex.header(), "model.c": ex.source(),
             **{name: _runtime(name) for name in RUNTIME}}
    for name in FILES:
        atomic_write_bytes(out / name, texts[name].encode("utf-8"))
    return ex.footprint()


def format_footprint(fp: Footprint, baseline: Footprint | None = None,
                     extra: dict[str, tuple[int, int | None]] | None = None) -> list[str]:
    """A small table of flash and RAM bytes (pruned vs unpruned when a baseline is given).

    ``extra`` adds columns: name -> (value, baseline value), e.g. a target's code bytes and
    instructions per inference (:mod:`bnnprune.deploy.mcu`).
    """
    cols = {"flash (const B)": (fp.flash_bytes, baseline.flash_bytes if baseline else None),
            "RAM (scratch B)": (fp.ram_bytes, baseline.ram_bytes if baseline else None),
            **(extra or {})}
    rows: list[tuple[str, list[str]]] = []
    if baseline is not None:
        rows.append(("unpruned", [f"{b:,}" if b is not None else "-" for _, b in cols.values()]))
        rows.append(("pruned", [f"{v:,}" for v, _ in cols.values()]))
        rows.append(("ratio", [f"{v / max(b, 1):.3f}" if b is not None else "-"
                               for v, b in cols.values()]))
    else:
        rows.append(("model", [f"{v:,}" for v, _ in cols.values()]))
    widths = [max(18, len(name) + 2) for name in cols]
    lines = [f"{'':<10}" + "".join(f"{name:>{w}}" for name, w in zip(cols, widths))]
    lines += [f"{name:<10}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths))
              for name, cells in rows]
    return lines
