"""QONNX export of a compiled :class:`Program` for FINN: bipolar weights, threshold activations.

Every binary layer becomes ``[Pad(±1)] -> Conv/MatMul(BipolarQuant(W)) -> MultiThreshold``:
the weights are ±1 initializers behind a ``BipolarQuant`` node (scale 1, so qonnx infers the
BIPOLAR datatype), and BatchNorm + sign are the engine's own integer thresholds, moved from
the popcount ``p`` to the ±1 dot product ``d = K - 2p`` the Conv computes. A channel whose
sign is flipped by a negative gamma gets its filter negated (``-d``), which is what FINN's
streamlining does with a negative scale, so every threshold stays an increasing step
(``out_dtype`` BIPOLAR, ``out_scale`` 2, ``out_bias`` -1). Full-precision layers stay float
(Conv/MatMul, Add, Mul), pooling, residual adds and flatten are the standard ONNX ops. The
graph is NCHW like the PyTorch model and is cleaned by qonnx's ``cleanup_model``,
``InferShapes`` and ``InferDataTypes``.

Building from the Program (not the PyTorch modules) means the file computes exactly what the
engine computes: every binary intermediate of the engine is a tensor of the graph (see
:attr:`QonnxExport.values`), and the tests execute the graph with qonnx and compare them.

``finn=True`` gives FINN's hardware form of the same network: binary activations are BINARY
``b = (x + 1) / 2`` (0 stands for -1, the encoding FINN's streams use), so a -1 border is the
Conv's own zero padding, which FINN lowers to ``FMPadding`` + ``ConvolutionInputGenerator``;
a binary layer computes ``c = conv(b, W)`` and ``d = 2c - sum(W)``, folded into its integer
thresholds. FINN pads only with 0, so this form needs ``pad_value`` -1 (an error otherwise).
A binary layer whose float output is only average-pooled and then signed (NIN) becomes its
integer code, zero-padded window sums (a depthwise ``Conv`` of ones) and a threshold at 0,
which FINN maps to hardware (see ``_Builder._bconv_sum_pool_finn``); the default form keeps
the float ``AveragePool``.

``input_scale`` (either form) puts an 8-bit quantizer on the input (``Quant``, signed, scale
``input_scale``) and the first layer's weights behind ``Quant`` with the power-of-two scale
that makes them 8-bit integers, so FINN sees integers and maps the first layer to hardware
too. Both are identities, so the graph stays exact, when the inputs are multiples of
``input_scale`` in 8 bits (pixels ``(p - 128) / 128`` with scale 1/128) and the weights are on
an 8-bit power-of-two grid (else :class:`EngineError` names the layer: quantize it first).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnnprune.atomic import atomic_write_bytes
from bnnprune.engine import kernels as K
from bnnprune.engine.compile import as_program
from bnnprune.engine.errors import EngineError
from bnnprune.engine.pack import unpack_signs, words
from bnnprune.engine.program import Op, Program, ValueInfo

__all__ = ["QONNX_DOMAIN", "QonnxExport", "export_qonnx", "require_qonnx"]

QONNX_DOMAIN = "qonnx.custom_op.general"
ONNX_OPSET = 13
MAX_EXACT_BITS = 1 << 24  # integers a float32 Conv/MatMul accumulates exactly
QUANT_BITS = 8  # the input quantizer and the first layer's weights with input_scale
_TAG = "bnnprune:value:"


def require_qonnx() -> None:
    """Raise :class:`EngineError` with the install command when qonnx is missing."""
    try:
        import qonnx  # noqa: F401
    except ImportError:
        raise EngineError("QONNX export needs the qonnx package: pip install 'bnnprune[fpga]'") \
            from None


@dataclass
class QonnxExport:
    """The cleaned QONNX model and where the engine's values are in it.

    ``values`` maps ``"<source>:<kind>"`` (the keys of :meth:`Program.intermediates`) to the
    graph tensor holding that value in PyTorch layout; ``bits`` values are ±1 tensors.
    """

    model: Any  # qonnx.core.modelwrapper.ModelWrapper
    values: dict[str, str]
    input_name: str
    output_name: str
    batch_size: int
    path: str | None = None
    one_bit: list[str] = field(default_factory=list)  # tensors qonnx typed BIPOLAR (BINARY)
    finn: bool = False  # FINN's form: binary values are BINARY b = (x + 1) / 2

    def decode(self, key: str, arr: np.ndarray) -> np.ndarray:
        """The engine's value ``key`` (``"<source>:<kind>"``) from its tensor ``arr`` (±1 bits)."""
        return 2 * arr - 1 if self.finn and key.endswith(":bits") else arr


class _Builder:
    """Emits ONNX nodes and initializers for the ops of one Program."""

    def __init__(self, program: Program, batch: int, finn: bool = False,
                 input_scale: float | None = None) -> None:
        from onnx import helper

        self.h = helper
        self.p = program
        self.batch = batch
        self.finn = finn
        self.input_scale = input_scale
        self.decoded: dict[int, str] = {}  # FINN form: value id -> its ±1 tensor
        # FINN form: float bconv output value -> the avgpool-then-sign op that alone uses it
        self.sum_pooled = _sum_pooled(program) if finn else {}
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.names: dict[int, str] = {0: "input"}
        self.count = 0

    # ------------------------------------------------------------------ helpers
    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(stem)
        # np.asarray(order="C") keeps a scalar 0-d (FINN's FoldQuantWeights reads int(bits))
        self.inits.append(numpy_helper.from_array(np.asarray(arr, order="C"), name))
        return name

    def node(self, op_type: str, inputs: list[str], stem: str, domain: str = "",
             **attrs: Any) -> str:
        out = self.fresh(stem)
        n = self.h.make_node(op_type, inputs, [out], name=out, **attrs)
        if domain:
            n.domain = domain
        self.nodes.append(n)
        return out

    def shape(self, v: ValueInfo) -> list[int]:
        return [self.batch, v.c * v.h * v.w] if v.flat else [self.batch, v.c, v.h, v.w]

    def channel(self, v: ValueInfo, arr: np.ndarray) -> np.ndarray:
        """A per-channel vector broadcast against value ``v`` (NCHW or (N, C))."""
        arr = np.asarray(arr, np.float32)
        if v.flat:
            if v.h * v.w != 1:
                raise EngineError("per-channel parameters on a flattened image")
            return arr.reshape(1, -1)
        return arr.reshape(1, -1, 1, 1)

    def affine(self, x: str, v: ValueInfo, mul: np.ndarray | None, add: np.ndarray | None,
               stem: str) -> str:
        """``x * mul + add`` as Mul/Add nodes, leaving out the identity ones (exact either way)."""
        if mul is not None and not np.all(mul == 1):
            x = self.node("Mul", [x, self.const(f"{stem}_mul", self.channel(v, mul))], stem)
        if add is not None and not np.all(add == 0):
            x = self.node("Add", [x, self.const(f"{stem}_add", self.channel(v, add))], stem)
        return x

    def threshold(self, x: str, thr: np.ndarray, stem: str) -> str:
        """Bipolar step per channel: +1 where ``x >= thr[c]``, else -1 (FINN form: 1, else 0)."""
        t = self.const(f"{stem}_thr", np.asarray(thr, np.float32).reshape(-1, 1))
        if self.finn:
            return self.node("MultiThreshold", [x, t], stem, domain=QONNX_DOMAIN,
                             out_dtype="BINARY", out_scale=1.0, out_bias=0.0)
        return self.node("MultiThreshold", [x, t], stem, domain=QONNX_DOMAIN,
                         out_dtype="BIPOLAR", out_scale=2.0, out_bias=-1.0)

    def arg(self, vid: int, raw: bool = False) -> str:
        """The tensor of value ``vid``; in FINN's form a bits value as ±1 (``2b - 1``) unless
        ``raw`` (binary layers and max-pools take the 0/1 stream itself)."""
        name = self.names[vid]
        if raw or not self.finn or self.p.values[vid].kind != "bits":
            return name
        if vid not in self.decoded:
            v = self.p.values[vid]
            two = self.channel(v, np.full(v.c, 2.0, np.float32))
            y = self.node("Mul", [name, self.const("dec_mul", two)], "decode")
            self.decoded[vid] = self.node("Add", [y, self.const("dec_add", -np.ones_like(two))],
                                          "decode")
        return self.decoded[vid]

    def quant(self, x: str, scale: float, stem: str, bits: int = QUANT_BITS) -> str:
        """Signed ``bits``-bit ``Quant`` with ``scale`` and zero point 0 (round half to even)."""
        args = [self.const(f"{stem}_{n}", np.array(v, np.float32))
                for n, v in (("scale", scale), ("zeropt", 0.0), ("bits", bits))]
        return self.node("Quant", [x, *args], stem, domain=QONNX_DOMAIN, signed=1, narrow=0,
                         rounding_mode="ROUND")

    def matmul_or_conv(self, x: str, xv: ValueInfo, w: np.ndarray, op: Op, stem: str,
                       binary: bool, pads: tuple[int, int], wscale: float | None = None) -> str:
        """Conv (spatial input) or MatMul (flattened input) with float (Co, Ci, KH, KW) ``w``;
        ``wscale``: the weights behind an 8-bit ``Quant`` of that scale."""
        k = op.attrs["kernel"]
        s = op.attrs["stride"]
        if xv.flat:
            w = w.reshape(w.shape[0], -1).T
        wname = self.const(f"{stem}_W", w.astype(np.float32))
        if binary:
            scale = self.const(f"{stem}_scale", np.array(1.0, np.float32))
            wname = self.node("BipolarQuant", [wname, scale], f"{stem}_wq", domain=QONNX_DOMAIN)
        elif wscale is not None:
            wname = self.quant(wname, wscale, f"{stem}_wq")
        if xv.flat:
            return self.node("MatMul", [x, wname], stem)
        # group and dilations spelled out: qonnx's LowerConvsToMatMul reads them (no defaults)
        return self.node("Conv", [x, wname], stem, kernel_shape=list(k), strides=list(s),
                         pads=[pads[0], pads[1], pads[0], pads[1]], group=1, dilations=[1, 1])

    # ------------------------------------------------------------------ ops
    def emit(self, op: Op) -> str:
        raw = op.kind in ("bconv", "maxpool_bits", "flatten")
        ins = [self.arg(i, raw) for i in op.inputs]
        xv = self.p.values[op.inputs[0]]
        out = self.p.values[op.output]
        stem = f"{op.kind}_{len(self.nodes)}"
        kind = op.kind
        if kind == "bconv":
            return self._bconv(ins[0], xv, out, op, stem)
        if kind == "fconv":
            return self._fconv(ins[0], xv, out, op, stem)
        if kind == "avgpool" and op.inputs[0] in self.sum_pooled:
            return self._sum_pool_sign(ins[0], xv, out, op, stem)
        if kind in ("maxpool", "maxpool_bits", "avgpool"):
            return self._pool(ins[0], xv, out, op, stem)
        if kind == "adaptive_avgpool":
            return self._adaptive(ins[0], xv, out, op, stem)
        if kind == "add":
            y = self.node("Add", ins, stem)
            return self.threshold(y, np.zeros(out.c, np.float32), stem) if op.attrs["pack"] else y
        if kind == "affine":
            y = self.affine(ins[0], xv, op.arrays["alpha"], op.arrays["beta"], stem)
            if op.attrs["pack"]:
                return self.threshold(y, np.zeros(out.c, np.float32), stem)
            return y if y != ins[0] else self.node("Identity", ins, stem)
        if kind == "clamp":
            lo, hi = op.attrs.get("lo"), op.attrs.get("hi")
            bounds = [self.const(f"{stem}_{b}", np.array(v, np.float32)) if v is not None else ""
                      for b, v in (("lo", lo), ("hi", hi))]
            y = self.node("Clip", [ins[0], *bounds], stem)
            return self.threshold(y, np.zeros(out.c, np.float32), stem) if op.attrs["pack"] else y
        if kind == "sign":
            return self.threshold(ins[0], np.zeros(out.c, np.float32), stem)
        if kind == "flatten":
            return self.node("Flatten", ins, stem, axis=1)
        raise EngineError(f"op {op.name or kind}: kind {kind!r} has no QONNX form")

    def _bconv(self, x: str, xv: ValueInfo, out: ValueInfo, op: Op, stem: str) -> str:
        cin, cout = op.attrs["cin"], op.attrs["cout"]
        (kh, kw), (ph, pw) = op.attrs["kernel"], op.attrs["padding"]
        nbits = cin * kh * kw
        if nbits >= MAX_EXACT_BITS:
            raise EngineError(f"op {op.name}: {nbits} bits per dot product exceed what a float32 "
                              "Conv accumulates exactly")
        w = unpack_signs(op.arrays["w"].reshape(cout, kh, kw, words(cin)), cin)
        w = np.ascontiguousarray(w.transpose(0, 3, 1, 2))  # (Co, Ci, KH, KW) ±1
        if self.finn:
            return self._bconv_finn(x, xv, out, op, stem, w, nbits)
        if ph or pw:
            pads = self.const(f"{stem}_pads", np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64))
            pv = self.const(f"{stem}_padval", np.array(float(op.attrs["pad_value"]), np.float32))
            x = self.node("Pad", [x, pads, pv], f"{stem}_pad", mode="constant")
        if op.attrs["mode"] == "bits":
            thr = op.arrays["thr"].astype(np.int64)
            flip = op.arrays["flip"].astype(bool)
            # bit -1 iff (p > thr) ^ flip; with d = K - 2p: +1 iff d >= K - 2 thr, and for a
            # flipped channel +1 iff -d >= 2 thr - K + 1 (d has the parity of K).
            t = np.where(flip, 2 * thr - nbits + 1, nbits - 2 * thr)
            w = np.where(flip[:, None, None, None], -w, w)
            d = self.matmul_or_conv(x, xv, w, op, stem, binary=True, pads=(0, 0))
            return self.threshold(d, t, stem)
        d = self.matmul_or_conv(x, xv, w, op, stem, binary=True, pads=(0, 0))
        d = self.affine(d, out, op.arrays["m1"], op.arrays["a1"], f"{stem}_e1")
        return self.affine(d, out, op.arrays["m2"], op.arrays["a2"], f"{stem}_e2")

    def _bconv_finn(self, x: str, xv: ValueInfo, out: ValueInfo, op: Op, stem: str,
                    w: np.ndarray, nbits: int) -> str:
        """FINN's form of a binary layer: ``c = conv(b, W)`` on the 0/1 input ``b`` (zero
        padding is a -1 border), ``d = 2c - sum(W)``, thresholds moved from ``d`` to ``c``."""
        pads = tuple(op.attrs["padding"])
        if any(pads) and op.attrs["pad_value"] != -1:
            raise EngineError(f"op {op.name}: FINN pads binary streams with 0, which is -1; "
                              f"this layer pads with {op.attrs['pad_value']:+g} (train with "
                              "pad_value -1, e.g. --pad-value -1, for a FINN export)")
        if op.attrs["mode"] == "bits":
            thr = op.arrays["thr"].astype(np.int64)
            flip = op.arrays["flip"].astype(bool)
            t = np.where(flip, 2 * thr - nbits + 1, nbits - 2 * thr)  # on d, as in _bconv
            w = np.where(flip[:, None, None, None], -w, w)
            wsum = w.reshape(w.shape[0], -1).sum(1).astype(np.int64)
            c = self.matmul_or_conv(x, xv, w, op, stem, binary=True, pads=pads)
            return self.threshold(c, -((-(t + wsum)) // 2), stem)  # 2c - wsum >= t
        if op.output in self.sum_pooled:
            return self._bconv_sum_pool_finn(x, xv, out, op, stem, w, nbits)
        wsum = w.reshape(w.shape[0], -1).sum(1).astype(np.float32)
        c = self.matmul_or_conv(x, xv, w, op, stem, binary=True, pads=pads)
        d = self.affine(c, out, np.full(out.c, 2.0, np.float32), -wsum, f"{stem}_d")
        d = self.affine(d, out, op.arrays["m1"], op.arrays["a1"], f"{stem}_e1")
        return self.affine(d, out, op.arrays["m2"], op.arrays["a2"], f"{stem}_e2")

    def _bconv_sum_pool_finn(self, x: str, xv: ValueInfo, out: ValueInfo, op: Op, stem: str,
                             w: np.ndarray, nbits: int) -> str:
        """FINN's form of a binary layer whose float output is only average-pooled, then
        signed (NIN): the layer's integer code ``z``, which the next op
        (:meth:`_sum_pool_sign`) zero-pads, sums over each window and thresholds at 0.

        With ``y = A d + B`` the layer's float epilogue (``d = 2c - sum(W)`` the ±1 dot
        product) and ``n`` the window's real pixels, the pool's sign is +1 iff
        ``A S + n B >= 0`` (``S``: the window's sum of ``d``; the divisor is positive either
        way). For ``A > 0`` that is ``S >= n p`` with ``p = -B / A`` (``A < 0``: the filter
        negated, ``p = B / |A|``), i.e. the integer ``S >= t_n = ceil(n p)``, a threshold that
        depends on ``n``. Any ``P`` with ``ceil(n P) = t_n`` for every window size ``n`` of the
        pool gives the same decisions; ``P = min_n t_n / n`` is one (``t_m / m <= t_n / n``
        and ``t_m / m >= p > (t_n - 1) / n``). With ``P = t / m`` in lowest terms and ``L``
        the lcm of all channels' ``m``, ``S >= n P`` iff the window's sum of the integer
        ``z = L d - L P = 2L c - L sum(W) - L P`` is >= 0, and padding ``z`` with 0 is exactly
        leaving the pixel out: a position-independent threshold. ``A = 0``: the
        sign of ``n B`` is that of ``B``, so ``z`` is ``2L c + 2LK`` (never negative) or
        ``2L c - 2LK - 1`` (always negative). A, B and p are exact rationals of the engine's
        float32 parameters; the engine's own float rounding of ``y`` and of the window sum
        can differ from them only within a float32 ulp of a tie."""
        from fractions import Fraction

        pool = self.sum_pooled[op.output]
        sizes = _window_sizes(out, pool)
        m1, a1, m2, a2 = (op.arrays.get(k) for k in ("m1", "a1", "m2", "a2"))
        codes: list[tuple[Fraction, int] | bool] = []  # (P, sum(W)), or A = 0: B >= 0
        w = w.copy()
        for ch in range(out.c):
            f = [Fraction(float(v[ch] if v is not None else d))
                 for v, d in ((m1, 1.0), (a1, 0.0), (m2, 1.0), (a2, 0.0))]
            a, b = f[0] * f[2], f[1] * f[2] + f[3]
            if a == 0:
                codes.append(bool(b >= 0))
                continue
            if a < 0:
                w[ch] = -w[ch]
            p = -b / abs(a)
            codes.append((min(Fraction(-((-n * p.numerator) // p.denominator), n)
                              for n in sizes), int(w[ch].sum())))
        # one scale for all channels (FINN absorbs a scalar Mul; a per-channel one of rank 4
        # trips its Absorb1BitMulIntoMatMul): L, the lcm of the P's denominators, z = L d - L P
        scale = math.lcm(*(c[0].denominator for c in codes if isinstance(c, tuple)))
        top = 2 * scale * nbits  # |2 L c| <= top
        add = np.array([(top if c else -top - 1) if isinstance(c, bool)
                        else -scale * c[1] - int(c[0] * scale) for c in codes], np.float64)
        kh, kw = pool.attrs["kernel"]
        if (np.abs(add).max() + top) * kh * kw >= MAX_EXACT_BITS:
            raise EngineError(f"op {op.name}: window sums of its integer code exceed what "
                              "float32 sums exactly")
        c = self.matmul_or_conv(x, xv, w, op, stem, binary=True, pads=tuple(op.attrs["padding"]))
        z = self.node("Mul", [c, self.const(f"{stem}_zmul", np.array(2.0 * scale, np.float32))],
                      f"{stem}_z")
        return self.affine(z, out, None, add.astype(np.float32), f"{stem}_z")

    def _sum_pool_sign(self, x: str, xv: ValueInfo, out: ValueInfo, op: Op, stem: str) -> str:
        """The average pool + sign after :meth:`_bconv_sum_pool_finn`: a depthwise sum over
        each window (a ``Conv`` of ones, weights behind a 2-bit ``Quant`` so FINN sees
        integers; zero padding) and a threshold at 0."""
        (kh, kw), (sh, sw), (ph, pw) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
        ones = self.const(f"{stem}_ones", np.ones((xv.c, 1, kh, kw), np.float32))
        ones = self.quant(ones, 1.0, f"{stem}_wq", bits=2)
        y = self.node("Conv", [x, ones], stem, kernel_shape=[kh, kw], strides=[sh, sw],
                      pads=[ph, pw, ph, pw], group=xv.c, dilations=[1, 1])
        return self.threshold(y, np.zeros(out.c, np.float32), stem)

    def _fconv(self, x: str, xv: ValueInfo, out: ValueInfo, op: Op, stem: str) -> str:
        cin, cout = op.attrs["cin"], op.attrs["cout"]
        kh, kw = op.attrs["kernel"]
        w = op.arrays["w"].reshape(kh, kw, cin, cout).transpose(3, 2, 0, 1)
        first = self.input_scale is not None and op.inputs[0] == 0
        y = self.matmul_or_conv(x, xv, np.ascontiguousarray(w), op, stem, binary=False,
                                pads=tuple(op.attrs["padding"]),
                                wscale=_int8_scale(w, op) if first else None)
        # the engine's epilogue: (conv + b) * alpha + beta, separately rounded
        y = self.affine(y, out, None, op.arrays["b"], f"{stem}_b")
        y = self.affine(y, out, op.arrays["alpha"], op.arrays["beta"], f"{stem}_bn")
        return self.threshold(y, np.zeros(cout, np.float32), stem) if op.attrs["pack"] else y

    def _pool(self, x: str, xv: ValueInfo, out: ValueInfo, op: Op, stem: str) -> str:
        (kh, kw), (sh, sw), (ph, pw) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
        ceil = bool(op.attrs["ceil_mode"])
        for n, k, s, p in ((xv.h, kh, sh, ph), (xv.w, kw, sw, pw)):
            o = K.pool_out_size(n, k, s, p, ceil)
            if ceil and -(-(n + 2 * p - k) // s) + 1 != o:
                raise EngineError(f"op {op.name}: ceil_mode pooling whose last window would start "
                                  "in the padding (PyTorch drops it, ONNX keeps it)")
            if (ceil and op.kind == "avgpool" and op.attrs.get("count_include_pad")
                    and (o - 1) * s + k > n + 2 * p):
                raise EngineError(f"op {op.name}: ceil_mode average pooling with "
                                  "count_include_pad past the padded border (divisors differ "
                                  "between PyTorch and ONNX)")
        attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": [sh, sw],
                                 "pads": [ph, pw, ph, pw], "ceil_mode": int(ceil)}
        if op.kind == "avgpool":
            attrs["count_include_pad"] = int(bool(op.attrs.get("count_include_pad")))
            y = self.node("AveragePool", [x], stem, **attrs)
        else:
            y = self.node("MaxPool", [x], stem, **attrs)
        if op.kind != "maxpool_bits" and op.attrs.get("pack"):
            return self.threshold(y, np.zeros(out.c, np.float32), stem)
        return y

    def _adaptive(self, x: str, xv: ValueInfo, out: ValueInfo, op: Op, stem: str) -> str:
        oh, ow = op.attrs["output_size"]
        if (oh, ow) == (1, 1):
            y = self.node("GlobalAveragePool", [x], stem)
        elif xv.h % oh == 0 and xv.w % ow == 0:
            kh, kw = xv.h // oh, xv.w // ow
            y = self.node("AveragePool", [x], stem, kernel_shape=[kh, kw], strides=[kh, kw])
        else:
            raise EngineError(f"op {op.name}: adaptive average pooling from {xv.h}x{xv.w} to "
                              f"{oh}x{ow} has uneven windows, which ONNX pooling cannot express")
        if op.attrs.get("pack"):
            return self.threshold(y, np.zeros(out.c, np.float32), stem)
        return y

    # ------------------------------------------------------------------ graph
    def build(self) -> Any:
        from onnx import TensorProto

        if self.input_scale is not None:
            self.names[0] = self.quant("input", self.input_scale, "input_q")
        for op in self.p.ops:
            y = self.emit(op)
            if op.output not in self.sum_pooled:  # an integer code, not the engine's value
                self.nodes[-1].doc_string = f"{_TAG}{op.output}"
            self.names[op.output] = y
        v0, vo = self.p.values[0], self.p.values[self.p.output]
        inp = self.h.make_tensor_value_info("input", TensorProto.FLOAT, self.shape(v0))
        outp = self.h.make_tensor_value_info(self.names[self.p.output], TensorProto.FLOAT,
                                             self.shape(vo))
        graph = self.h.make_graph(self.nodes, "bnnprune", [inp], [outp], self.inits)
        return self.h.make_model(
            graph, producer_name="bnnprune",
            opset_imports=[self.h.make_opsetid("", ONNX_OPSET),
                           self.h.make_opsetid(QONNX_DOMAIN, 1)])


def _sum_pooled(program: Program) -> dict[int, Op]:
    """Float binary-layer outputs used only by an average pool whose output is only signed
    (packed): value id -> that pool (the FINN form sums such windows in integers)."""
    uses: dict[int, int] = {}
    for op in program.ops:
        for i in op.inputs:
            uses[i] = uses.get(i, 0) + 1
    made = {op.output: op for op in program.ops}
    out: dict[int, Op] = {}
    for op in program.ops:
        src = made.get(op.inputs[0])
        if (op.kind == "avgpool" and op.attrs.get("pack") and not op.attrs["ceil_mode"]
                and src is not None and src.kind == "bconv" and src.attrs["mode"] == "float"
                and uses[op.inputs[0]] == 1 and op.inputs[0] != program.output):
            out[op.inputs[0]] = op
    return out


def _window_sizes(v: ValueInfo, pool: Op) -> set[int]:
    """The numbers of real (unpadded) pixels in the windows of ``pool`` over value ``v``."""
    counts = []
    for n, k, s, p in zip((v.h, v.w), pool.attrs["kernel"], pool.attrs["stride"],
                          pool.attrs["padding"]):
        o = K.pool_out_size(n, k, s, p, False)
        counts.append({min(i * s - p + k, n) - max(i * s - p, 0) for i in range(o)})
    return {a * b for a in counts[0] for b in counts[1]}


def _int8_scale(w: np.ndarray, op: Op) -> float:
    """The power of two ``s`` with every ``w / s`` an 8-bit signed integer (the finest such)."""
    w = np.asarray(w, np.float64)
    lo, hi = -(1 << (QUANT_BITS - 1)), (1 << (QUANT_BITS - 1)) - 1
    for n in range(-8, 25):
        q = w * 2.0 ** n
        if np.all(q == np.round(q)) and q.min() >= lo and q.max() <= hi:
            return 2.0 ** -n
    raise EngineError(f"op {op.name}: weights are not {QUANT_BITS}-bit integers times a power "
                      "of two; quantize the layer before an export with input_scale")


def _value_map(model: Any, program: Program) -> dict[str, str]:
    """``"<source>:<kind>"`` -> tensor, from the tags the builder left on the nodes."""
    by_id: dict[int, str] = {0: model.graph.input[0].name}
    for n in model.graph.node:
        if n.doc_string.startswith(_TAG):
            by_id[int(n.doc_string[len(_TAG):])] = n.output[0]
    out: dict[str, str] = {}
    for vid in sorted(by_id):
        v = program.values[vid]
        key = f"{v.source}:{v.kind}"
        if v.source and key not in out:
            out[key] = by_id[vid]
    return out


def _check_shapes(model: Any, program: Program, by_key: dict[str, str], batch: int) -> None:
    """Every mapped tensor has the shape of its engine value (guards ONNX pooling rules)."""
    for vid, v in enumerate(program.values):
        key = f"{v.source}:{v.kind}"
        name = by_key.get(key)
        if name is None:
            continue
        want = [batch, v.c * v.h * v.w] if v.flat else [batch, v.c, v.h, v.w]
        got = model.get_tensor_shape(name)
        if got is not None and list(got) != want:
            raise EngineError(f"value {vid} ({key}): QONNX shape {list(got)} differs from the "
                              f"engine's {want}")


def export_qonnx(model_or_program: Any, input_shape: tuple[int, int, int] | None = None,
                 path: str | os.PathLike[str] | None = None, *,
                 batch_size: int = 1, finn: bool = False,
                 input_scale: float | None = None) -> QonnxExport:
    """Export a PyTorch BNN (compiled first) or a compiled :class:`Program` to QONNX.

    The graph has input ``global_in`` of shape (``batch_size``, C, H, W) (FINN builds for
    batch 1) and the logits as output. ``finn``: FINN's hardware form; ``input_scale``: an
    8-bit input quantizer and 8-bit first-layer weights (both in the module docstring).
    Writes ``path`` (atomically) when given. Raises :class:`EngineError` naming any op QONNX
    (or, with ``finn``, FINN's padding) cannot express exactly.
    """
    require_qonnx()
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EngineError(f"batch_size must be a positive integer, got {batch_size!r}")
    if input_scale is not None and not (isinstance(input_scale, int | float)
                                        and np.isfinite(input_scale) and input_scale > 0):
        raise EngineError(f"input_scale must be a positive number, got {input_scale!r}")
    program = as_program(model_or_program, input_shape)
    proto = _Builder(program, batch_size, finn, input_scale).build()
    try:
        model = cleanup_model(ModelWrapper(proto))
        model = model.transform(InferShapes()).transform(InferDataTypes())
    except Exception as e:  # noqa: BLE001 - qonnx/onnx raise many types
        raise EngineError(f"qonnx could not clean the exported graph: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    values = _value_map(model, program)
    _check_shapes(model, program, values, batch_size)
    model.set_metadata_prop("bnnprune.values", json.dumps(values, sort_keys=True))
    model.set_metadata_prop("bnnprune.form", "finn" if finn else "bipolar")
    act = "BINARY" if finn else "BIPOLAR"
    one_bit = [t.name for t in (*model.graph.value_info, *model.graph.output)
               if model.get_tensor_datatype(t.name).name == act]
    one_bit += [n.output[0] for n in model.graph.node if n.op_type == "BipolarQuant"
                and model.get_tensor_datatype(n.output[0]).name == "BIPOLAR"]
    out = QonnxExport(model, values, model.graph.input[0].name, model.graph.output[0].name,
                      batch_size, None, sorted(set(one_bit)), finn)
    if path is not None:
        atomic_write_bytes(path, model.model.SerializeToString())
        out.path = os.fspath(path)
    return out
