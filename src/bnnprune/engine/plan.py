"""Execution plans: a validated program bound to preallocated buffers for one batch size.

Building a plan allocates every value's buffer (and the scratch buffers: padded inputs,
bit patch matrices), fills constant borders once, and validates every kernel call on exactly
those arrays (the ``*_call`` builders of :mod:`bnnprune.engine.kernels` check every shape
and index range and return the bound call). Running the plan is then a copy of the input and
the kernel calls, consecutive serial ones merged into one compiled call
(:func:`~bnnprune.engine.kernels.chain_calls`), with no allocation: what matters at batch 1.

The arrays are owned by the plan and never handed out (results are copied), so a call can
never see a buffer of a different shape than the one it was validated on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from bnnprune.engine import kernels as K
from bnnprune.engine.errors import EngineError
from bnnprune.engine.ir import Op
from bnnprune.engine.pack import tail_mask, words

__all__ = ["ExecutionPlan", "PreparedBconv", "PreparedFconv", "prepare_bconv", "prepare_fconv"]

Call = Callable[[], Any]

# on one thread, patch planes built and read per chunk of images of at most this size (it
# stays in L2)
PATCH_CHUNK_BYTES = 256 * 1024


@dataclass
class PreparedBconv:
    """Weights of one XNOR-popcount op in kernel layout.

    ``dense``: the op runs on a bit patch matrix (taps packed back to back, see
    :func:`kernels.im2col_bits_call`), chosen by :func:`kernels.use_patch_matrix` when the
    GEMM words it saves (channel counts that are not multiples of 64) outweigh building it.
    """

    dense: bool
    wb: np.ndarray  # (ceil(Co/16), KH', L', 16)
    init: np.ndarray  # (blocks*16,) int64
    xmask: np.ndarray | None  # threshold mode: (words,) uint64
    affine: tuple[np.ndarray, ...] | None  # float mode: (m1, a1, m2, a2)
    pad_words: np.ndarray  # (words(Cin),)


def prepare_bconv(op: Op, out_hw: tuple[int, int]) -> PreparedBconv:
    """Kernel layout of a validated ``bconv`` op with an ``out_hw`` output map."""
    a = op.attrs
    kh, kw = a["kernel"]
    cin = a["cin"]
    wd = words(cin)
    w = op.arrays["w"]
    run = K.patch_run(out_hw, kw, tuple(a["stride"]))
    dense = K.use_patch_matrix(kh, kw, cin, a["cout"], run)
    # every array the kernels read in vectors starts on a cache line (K.aligned)
    wb = K.aligned(K.block_weights(K.dense_bits(w, cin) if dense else w))
    pad_words = tail_mask(cin) if a["pad_value"] == -1 else np.zeros(wd, np.uint64)
    if a["mode"] == "bits":
        init, xmask = (K.aligned(v) for v in K.threshold_init(op.arrays["thr"],
                                                               op.arrays["flip"]))
        return PreparedBconv(dense, wb, init, xmask, None, pad_words)
    init = K.aligned_zeros((wb.shape[0] * K.BLOCK_CH,), np.int64)
    affine = tuple(K.aligned(op.arrays[k]) for k in ("m1", "a1", "m2", "a2"))
    return PreparedBconv(dense, wb, init, None, affine, pad_words)


@dataclass
class PreparedFconv:
    """A full-precision conv: blocked weights and the bias/affine epilogue (with
    ``thresholds``, the weights and thresholds of :func:`~bnnprune.engine.kernels.sign_thresholds`
    in place of the weights and bias)."""

    wf: np.ndarray  # (ceil(Co/16), KH*KW*Cin, 16) float32
    epilogue: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    thresholds: bool = False


def prepare_fconv(op: Op, bits: bool) -> PreparedFconv:
    """Kernel layout of a validated ``fconv`` op (``bits``: its output is packed signs)."""
    co = op.attrs["cout"]
    w, b, alpha, beta = (op.arrays[k] for k in ("w", "b", "alpha", "beta"))
    folded = K.sign_thresholds(w, b, alpha, beta) if bits else None
    if folded is not None:
        w, b = folded
    ep = (K.aligned(K.block_channels(b, 0.0)), K.aligned(K.block_channels(alpha, 0.0)),
          K.aligned(K.block_channels(beta, 0.0)), tail_mask(co))
    return PreparedFconv(K.aligned(K.block_float_weights(w, co)), ep, folded is not None)


class ExecutionPlan:
    """Buffers and validated kernel calls of ``program`` for batches of ``n`` images."""

    def __init__(self, program: Any, n: int, threads: int | None) -> None:
        self.n = int(n)
        self.threads = threads
        self.program = program
        self.bufs: dict[int, np.ndarray] = {0: self._alloc(0)}
        # the buffer the input is copied into and its padding (a padded first layer's)
        self._input_buffer: tuple[np.ndarray, tuple[int, int]] = (self.bufs[0], (0, 0))
        self._owned: set[int] = set()  # values with their own buffer (not flatten views)
        self._scratch: list[np.ndarray] = []  # padded inputs, patch matrices, temporaries
        self._input_uses = sum(i == 0 for op in program.ops for i in op.inputs) + (
            program.output == 0)
        self.steps: list[tuple[int, list[Call]]] = []
        for idx, op in enumerate(program.ops):
            calls = self._lower(idx, op)
            self.steps.append((idx, calls))
        # consecutive serial kernel calls run as one compiled call (K.chain_calls)
        self._flat: list[Call] = K.chain_calls([c for _, calls in self.steps for c in calls])
        self._load = K.nchw_load_call(*self._input_buffer, threads=threads)
        self.nbytes = sum(b.nbytes for b in self._scratch) + sum(
            self.bufs[v].nbytes for v in self._owned)
        if self._input_buffer[1] == (0, 0):  # else the input is in a padded scratch buffer
            self.nbytes += self.bufs[0].nbytes

    # ------------------------------------------------------------------ buffers
    def _shape(self, vid: int) -> tuple[int, ...]:
        v = self.program.values[vid]
        return (self.n, v.h, v.w, words(v.c) if v.kind == "bits" else v.c)

    def _alloc(self, vid: int) -> np.ndarray:
        v = self.program.values[vid]
        return K.aligned_zeros(self._shape(vid), np.uint64 if v.kind == "bits" else np.float32)

    def _keep(self, a: np.ndarray) -> np.ndarray:
        self._scratch.append(a)
        return a

    def load(self, x_nchw: np.ndarray) -> None:
        """Copy float32 (n, C, H, W) input into the input buffer (channels last)."""
        if x_nchw.shape != (self.n, *self.program.input_shape) or x_nchw.dtype != np.float32:
            raise EngineError(f"plan for {self.n} images got input {x_nchw.shape}")
        self._load(x_nchw)

    def run(self, x_nchw: np.ndarray) -> np.ndarray:
        """Run on float32 (n, C, H, W) input; returns the output value's buffer (not a copy)."""
        self.load(x_nchw)
        for call in self._flat:
            call()
        return self.bufs[self.program.output]

    # ------------------------------------------------------------------ lowering
    def _lower(self, idx: int, op: Op) -> list[Call]:  # noqa: C901
        a, kind, th = op.attrs, op.kind, self.threads
        xs = [self.bufs[i] for i in op.inputs]
        x = xs[0]
        if kind == "flatten":
            self.bufs[op.output] = x
            return []
        out = self._alloc(op.output)
        self.bufs[op.output] = out
        self._owned.add(op.output)
        if kind == "bconv":
            return self._bconv(idx, op, x, out)
        if kind == "maxpool_bits":
            return [K.pool_call("maxpool_bits", x, a["kernel"], a["stride"], a["padding"],
                                a["ceil_mode"], out, threads=th)]
        if kind == "sign":
            return [K.affine_pack_call(x, out, threads=th)]
        if kind == "concat_bits":
            chans = [self.program.values[i].c for i in op.inputs]
            return [K.concat_bits_call(xs, chans, out, threads=th)]
        if kind == "fconv":  # conv + bias + affine, packed to bits or not, in one kernel
            return self._fconv(idx, op, x, out)
        pack = bool(a.get("pack"))
        if pack and kind == "affine":  # the packing applies the affine, straight from x
            return [K.affine_pack_call(x, out, op.arrays["alpha"], op.arrays["beta"],
                                       threads=th)]
        y = self._keep(K.aligned_zeros(self._float_shape(op), np.float32)) if pack else out
        calls = self._float_op(op, xs, y)
        if pack:
            calls.append(K.affine_pack_call(y, out, threads=th))
        return calls

    def _float_shape(self, op: Op) -> tuple[int, ...]:
        v = self.program.values[op.output]
        return (self.n, v.h, v.w, v.c)

    def _bconv(self, idx: int, op: Op, x: np.ndarray, out: np.ndarray) -> list[Call]:
        a, th = op.attrs, self.threads
        prep = self.program.prepared(idx)
        assert isinstance(prep, PreparedBconv)
        kh, kw = a["kernel"]
        stride, pad = tuple(a["stride"]), tuple(a["padding"])
        nbits = a["cin"] * kh * kw
        kwargs: dict[str, Any] = ({"xmask": prep.xmask} if prep.xmask is not None
                                  else {"affine": prep.affine})
        calls: list[Call] = []
        src = x
        if pad != (0, 0):
            src = self._keep(K.aligned_empty((self.n, x.shape[1] + 2 * pad[0],
                                              x.shape[2] + 2 * pad[1], x.shape[3]), np.uint64))
            K.pad_fill(src, pad, prep.pad_words)
            calls.append(K.pad_call(x, pad, src, threads=th))
        if prep.dense:
            # on one thread, the patch planes of a few images at a time, each chunk's planes
            # read by the GEMM while they are in cache (those of a whole batch are megabytes);
            # with more, every chunk would pay two parallel regions (NIN's 5x5 conv at batch
            # 64 in 2-image chunks on 2 threads: 5.3 ms instead of 3.6)
            shape = K.patch_planes_shape(1, *src.shape[1:3], a["cin"], (kh, kw), stride)
            chunk = self.n if (th or numba.get_num_threads()) > 1 else max(
                1, min(self.n, PATCH_CHUNK_BYTES // (8 * math.prod(shape))))
            buffers: dict[int, np.ndarray] = {}
            for i0 in range(0, self.n, chunk):
                c = min(chunk, self.n - i0)
                if c not in buffers:
                    buffers[c] = self._keep(K.aligned_zeros((shape[0], c, *shape[2:]), np.uint64))
                calls.append(K.im2col_bits_call(src[i0:i0 + c], a["cin"], (kh, kw), stride,
                                                buffers[c], threads=th))
                calls.append(K.bconv_patch_call(buffers[c], prep.wb, a["cout"], nbits,
                                                out[i0:i0 + c], prep.init, threads=th,
                                                **kwargs))
            return calls
        calls.append(K.bconv_call(src, prep.wb, a["cout"], stride, nbits, out, prep.init,
                                  threads=th, **kwargs))
        return calls

    def _fconv(self, idx: int, op: Op, x: np.ndarray, out: np.ndarray) -> list[Call]:
        a, th = op.attrs, self.threads
        prep = self.program.prepared(idx)
        assert isinstance(prep, PreparedFconv)
        pad = tuple(a["padding"])
        calls: list[Call] = []
        if pad != (0, 0):
            src = self._keep(K.aligned_zeros((self.n, x.shape[1] + 2 * pad[0],
                                              x.shape[2] + 2 * pad[1], x.shape[3]),
                                             np.float32))
            if op.inputs[0] == 0 and self._input_uses == 1:
                # the network input is copied straight into the padded buffer's interior
                self.bufs[0] = src[:, pad[0]:pad[0] + x.shape[1], pad[1]:pad[1] + x.shape[2]]
                self._input_buffer = (src, pad)
            else:
                calls.append(K.pad_call(x, pad, src, threads=th))
        else:
            src = x
        calls.append(K.fconv_call(src, prep.wf, a["cout"], tuple(a["kernel"]),
                                  tuple(a["stride"]), prep.epilogue, out, threads=th,
                                  thresholds=prep.thresholds))
        return calls

    def _float_op(self, op: Op, xs: list[np.ndarray], y: np.ndarray) -> list[Call]:  # noqa: C901
        a, kind, th = op.attrs, op.kind, self.threads
        x = xs[0]
        if kind in ("maxpool", "avgpool"):
            return [K.pool_call(kind, x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"],
                                y, a.get("count_include_pad", True), threads=th)]
        if kind == "adaptive_avgpool":
            return [K.adaptive_avgpool_call(x, y, threads=th)]
        if kind == "add":
            return [K.add_call(x, xs[1], y, threads=th)]
        if kind == "concat":
            return self._concat(xs, y)
        if kind == "prelu":
            return [K.prelu_call(x, op.arrays["shift"], op.arrays["slope"], op.arrays["bias"], y,
                                 threads=th)]
        if kind == "affine":
            return [K.affine_call(x, op.arrays["alpha"], op.arrays["beta"], y, threads=th)]
        if kind == "clamp":
            lo, hi = a.get("lo"), a.get("hi")

            def clamp() -> None:
                np.copyto(y, x)
                if lo is not None:
                    np.copyto(y, np.float32(lo), where=y < np.float32(lo))
                if hi is not None:
                    np.copyto(y, np.float32(hi), where=y > np.float32(hi))

            return [clamp]
        raise EngineError(f"unknown op kind {kind!r}")

    @staticmethod
    def _concat(xs: list[np.ndarray], y: np.ndarray) -> list[Call]:
        """Copy each float input into its channel slice of ``y`` (views fixed at plan time)."""
        pairs, off = [], 0
        for x in xs:
            c = int(x.shape[-1])
            pairs.append((y[..., off:off + c], x))
            off += c

        def concat() -> None:
            for dst, src in pairs:
                np.copyto(dst, src)

        return [concat]

    # ------------------------------------------------------------------ inspection
    def env(self) -> dict[int, np.ndarray]:
        """Copies of every value's buffer after :meth:`run`."""
        return {vid: buf.copy() for vid, buf in self.bufs.items()}

    def op_calls(self, idx: int) -> list[Call]:
        """The kernel calls of op ``idx`` (padding / patch matrix, then the op itself)."""
        for i, calls in self.steps:
            if i == idx:
                return calls
        raise EngineError(f"no op {idx}")
