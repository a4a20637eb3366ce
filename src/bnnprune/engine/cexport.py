"""Export a compiled :class:`Program` as dependency-free C99 for microcontrollers and boards.

``export_c(program, out_dir)`` writes ``model.h`` / ``model.c`` (the program's packed
weights, integer thresholds and float parameters as ``static const`` arrays, and one entry
point ``int model_run(const float *input, float *logits, void *scratch)``), the runtime
kernels ``bnn_kernels.h`` / ``bnn_kernels.c`` and a host check program ``main.c``.

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
from bnnprune.engine.kernels import dense_bits, words
from bnnprune.engine.pack import tail_mask
from bnnprune.engine.plan import prepare_bconv
from bnnprune.engine.program import Op, Program, ValueInfo, validate

__all__ = ["C_OP_KINDS", "FILES", "Footprint", "c_footprint", "export_c", "format_footprint",
           "plan_arena"]

C_OP_KINDS = ("fconv", "bconv", "sign", "maxpool_bits", "maxpool", "avgpool", "adaptive_avgpool",
              "add", "affine", "clamp", "flatten")
RUNTIME = ("bnn_kernels.h", "bnn_kernels.c", "main.c")
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
    return [str(int(x)) for x in a.ravel()]


_CTYPE = {np.dtype(np.uint64): "uint64_t", np.dtype(np.float32): "float",
          np.dtype(np.int32): "int32_t", np.dtype(np.uint8): "uint8_t"}


@dataclass
class _Source:
    """What model.c is made of: const arrays, layer descriptors and model_run statements."""

    arrays: list[tuple[str, np.ndarray]] = field(default_factory=list)
    decls: list[str] = field(default_factory=list)
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
        self._dense: dict[int, bool] = {}
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
            size = self._temp_bytes(op)
            if size:
                self.temps[i] = _Buffer(size, i, i)
        self.scratch = plan_arena([*self.buffers.values(), *self.temps.values()])
        for i, op in enumerate(program.ops):
            self._emit(i, op)
        out = vals[program.output]
        self.src.body.append(f"bnn_hwc_to_chw({self.ref(program.output)}, {out.h}, {out.w}, "
                             f"{out.c}, logits);")

    # ------------------------------------------------------------------ layout
    def _bconv_dense(self, op: Op) -> bool:
        """The engine's choice (taps packed back to back when that saves words)."""
        if id(op) not in self._dense:
            v = self.p.values[op.output]
            self._dense[id(op)] = prepare_bconv(op, (v.h, v.w)).dense
        return self._dense[id(op)]

    def _bconv_whole(self, op: Op) -> bool:
        """The window is the whole unpadded input: the kernel reads it in place."""
        x = self.p.values[op.inputs[0]]
        a = op.attrs
        return (tuple(a["kernel"]) == (x.h, x.w) and tuple(a["padding"]) == (0, 0)
                and not self._bconv_dense(op))

    def _bconv_words(self, op: Op) -> int:
        kh, kw = op.attrs["kernel"]
        cin = op.attrs["cin"]
        return words(kh * kw * cin) if self._bconv_dense(op) else kh * kw * words(cin)

    def _temp_bytes(self, op: Op) -> int:
        if op.kind == "bconv":
            return 0 if self._bconv_whole(op) else 8 * self._bconv_words(op)
        if op.kind == "fconv":
            return 4 * op.attrs["cout"] if op.attrs["pack"] else 0
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

    def _op_bconv(self, i: int, op: Op, v: ValueInfo) -> None:
        a, x = op.attrs, self.p.values[op.inputs[0]]
        (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
        cin, cout = a["cin"], a["cout"]
        if cin * kh * kw > C_INT_MAX:
            raise EngineError(f"op {op.name!r}: {cin * kh * kw} bits per window is too many "
                              "for the C export")
        dense = self._bconv_dense(op)
        w = op.arrays["w"]
        w = dense_bits(w, cin) if dense else w
        nw = self._bconv_words(op)
        pad = tail_mask(cin) if a["pad_value"] == -1 else np.zeros(words(cin), np.uint64)
        n = f"l{i}_{_ident(op.name)}"
        s = self.src
        fields = [str(x.h), str(x.w), str(cin), str(kh), str(kw), str(sh), str(sw), str(ph),
                  str(pw), str(v.h), str(v.w), str(cout), str(int(dense)), str(nw),
                  s.array(f"{n}_pad", pad), s.array(f"{n}_w", w.reshape(cout, nw))]
        if a["mode"] == "bits":
            fields += [s.array(f"{n}_thr", op.arrays["thr"]),
                       s.array(f"{n}_flip", op.arrays["flip"]), "NULL", "NULL", "NULL", "NULL"]
        else:
            fields += ["NULL", "NULL"] + [s.array(f"{n}_{k}", op.arrays[k])
                                          for k in ("m1", "a1", "m2", "a2")]
        s.decls.append(f"static const bnn_bconv_t {n} = {{{', '.join(fields)}}};")
        patch = "NULL" if self._bconv_whole(op) else self._tmp(i, "uint64_t")
        s.body.append(f"bnn_bconv(&{n}, {self.ref(op.inputs[0])}, {self.ref(op.output)}, "
                      f"{patch});")

    def _op_fconv(self, i: int, op: Op, v: ValueInfo) -> None:
        a, x = op.attrs, self.p.values[op.inputs[0]]
        (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
        n = f"l{i}_{_ident(op.name)}"
        s = self.src
        fields = [str(x.h), str(x.w), str(a["cin"]), str(kh), str(kw), str(sh), str(sw),
                  str(ph), str(pw), str(v.h), str(v.w), str(a["cout"])]
        fields += [s.array(f"{n}_{k}", op.arrays[k]) for k in ("w", "b", "alpha", "beta")]
        s.decls.append(f"static const bnn_fconv_t {n} = {{{', '.join(fields)}}};")
        if a["pack"]:
            s.body.append(f"bnn_fconv(&{n}, {self.ref(op.inputs[0])}, NULL, "
                          f"{self.ref(op.output)}, {self._tmp(i, 'float')});")
        else:
            s.body.append(f"bnn_fconv(&{n}, {self.ref(op.inputs[0])}, {self.ref(op.output)}, "
                          "NULL, NULL);")

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
        decls = "\n".join(self.src.decls)
        return f"""/* model.c: generated by bnnprune from a compiled program; do not edit.
 * Values are channels-last; binary values are packed 64 channels per word (bit 1 = -1).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

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
{decls}

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
    return resources.files("bnnprune.engine").joinpath("c", name).read_text(encoding="utf-8")


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
    instructions per inference (:mod:`bnnprune.engine.mcu`).
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
