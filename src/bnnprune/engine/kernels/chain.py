"""Consecutive serial kernel calls of a plan run as one compiled call.

A plan is a list of validated kernel calls, each a ``functools.partial`` of a serial driver
(:func:`~bnnprune.engine.kernels.base.twins`) on fixed arrays. Calling a numba function
from Python costs about 1 us (typing and unboxing up to ~30 arguments; measured by
``benchmarks/bench_engine.py``), so at batch 1, where a small layer's work is a few
microseconds, the calls themselves were a few percent of the run.

:func:`chain_calls` merges each run of such calls into one :class:`Chain`: their arguments
encoded once into an int64 table (an array as its address and dimensions, a scalar as its
value), and :func:`run_chain`, compiled once for every program, walks the table and calls
each row function with its arguments rebuilt in registers (array views without reference
counts). The arrays stay owned by the plan; a chain holds the original calls, so nothing it
points to can be freed while it exists.

What a kernel takes is written once, in :data:`KERNELS` (a letter per argument: ``i`` int,
``b`` bool, ``u``/``f``/``s`` + ndim an uint64/float32/int64 C-contiguous array); a call
whose arguments do not match its spec, a parallel driver or any other callable stays a
call of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from bnnprune.engine.kernels.act import (
    _add_rows,
    _add_ser,
    _affine_rows,
    _affine_ser,
    _prelu_rows,
    _prelu_ser,
)
from bnnprune.engine.kernels.bconv import (
    _bconv_csa_ser,
    _bconv_ser,
    _bconv_tiles,
    _bconv_tiles_csa,
)
from bnnprune.engine.kernels.bitpatch import _im2col_bits_rows, _im2col_bits_ser
from bnnprune.engine.kernels.fconv import _fconv_ser, _fconv_tiles
from bnnprune.engine.kernels.pack import _affine_pack_rows, _affine_pack_ser
from bnnprune.engine.kernels.pad import _pad_rows, _pad_ser
from bnnprune.engine.kernels.pool import (
    _adaptive_avgpool_rows,
    _adaptive_avgpool_ser,
    _bitpool_ser,
    _fpool_rows,
    _fpool_ser,
    _maxpool_bits_rows,
)

_DTYPES = {"u": (np.uint64, types.uint64), "f": (np.float32, types.float32),
           "s": (np.int64, types.int64)}
_I64 = ir.IntType(64)

# (serial driver, the spec of its arguments after nrows and nchunks): a kernel's id in
# run_chain is its position here, and run_chain's branch for it calls the driver's row
# function (a driver called with two argument layouts, the pad's bits and floats, is listed
# once per layout)
KERNELS: tuple[tuple[Any, str], ...] = (
    (_fconv_ser, "f1 f1 i i i i i i i i i i f1 f1 f1 u1 b b i u2 f2"),
    (_bconv_ser, "u1 u1 i i i i i i i i i i i i s1 u1 b i f1 f1 f1 f1 i u2 f2 s1"),
    (_bitpool_ser, "u4 i i i i i i u4"),
    (_pad_ser, "u4 i i u4"),
    (_pad_ser, "f4 i i f4"),
    (_fpool_ser, "i f4 i i i i i i b f4"),
    (_affine_pack_ser, "f2 f1 f1 b u2"),
    (_adaptive_avgpool_ser, "f4 f4"),
    (_im2col_bits_ser, "u4 s1 s1 u1 u1 i i i i i i i u4"),
    (_prelu_ser, "f2 f1 f1 f1 f2"),
    (_affine_ser, "f2 f1 f1 f2"),
    (_add_ser, "f2 f2 f2"),
    (_bconv_csa_ser, "u1 u1 i i i i i i i i i i i i s1 u1 b i f1 f1 f1 f1 i u2 f2 s1"),
)
_BY_DRIVER: dict[Any, list[tuple[int, list[str]]]] = {}
for _kid, (_driver, _spec) in enumerate(KERNELS):
    _BY_DRIVER.setdefault(_driver, []).append((_kid, _spec.split()))

def _decoder(spec: str):
    """The intrinsic ``decode(tab, o)``: the arguments of ``spec`` rebuilt from ``tab[o:]``
    as a tuple (an array from its address and dimensions, C order, no reference count)."""
    tokens = spec.split()

    def arg_type(tok: str) -> types.Type:
        if tok == "i":
            return types.int64
        if tok == "b":
            return types.boolean
        return types.Array(_DTYPES[tok[0]][1], int(tok[1:]), "C")

    tup = types.Tuple([arg_type(t) for t in tokens])

    @intrinsic
    def decode(typingctx, tab, o):  # noqa: ARG001
        if not (isinstance(tab, types.Array) and tab.dtype == types.int64 and tab.ndim == 1
                and isinstance(o, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            pos = context.cast(builder, args[1], signature.args[1], types.int64)
            vals, k = [], 0

            def word():
                nonlocal k
                v = builder.load(builder.gep(data, [builder.add(pos, ir.Constant(_I64, k))]))
                k += 1
                return v

            for tok, ty in zip(tokens, tup.types, strict=True):
                if tok == "i":
                    vals.append(word())
                elif tok == "b":
                    vals.append(builder.icmp_signed("!=", word(), ir.Constant(_I64, 0)))
                else:
                    ptr = builder.inttoptr(word(), context.get_value_type(
                        types.CPointer(ty.dtype)))
                    shape = [word() for _ in range(ty.ndim)]
                    size = context.get_abi_sizeof(context.get_data_type(ty.dtype))
                    strides, step = [], ir.Constant(_I64, size)
                    for d in reversed(shape):
                        strides.insert(0, step)
                        step = builder.mul(step, d)
                    ary = context.make_array(ty)(context, builder)
                    populate_array(ary, data=ptr, shape=shape, strides=strides,
                                   itemsize=size, meminfo=None)
                    vals.append(ary._getvalue())
            return context.make_tuple(builder, tup, vals)

        return tup(tab, o), codegen

    return decode


(_D0, _D1, _D2, _D3, _D4, _D5, _D6, _D7, _D8, _D9, _D10, _D11, _D12) = (
    _decoder(spec) for _, spec in KERNELS)


@njit(cache=True)
def run_chain(tab, offs):
    """Every call of a :class:`Chain` in order: call ``c`` is ``tab[offs[c]:offs[c+1]]`` =
    (kernel id, nrows, its arguments)."""
    for c in range(offs.shape[0] - 1):
        o = offs[c]
        k = tab[o]
        n = tab[o + 1]
        a = o + 2
        if k == 0:
            _fconv_tiles(*_D0(tab, a), 0, n)
        elif k == 1:
            _bconv_tiles(*_D1(tab, a), 0, n)
        elif k == 2:
            _maxpool_bits_rows(*_D2(tab, a), 0, n)
        elif k == 3:
            _pad_rows(*_D3(tab, a), 0, n)
        elif k == 4:
            _pad_rows(*_D4(tab, a), 0, n)
        elif k == 5:
            _fpool_rows(*_D5(tab, a), 0, n)
        elif k == 6:
            _affine_pack_rows(*_D6(tab, a), 0, n)
        elif k == 7:
            _adaptive_avgpool_rows(*_D7(tab, a), 0, n)
        elif k == 8:
            _im2col_bits_rows(*_D8(tab, a), 0, n)
        elif k == 9:
            _prelu_rows(*_D9(tab, a), 0, n)
        elif k == 10:
            _affine_rows(*_D10(tab, a), 0, n)
        elif k == 11:
            _add_rows(*_D11(tab, a), 0, n)
        elif k == 12:
            _bconv_tiles_csa(*_D12(tab, a), 0, n)


def _encode_arg(tok: str, a: Any) -> list[int] | None:
    """Table words of argument ``a`` as spec token ``tok``, or None if it does not match."""
    is_bool = isinstance(a, (bool, np.bool_))
    if tok == "b":
        return [int(a)] if is_bool else None
    if tok == "i":
        return [int(a)] if isinstance(a, (int, np.integer)) and not is_bool else None
    dtype, ndim = _DTYPES[tok[0]][0], int(tok[1:])
    if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim == ndim
            and a.flags.c_contiguous):
        return None
    return [int(a.ctypes.data), *(int(d) for d in a.shape)]


def encode_call(call: Callable[[], Any]) -> list[int] | None:
    """The table row of one call (kernel id, nrows, arguments), or None when it is not a
    serial driver call whose arguments match one of the specs of its driver."""
    if not isinstance(call, functools.partial) or call.keywords or len(call.args) < 2:
        return None
    try:
        layouts = _BY_DRIVER.get(call.func, [])
    except TypeError:  # an unhashable callable
        return None
    nrows, rest = call.args[0], call.args[2:]
    for kid, tokens in layouts:
        if len(tokens) != len(rest):
            continue
        row = [kid, int(nrows)]
        for tok, a in zip(tokens, rest, strict=True):
            enc = _encode_arg(tok, a)
            if enc is None:
                break
            row += enc
        else:
            return row
    return None


class Chain:
    """Consecutive serial kernel calls run by one call of :func:`run_chain`."""

    def __init__(self, calls: Sequence[Callable[[], Any]], rows: Sequence[list[int]]) -> None:
        self.calls = list(calls)  # keeps every array the table points to alive
        self.offs = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
        self.tab = np.array([v for r in rows for v in r], np.int64)

    def __call__(self) -> None:
        run_chain(self.tab, self.offs)


def chain_calls(calls: Sequence[Callable[[], Any]], min_run: int = 2
                ) -> list[Callable[[], Any]]:
    """``calls`` with each run of at least ``min_run`` encodable calls (:func:`encode_call`)
    merged into one :class:`Chain`, in the same order. A plan chains runs of two or more; the
    latency tables time each op's calls as a chain of their own (``min_run=1``), so an op
    costs what it costs inside a chained run, not a Python call per kernel."""
    out: list[Callable[[], Any]] = []
    run: list[tuple[Callable[[], Any], list[int]]] = []

    def flush() -> None:
        if len(run) >= min_run:
            out.append(Chain([c for c, _ in run], [r for _, r in run]))
        else:
            out.extend(c for c, _ in run)
        run.clear()

    for call in calls:
        row = encode_call(call)
        if row is None:
            flush()
            out.append(call)
        else:
            run.append((call, row))
    flush()
    return out
