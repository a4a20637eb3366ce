"""Compile a PyTorch BNN (zoo model or a user's nn.Module of our layers) to a :class:`Program`.

The model is traced with torch.fx (our binary layers are leaves), shapes are propagated, and
each value is given the representation its consumers need: packed bits where only its sign
is used (inputs of binary layers, through max-pool/flatten), float where it is used as a
number (average pooling, residual adds, full-precision layers, the output). A binary layer
followed by per-channel monotone ops (BatchNorm, Hardtanh, ReLU) whose result is only
binarized becomes one XNOR-popcount op with integer thresholds; otherwise it yields the
exact integer result through a float epilogue (scale, bias, BatchNorm folded in).
"""

from __future__ import annotations

import functools
import json
import operator
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from bnnprune.engine.errors import EngineError
from bnnprune.engine.fileformat import load
from bnnprune.engine.fold import bn_affine, fold_threshold
from bnnprune.engine.pack import pack_weights
from bnnprune.engine.program import Op, Program, ValueInfo
from bnnprune.metrics.ops import is_bop_layer
from bnnprune.nn import BinaryConv2d, BinaryLinear, RPReLU, RSign

__all__ = ["as_program", "compile_model"]

_BITS, _FLOAT = "bits", "float"


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


_LEAVES = (BinaryConv2d, BinaryLinear, RSign, RPReLU)


class _N:
    """A normalized graph node: kind, tensor inputs, module/params and output shape."""

    def __init__(self, node: fx.Node, kind: str, inputs: list[fx.Node], module: Any = None,
                 **params: Any) -> None:
        self.node, self.kind, self.inputs = node, kind, inputs
        self.module, self.params = module, params
        self.name = str(node.target) if node.op == "call_module" else node.name
        meta = node.meta.get("tensor_meta")
        self.shape = tuple(meta.shape[1:]) if hasattr(meta, "shape") else None


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, list | tuple) else (int(v), int(v))


def _module_path(node: fx.Node) -> str:
    """Where a node sits in the model: the innermost module whose forward() made it."""
    if node.op == "call_module":
        return f"module {node.target!r}"
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "the model's forward()"
    path, cls = list(stack.values())[-1]
    return f"module {path!r} ({getattr(cls, '__name__', cls)})"


def _where(n: _N) -> str:
    if n.node.op == "call_module":
        return f"{n.kind} {n.name!r}"
    return f"{n.kind} {n.name!r} in {_module_path(n.node)}"


def _fn_args(node: fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """A function call's arguments after the input tensor, by name (``names`` in order)."""
    out = dict(defaults)
    out.update(zip(names, node.args[1:]))
    out.update({k: v for k, v in node.kwargs.items() if k in names})
    return out


_MAXPOOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                 "divisor_override")
_POOL_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                  "return_indices": False, "count_include_pad": True, "divisor_override": None}
_POOL_FNS = {F.max_pool2d: ("maxpool", _MAXPOOL_ARGS), torch.max_pool2d: ("maxpool", _MAXPOOL_ARGS),
             F.avg_pool2d: ("avgpool", _AVGPOOL_ARGS),
             F.adaptive_avg_pool2d: ("adaptive_avgpool", ("output_size",)),
             F.adaptive_max_pool2d: ("adaptive_maxpool", ("output_size", "return_indices"))}
_DROPOUT_FNS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                F.feature_alpha_dropout)
_CAT_FNS = (torch.cat, torch.concat, torch.concatenate)


def _module_pool(m: nn.Module) -> dict[str, Any]:
    return {k: getattr(m, k) for k in (*_MAXPOOL_ARGS, *_AVGPOOL_ARGS, "output_size")
            if hasattr(m, k)}


def _op_name(node: fx.Node) -> str:
    name = getattr(node.target, "__name__", str(node.target))
    return re.sub(r"_\d+$", "", node.name) if name == "fn" else name  # boolean_dispatch


def _normalize_module(node: fx.Node, m: nn.Module, x: list[fx.Node]) -> _N:  # noqa: C901
    if isinstance(m, BinaryConv2d):
        return _N(node, "bconv", x, m)
    if isinstance(m, BinaryLinear):
        return _N(node, "blinear", x, m)
    if isinstance(m, nn.Conv2d):
        return _N(node, "conv", x, m)
    if isinstance(m, nn.Linear):
        return _N(node, "linear", x, m)
    if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
        return _N(node, "bn", x, m)
    if isinstance(m, nn.MaxPool2d):
        return _N(node, "maxpool", x, m, **_module_pool(m))
    if isinstance(m, nn.AvgPool2d):
        return _N(node, "avgpool", x, m, **_module_pool(m))
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _N(node, "adaptive_avgpool", x, m, **_module_pool(m))
    if isinstance(m, nn.AdaptiveMaxPool2d):
        return _N(node, "adaptive_maxpool", x, m, **_module_pool(m))
    if isinstance(m, nn.Flatten):
        return _N(node, "flatten", x, m, start=m.start_dim, end=m.end_dim)
    if isinstance(m, nn.Identity | nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d
                  | nn.AlphaDropout | nn.FeatureAlphaDropout):
        return _N(node, "identity", x, m)
    if isinstance(m, nn.ReLU):
        return _N(node, "clamp", x, m, lo=0.0, hi=None)
    if isinstance(m, nn.Hardtanh):  # also ReLU6
        return _N(node, "clamp", x, m, lo=float(m.min_val), hi=float(m.max_val))
    if isinstance(m, nn.PReLU | RPReLU):
        return _N(node, "prelu", x, m)
    if isinstance(m, RSign):
        return _N(node, "rsign", x, m)
    raise EngineError(f"cannot compile module {node.target!r} of type {type(m).__name__}")


def _normalize_function(node: fx.Node, tensors: list[fx.Node]) -> _N:  # noqa: C901
    target = node.target
    where = f"{_op_name(node)!r} (node {node.name!r}) in {_module_path(node)}"
    if target in (operator.add, operator.iadd, torch.add):
        if len(tensors) != 2 or len(node.args) != 2 or node.kwargs:
            raise EngineError(f"cannot compile {where}: only tensor + tensor")
        return _N(node, "add", tensors)
    if target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return _N(node, "flatten", tensors[:1], start=start, end=end)
    if target in (F.relu, torch.relu):
        return _N(node, "clamp", tensors[:1], lo=0.0, hi=None)
    if target is F.relu6:
        return _N(node, "clamp", tensors[:1], lo=0.0, hi=6.0)
    if target is F.hardtanh:
        a = _fn_args(node, ("min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0})
        return _N(node, "clamp", tensors[:1], lo=float(a["min_val"]), hi=float(a["max_val"]))
    if target in _POOL_FNS:
        kind, names = _POOL_FNS[target]
        return _N(node, kind, tensors[:1], **_fn_args(node, names, _POOL_DEFAULTS))
    if target in _DROPOUT_FNS:
        default = target not in (F.alpha_dropout, F.feature_alpha_dropout)
        if _fn_args(node, ("p", "training"), {"training": default})["training"]:
            raise EngineError(f"cannot compile {where}: dropout with training=True (use "
                              "training=self.training)")
        return _N(node, "identity", tensors[:1])
    if target in _CAT_FNS:
        seq = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = _fn_args(node, ("dim",), {"dim": 0})["dim"]
        if not isinstance(seq, list | tuple) or not all(isinstance(t, fx.Node) for t in seq):
            raise EngineError(f"cannot compile {where}: needs a list of tensors")
        return _N(node, "cat", list(seq), dim=dim)
    if target in (getattr, operator.getitem) and not _is_tensor(node):
        return _N(node, "meta", [])
    raise EngineError(f"cannot compile function {where}")


def _normalize(gm: fx.GraphModule, node: fx.Node) -> _N:
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if node.op == "placeholder":
        return _N(node, "input", [])
    if node.op == "output":
        if not isinstance(node.args[0], fx.Node):
            raise EngineError("the model must return a single tensor")
        return _N(node, "output", [node.args[0]])
    if node.op == "get_attr":
        raise EngineError(f"cannot compile parameter access {node.target!r} inside forward() "
                          f"of {_module_path(node)}")
    if node.op == "call_module":
        return _normalize_module(node, gm.get_submodule(str(node.target)), tensors[:1])
    if node.op == "call_function":
        return _normalize_function(node, tensors)
    target = node.target
    if node.op == "call_method":
        if target == "size" or (target in ("dim",) and not _is_tensor(node)):
            return _N(node, "meta", [])
        if target in ("view", "reshape"):
            return _N(node, "flatten", tensors[:1], start=None, end=None)
        if target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return _N(node, "flatten", tensors[:1], start=start, end=end)
        if target in ("add", "add_") and len(tensors) == 2 and not node.kwargs:
            return _N(node, "add", tensors)
        if target == "relu":
            return _N(node, "clamp", tensors[:1], lo=0.0, hi=None)
        if target == "contiguous":
            return _N(node, "identity", tensors[:1])
        raise EngineError(f"cannot compile method .{target}() (node {node.name!r}) in "
                          f"{_module_path(node)}")
    raise EngineError(f"cannot compile node {node.name!r} ({node.op}) in {_module_path(node)}")


def _is_tensor(node: fx.Node) -> bool:
    return hasattr(node.meta.get("tensor_meta"), "shape")


# sign(op(x)) == op(sign(x)), channel by channel
_SIGN_PASS = ("identity", "flatten", "maxpool", "adaptive_maxpool", "cat")
# per-channel monotone ops that fold into thresholds (prelu only with slopes >= 0; an RSign
# ends the chain: its output is the sign)
_MONOTONE = ("bn", "identity", "clamp", "prelu", "rsign")


def _prelu_arrays(n: _N, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shift, slope, bias) of ``prelu(x + shift, slope) + bias`` over ``c`` channels."""
    m = n.module
    f32 = functools.partial(np.asarray, dtype=np.float32)
    if isinstance(m, RPReLU):
        shift, slope, bias = (f32(p.detach().cpu().numpy()) for p in
                              (m.shift_in, m.slope, m.shift_out))
    else:
        shift, bias = np.zeros(c, np.float32), np.zeros(c, np.float32)
        slope = np.broadcast_to(f32(m.weight.detach().cpu().numpy()).reshape(-1), (c,)).copy()
    if not shift.shape == slope.shape == bias.shape == (c,):
        raise EngineError(f"{_where(n)}: has {slope.shape[0]} channels, its input has {c}")
    return shift, slope, bias


def _sign_preserving(n: _N) -> bool:
    if n.kind in _SIGN_PASS:
        return True
    if n.kind == "prelu" and n.shape:
        shift, slope, bias = _prelu_arrays(n, int(n.shape[0]))
        return not shift.any() and not bias.any() and bool((slope > 0).all())
    return n.kind == "clamp" and n.params["lo"] < 0 <= (n.params["hi"] if n.params["hi"]
                                                        is not None else 0)


class _Lowering:
    def __init__(self, nodes: list[_N], input_shape: tuple[int, int, int]) -> None:
        self.nodes = nodes
        self.by_node = {n.node: n for n in nodes}
        c, h, w = input_shape
        self.values: list[ValueInfo] = [ValueInfo(_FLOAT, h, w, c, False, "input")]
        self.ops: list[Op] = []
        self.rep: dict[fx.Node, dict[str, int]] = {}
        self.req: dict[fx.Node, set[str]] = {n.node: set() for n in nodes}
        self.fused: set[fx.Node] = set()
        self.output = -1

    # ---------------------------------------------------------------- analysis
    def analyse(self) -> None:
        for n in reversed(self.nodes):
            need = self._needs(n)
            for i in n.inputs:
                self.req[i] |= need

    def _needs(self, n: _N) -> set[str]:
        r = self.req[n.node]
        if n.kind == "output":
            return {_FLOAT}
        if n.kind in ("bconv", "blinear") and is_bop_layer(n.module):
            return {_BITS}
        if n.kind in ("identity", "flatten"):
            return set(r)
        if _sign_preserving(n):
            return {_BITS} if r == {_BITS} else ({_FLOAT} if r else set())
        return {_FLOAT} if r or n.kind == "output" else set()

    # ---------------------------------------------------------------- values
    def value(self, kind: str, h: int, w: int, c: int, flat: bool, source: str) -> int:
        self.values.append(ValueInfo(kind, int(h), int(w), int(c), bool(flat), source))
        return len(self.values) - 1

    def emit(self, kind: str, inputs: list[int], out: int, name: str, attrs: dict[str, Any],
             arrays: dict[str, np.ndarray] | None = None) -> int:
        self.ops.append(Op(kind, inputs, out, attrs, arrays or {}, name))
        return out

    def bits_of(self, node: fx.Node) -> int:
        r = self.rep[node]
        if _BITS not in r:
            v = self.values[r[_FLOAT]]
            out = self.value(_BITS, v.h, v.w, v.c, v.flat, v.source)
            r[_BITS] = self.emit("sign", [r[_FLOAT]], out, f"sign:{v.source}", {})
        return r[_BITS]

    def float_of(self, node: fx.Node) -> int:
        r = self.rep.get(node, {})
        if _FLOAT not in r:
            raise EngineError(f"internal: no float value for node {node.name!r}")
        return r[_FLOAT]

    # ---------------------------------------------------------------- lowering
    def lower(self) -> None:
        for n in self.nodes:
            if n.node in self.fused or n.kind == "meta":
                continue
            if n.kind == "input":
                self.rep[n.node] = {_FLOAT: 0}
                continue
            if n.kind == "output":
                self.output = self.float_of(n.inputs[0])
                continue
            if not self.req[n.node]:
                continue
            getattr(self, f"_lower_{n.kind}")(n)

    def _chain(self, n: _N, allowed: tuple[str, ...]) -> list[_N]:
        chain, cur = [], n
        while len(cur.node.users) == 1:
            (u,) = cur.node.users
            un = self.by_node.get(u)
            if un is None or un.kind not in allowed or un.inputs[:1] != [cur.node]:
                break
            if un.kind == "bn" and (un.shape is None or un.shape[0] != n.shape[0]):
                break
            if un.kind == "prelu" and (un.shape is None
                                       or (_prelu_arrays(un, int(un.shape[0]))[1] < 0).any()):
                break  # a negative slope is not monotone
            chain.append(un)
            if un.kind == "rsign":
                break
            cur = un
        return chain

    def _in_value(self, n: _N, kind: str) -> int:
        src = n.inputs[0]
        return self.bits_of(src) if kind == _BITS else self.float_of(src)

    def _conv_geometry(self, n: _N, x: ValueInfo) -> tuple[Any, ...]:
        m = n.module
        if n.kind in ("blinear", "linear"):
            if n.shape is None or len(n.shape) != 1 or not x.flat:
                raise EngineError(f"{_where(n)}: linear layers need a 2-D (N, features) input")
            if m.in_features != x.h * x.w * x.c:
                raise EngineError(f"{_where(n)}: expects {m.in_features} features, "
                                  f"gets {x.h * x.w * x.c}")
            w = m.weight.detach().cpu().float().reshape(m.out_features, x.c, x.h, x.w)
            return w, (x.h, x.w), (1, 1), (0, 0), m.out_features
        if x.flat:
            raise EngineError(f"{_where(n)}: convolution of a flattened tensor")
        if m.groups != 1 or tuple(m.dilation) != (1, 1):
            raise EngineError(f"{_where(n)}: grouped or dilated convolutions are not supported")
        if isinstance(m.padding, str):
            if m.padding != "valid":
                raise EngineError(f"{_where(n)}: padding={m.padding!r} is not supported")
            pad = (0, 0)
        else:
            pad = _pair(m.padding)
        if n.kind == "conv" and m.padding_mode != "zeros" and pad != (0, 0):
            raise EngineError(f"{_where(n)}: padding_mode={m.padding_mode!r} is not supported")
        return (m.weight.detach().cpu().float(), _pair(m.kernel_size), _pair(m.stride), pad,
                m.out_channels)

    def _lower_bconv(self, n: _N) -> None:
        m = n.module
        if not is_bop_layer(m):  # binary weights on real inputs: float MACs (one cost rule)
            self._lower_conv(n, binary_weight=True)
            return
        xid = self.bits_of(n.inputs[0])
        x = self.values[xid]
        w, k, s, p, cout = self._conv_geometry(n, x)
        if x.c != w.shape[1]:
            raise EngineError(f"{_where(n)}: expects {w.shape[1]} input channels, gets {x.c}")
        ho = (x.h + 2 * p[0] - k[0]) // s[0] + 1
        wo = (x.w + 2 * p[1] - k[1]) // s[1] + 1
        nbits = x.c * k[0] * k[1]
        with torch.no_grad():
            mul = (m.weight.detach().abs().mean(dim=tuple(range(1, m.weight.dim()))).float()
                   if m.scale else torch.ones(cout))
            add = m.bias.detach().float() if m.bias is not None else torch.zeros(cout)
        mul_np = mul.cpu().numpy().astype(np.float32)
        add_np = add.cpu().numpy().astype(np.float32)
        attrs = {"kernel": list(k), "stride": list(s), "padding": list(p), "cin": x.c,
                 "cout": cout, "pad_value": int(getattr(m, "pad_value", 1.0))}
        arrays = {"w": pack_weights(w.numpy())}
        chain = self._chain(n, _MONOTONE)
        end = chain[-1] if chain else n
        spatial = n.kind == "bconv"
        if self.req[end.node] == {_BITS}:
            self.fused.update(c.node for c in chain)
            post = _post_fn(chain)
            thr, flip = fold_threshold(nbits, mul_np, add_np, post, spatial)
            arrays.update(thr=thr, flip=flip)
            out = self.value(_BITS, ho, wo, cout, x.flat, end.name)
            self.emit("bconv", [xid], out, n.name, {**attrs, "mode": _BITS}, arrays)
            self.rep[end.node] = {_BITS: out}
            return
        m2 = np.ones(cout, np.float32)
        a2 = np.zeros(cout, np.float32)
        last, seen_bn = n, False
        for c in chain:
            if c.kind == "bn" and not seen_bn:
                m2, a2 = bn_affine(c.module)
                seen_bn = True
            elif c.kind != "identity":
                break
            last = c
            self.fused.add(c.node)
        arrays.update(m1=mul_np, a1=add_np, m2=m2, a2=a2)
        out = self.value(_FLOAT, ho, wo, cout, x.flat, last.name)
        self.emit("bconv", [xid], out, n.name, {**attrs, "mode": _FLOAT}, arrays)
        self.rep[last.node] = {_FLOAT: out}

    _lower_blinear = _lower_bconv

    def _lower_conv(self, n: _N, binary_weight: bool = False) -> None:
        xid = self.float_of(n.inputs[0])
        x = self.values[xid]
        w, k, s, p, cout = self._conv_geometry(n, x)
        if binary_weight:
            with torch.no_grad():
                bw = n.module.binary_weight().detach().cpu().float()
            w = bw.reshape(w.shape)
        if x.c != w.shape[1]:
            raise EngineError(f"{_where(n)}: expects {w.shape[1]} input channels, gets {x.c}")
        ho = (x.h + 2 * p[0] - k[0]) // s[0] + 1
        wo = (x.w + 2 * p[1] - k[1]) // s[1] + 1
        wmat = np.ascontiguousarray(w.numpy().transpose(2, 3, 1, 0).reshape(-1, cout))
        b = n.module.bias
        bias = (b.detach().cpu().numpy().astype(np.float32) if b is not None
                else np.zeros(cout, np.float32))
        alpha, beta = np.ones(cout, np.float32), np.zeros(cout, np.float32)
        last = n
        chain = self._chain(n, ("bn",))
        if chain:
            alpha, beta = bn_affine(chain[0].module)
            last = chain[0]
            self.fused.add(last.node)
        self._float_out(last, "fconv", [xid], ho, wo, cout, x.flat,
                        {"kernel": list(k), "stride": list(s), "padding": list(p), "cin": x.c,
                         "cout": cout},
                        {"w": wmat.astype(np.float32), "b": bias, "alpha": alpha, "beta": beta},
                        name=n.name)

    _lower_linear = _lower_conv

    def _float_out(self, n: _N, kind: str, inputs: list[int], h: int, w: int, c: int, flat: bool,
                   attrs: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
                   name: str | None = None) -> None:
        pack = self.req[n.node] == {_BITS}
        out = self.value(_BITS if pack else _FLOAT, h, w, c, flat, n.name)
        self.emit(kind, inputs, out, name or n.name, {**attrs, "pack": pack}, arrays)
        self.rep[n.node] = {_BITS if pack else _FLOAT: out}

    def _lower_bn(self, n: _N) -> None:
        xid = self.float_of(n.inputs[0])
        x = self.values[xid]
        if x.flat and x.h * x.w != 1:
            raise EngineError(f"{_where(n)}: BatchNorm1d directly on a flattened image")
        alpha, beta = bn_affine(n.module)
        if alpha.shape[0] != x.c:
            raise EngineError(f"{_where(n)}: has {alpha.shape[0]} features, input has {x.c}")
        self._float_out(n, "affine", [xid], x.h, x.w, x.c, x.flat, {},
                        {"alpha": alpha, "beta": beta})

    def _pool_params(self, n: _N) -> dict[str, Any]:
        m = n.params
        if n.kind == "maxpool" and (_pair(m["dilation"]) != (1, 1) or m["return_indices"]):
            raise EngineError(f"{_where(n)}: dilation and return_indices are not supported")
        if n.kind == "avgpool" and m["divisor_override"] is not None:
            raise EngineError(f"{_where(n)}: divisor_override is not supported")
        stride = m["stride"] if m["stride"] not in (None, [], ()) else m["kernel_size"]
        attrs = {"kernel": list(_pair(m["kernel_size"])), "stride": list(_pair(stride)),
                 "padding": list(_pair(m["padding"])), "ceil_mode": bool(m["ceil_mode"])}
        if n.kind == "avgpool":
            attrs["count_include_pad"] = bool(m["count_include_pad"])
        return attrs

    def _pool_shape(self, n: _N, x: ValueInfo) -> tuple[int, int]:
        if x.flat or n.shape is None or len(n.shape) != 3:
            raise EngineError(f"{_where(n)}: pooling needs a 4-D (N, C, H, W) input")
        return int(n.shape[1]), int(n.shape[2])

    def _lower_maxpool(self, n: _N, attrs: dict[str, Any] | None = None) -> None:
        attrs = attrs or self._pool_params(n)
        if self.req[n.node] == {_BITS}:
            xid = self.bits_of(n.inputs[0])
            x = self.values[xid]
            ho, wo = self._pool_shape(n, x)
            out = self.value(_BITS, ho, wo, x.c, False, n.name)
            self.rep[n.node] = {_BITS: self.emit("maxpool_bits", [xid], out, n.name, attrs)}
            return
        xid = self.float_of(n.inputs[0])
        x = self.values[xid]
        ho, wo = self._pool_shape(n, x)
        self._float_out(n, "maxpool", [xid], ho, wo, x.c, False, attrs)

    def _lower_avgpool(self, n: _N) -> None:
        xid = self.float_of(n.inputs[0])
        x = self.values[xid]
        ho, wo = self._pool_shape(n, x)
        self._float_out(n, "avgpool", [xid], ho, wo, x.c, False, self._pool_params(n))

    def _lower_adaptive_avgpool(self, n: _N) -> None:
        xid = self.float_of(n.inputs[0])
        x = self.values[xid]
        ho, wo = self._pool_shape(n, x)
        self._float_out(n, "adaptive_avgpool", [xid], ho, wo, x.c, False,
                        {"output_size": [ho, wo]})

    def _lower_adaptive_maxpool(self, n: _N) -> None:
        """An adaptive max-pool whose bins are a regular window (input divisible by output)."""
        if n.params.get("return_indices"):
            raise EngineError(f"{_where(n)}: return_indices is not supported")
        x_shape = self.by_node[n.inputs[0]].shape
        if n.shape is None or x_shape is None or len(n.shape) != 3 or len(x_shape) != 3:
            raise EngineError(f"{_where(n)}: pooling needs a 4-D (N, C, H, W) input")
        (h, w), (oh, ow) = x_shape[1:], n.shape[1:]
        if h % oh or w % ow:
            raise EngineError(f"{_where(n)}: adaptive max-pool from {h}x{w} to {oh}x{ow} has "
                              "uneven bins; only sizes that divide the input are supported")
        k = [int(h // oh), int(w // ow)]
        self._lower_maxpool(n, {"kernel": k, "stride": k, "padding": [0, 0], "ceil_mode": False})

    def _lower_cat(self, n: _N) -> None:
        """Channel concatenation, of packed bits when only signs are needed, else of floats."""
        dim = n.params["dim"]
        shapes = [self.by_node[i].shape for i in n.inputs]
        if n.shape is None or any(s is None or len(s) != len(n.shape) for s in shapes):
            raise EngineError(f"{_where(n)}: unknown shapes")
        if len(n.shape) == 3:
            ok = dim in (1, -3)
        else:
            ok = len(n.shape) == 1 and dim in (1, -1)
        if not ok:
            raise EngineError(f"{_where(n)}: only concatenation along channels (dim=1) is "
                              "supported")
        if len(n.inputs) == 1:
            self._lower_identity(n)
            return
        bits = self.req[n.node] == {_BITS}
        ids = [self.bits_of(i) if bits else self.float_of(i) for i in n.inputs]
        vals = [self.values[i] for i in ids]
        v0 = vals[0]
        if any((v.h, v.w, v.flat) != (v0.h, v0.w, v0.flat) for v in vals):
            raise EngineError(f"{_where(n)}: inputs of different sizes")
        if v0.flat and v0.h * v0.w != 1:
            raise EngineError(f"{_where(n)}: concatenation of flattened images (concatenate "
                              "before flattening)")
        c = sum(v.c for v in vals)
        if bits:
            out = self.value(_BITS, v0.h, v0.w, c, v0.flat, n.name)
            self.rep[n.node] = {_BITS: self.emit("concat_bits", ids, out, n.name, {})}
            return
        self._float_out(n, "concat", ids, v0.h, v0.w, c, v0.flat, {})

    def _lower_prelu(self, n: _N) -> None:
        if self.req[n.node] == {_BITS} and _sign_preserving(n):
            self.rep[n.node] = {_BITS: self.bits_of(n.inputs[0])}
            return
        xid = self.float_of(n.inputs[0])
        x = self.values[xid]
        shift, slope, bias = _prelu_arrays(n, x.c)
        self._float_out(n, "prelu", [xid], x.h, x.w, x.c, x.flat, {},
                        {"shift": shift, "slope": slope, "bias": bias})

    def _lower_rsign(self, n: _N) -> None:
        """sign(x + shift): the packing kernel's affine with alpha = 1 (exact: x * 1 == x)."""
        if self.req[n.node] != {_BITS}:
            raise EngineError(f"{_where(n)}: its ±1 output is used as a real value; only "
                              "binary layers, max-pooling, flatten and concatenation may "
                              "consume an RSign")
        xid = self.float_of(n.inputs[0])
        x = self.values[xid]
        shift = n.module.shift.detach().cpu().numpy().astype(np.float32)
        if shift.shape != (x.c,):
            raise EngineError(f"{_where(n)}: has {shift.shape[0]} channels, its input has {x.c}")
        self._float_out(n, "affine", [xid], x.h, x.w, x.c, x.flat, {},
                        {"alpha": np.ones(x.c, np.float32), "beta": shift})

    def _lower_add(self, n: _N) -> None:
        a, b = (self.float_of(i) for i in n.inputs)
        va, vb = self.values[a], self.values[b]
        if (va.h, va.w, va.c, va.flat) != (vb.h, vb.w, vb.c, vb.flat):
            raise EngineError(f"{_where(n)}: operands of different shapes (broadcasting is not "
                              "supported)")
        self._float_out(n, "add", [a, b], va.h, va.w, va.c, va.flat, {})

    def _lower_clamp(self, n: _N) -> None:
        if self.req[n.node] == {_BITS} and _sign_preserving(n):
            self.rep[n.node] = {_BITS: self.bits_of(n.inputs[0])}
            return
        xid = self.float_of(n.inputs[0])
        x = self.values[xid]
        self._float_out(n, "clamp", [xid], x.h, x.w, x.c, x.flat,
                        {"lo": n.params["lo"], "hi": n.params["hi"]})

    def _lower_identity(self, n: _N) -> None:
        self.rep[n.node] = self.rep[n.inputs[0]]

    def _lower_flatten(self, n: _N) -> None:
        src = n.inputs[0]
        in_shape = self.by_node[src].shape
        if n.shape is None or in_shape is None:
            raise EngineError(f"{_where(n)}: unknown shapes")
        if tuple(n.shape) == tuple(in_shape):
            self._lower_identity(n)
            return
        start, end = n.params.get("start"), n.params.get("end")
        ok_args = (start is None and end is None) or (start in (1, -3) and end in (-1, 3))
        if len(in_shape) != 3 or len(n.shape) != 1 or not ok_args:
            raise EngineError(f"{_where(n)}: only flattening (N, C, H, W) to (N, C*H*W) is "
                              "supported")
        r: dict[str, int] = {}
        for kind in sorted(self.req[n.node]):
            xid = self.bits_of(src) if kind == _BITS else self.float_of(src)
            x = self.values[xid]
            out = self.value(kind, x.h, x.w, x.c, True, n.name)
            r[kind] = self.emit("flatten", [xid], out, n.name, {})
        self.rep[n.node] = r


def _post_fn(chain: list[_N]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-channel ops after a binary layer as one function (eval mode, no grad)."""

    def post(y: torch.Tensor) -> torch.Tensor:
        for c in chain:
            if c.kind == "bn":
                y = c.module(y)
            elif c.kind == "clamp":
                y = torch.clamp(y, min=c.params["lo"], max=c.params["hi"])
            elif c.kind in ("prelu", "rsign"):
                y = c.module(y)
        return y

    return post


def _json_safe(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return None


@torch.no_grad()
def compile_model(model: nn.Module, input_shape: tuple[int, int, int]) -> Program:
    """Compile ``model`` (in eval-mode semantics) for inputs of shape (C, H, W).

    Raises :class:`EngineError` naming the first module or op that cannot be compiled.
    """
    if len(tuple(input_shape)) != 3 or min(int(s) for s in input_shape) < 1:
        raise EngineError(f"input_shape must be (C, H, W) of positive sizes, got {input_shape}")
    input_shape = tuple(int(s) for s in input_shape)
    was_training = model.training
    model.eval()
    try:
        try:
            tracer = _Tracer()
            graph = tracer.trace(model)
        except Exception as e:  # noqa: BLE001 - tracing errors come in many types
            raise EngineError(f"cannot trace the model with torch.fx: {str(e).splitlines()[0]}") \
                from None
        gm = fx.GraphModule(tracer.root, graph)
        p = next(model.parameters(), None)
        dummy = torch.zeros(1, *input_shape, dtype=torch.float32,
                            device=p.device if p is not None else "cpu")
        try:
            ShapeProp(gm).propagate(dummy)
        except Exception as e:  # noqa: BLE001
            raise EngineError(f"model does not run on input shape {input_shape}: "
                              f"{str(e).splitlines()[0]}") from None
        nodes = [_normalize(gm, node) for node in gm.graph.nodes]
        if sum(n.kind == "input" for n in nodes) != 1:
            raise EngineError("the model must take exactly one input tensor")
        low = _Lowering(nodes, input_shape)
        low.analyse()
        low.lower()
    finally:
        model.train(was_training)
    meta = {"model": type(model).__name__, "arch": _json_safe(getattr(model, "arch", None))}
    return Program(input_shape, low.values, low.ops, low.output, meta)


def as_program(source: Program | nn.Module | str | os.PathLike[str],
               input_shape: tuple[int, int, int] | None = None) -> Program:
    """The engine's program of ``source``: a :class:`Program` as it is, a ``.bnn`` file
    loaded, a PyTorch model compiled for ``input_shape`` (needed then). A given
    ``input_shape`` must be the program's; :class:`EngineError` otherwise. Checkpoints are
    read by :func:`bnnprune.deploy.load_program`, which ends here."""
    if isinstance(source, nn.Module):
        if input_shape is None:
            raise EngineError("input_shape (C, H, W) is needed to compile a PyTorch model")
        return compile_model(source, input_shape)
    program = source if isinstance(source, Program) else load(source)
    if input_shape is not None and tuple(input_shape) != program.input_shape:
        raise EngineError(f"input_shape {tuple(input_shape)} differs from the program's "
                          f"{program.input_shape}")
    return program
