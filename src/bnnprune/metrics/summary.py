"""Per-layer model summary with precision, parameters by bit width, memory, BOPs and MACs.

Like larq's ``models.summary``, found by hooking one eval-mode forward pass of a zero input.
What counts where (so every number can be checked by hand):

- binary params: the weights of binary layers (1 bit each). The optional per-channel scale
  (``scale=True``) is derived from those weights, so it adds no parameters.
- float params: every other parameter (biases, BN affine, full-precision layers), 32 bits.
- float buffers: persistent floating-point buffers, i.e. BN running mean / variance.
  Inference needs them, so they count in memory (32 bits) but not in params, which match
  ``sum(p.numel() for p in model.parameters())``. (larq counts Keras' BN moving stats as
  32-bit params instead; the memory totals agree.) Integer buffers such as
  ``num_batches_tracked`` are training counters and count nowhere.
- BOPs / float MACs: see :mod:`bnnprune.metrics.ops`; BN and pooling count no MACs.
- memory of the same model in float32: every param and float buffer at 32 bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bnnprune.metrics.ops import check_input_shape, is_bop_layer, layer_macs, run_with_hooks
from bnnprune.nn import is_binary_layer

__all__ = ["LayerSummary", "ModelSummary", "format_bytes", "format_count", "summarize"]

FLOAT_BITS = 32

_POOL_TYPES = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_COMPUTE_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, *_POOL_TYPES)


@dataclass
class LayerSummary:
    """One call of one module in the forward pass (or one unused module holding params).

    ``output_shape`` excludes the batch dimension and is None for a module the forward
    never called; ``weight_bits`` is None for a module without a ``weight``.
    """

    name: str
    type: str
    input_bits: int
    weight_bits: int | None
    output_shape: tuple[int, ...] | None
    binary_params: int
    float_params: int
    float_buffers: int
    memory_bytes: float
    bops: int
    float_macs: int

    @property
    def params(self) -> int:
        return self.binary_params + self.float_params

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (the shape becomes a list)."""
        return {
            "name": self.name,
            "type": self.type,
            "input_bits": self.input_bits,
            "weight_bits": self.weight_bits,
            "output_shape": None if self.output_shape is None else list(self.output_shape),
            "params": self.params,
            "binary_params": self.binary_params,
            "float_params": self.float_params,
            "float_buffers": self.float_buffers,
            "memory_bytes": self.memory_bytes,
            "bops": self.bops,
            "float_macs": self.float_macs,
        }


@dataclass
class ModelSummary:
    """All layers in forward order and the model totals (built by :func:`summarize`)."""

    input_shape: tuple[int, int, int]
    layers: list[LayerSummary] = field(default_factory=list)
    total_params: int = 0
    binary_params: int = 0
    float_params: int = 0
    float_buffers: int = 0
    memory_bytes: float = 0.0
    float32_memory_bytes: float = 0.0
    compression_ratio: float = 1.0
    bops: int = 0
    float_macs: int = 0
    binary_mac_fraction: float = 0.0

    @classmethod
    def from_layers(
        cls, input_shape: tuple[int, int, int], layers: list[LayerSummary]
    ) -> ModelSummary:
        """Totals are sums over the layers, so the table and the totals always agree."""
        binary = sum(la.binary_params for la in layers)
        flt = sum(la.float_params for la in layers)
        buffers = sum(la.float_buffers for la in layers)
        memory = sum(la.memory_bytes for la in layers)
        fp32 = (binary + flt + buffers) * FLOAT_BITS / 8
        bops = sum(la.bops for la in layers)
        macs = sum(la.float_macs for la in layers)
        return cls(
            input_shape=tuple(input_shape),  # type: ignore[arg-type]
            layers=list(layers),
            total_params=binary + flt,
            binary_params=binary,
            float_params=flt,
            float_buffers=buffers,
            memory_bytes=memory,
            float32_memory_bytes=fp32,
            compression_ratio=fp32 / memory if memory else 1.0,
            bops=bops,
            float_macs=macs,
            binary_mac_fraction=bops / (bops + macs) if bops + macs else 0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only: ``json.dumps(summary.to_dict())`` works."""
        return {
            "input_shape": list(self.input_shape),
            "layers": [la.to_dict() for la in self.layers],
            "total_params": self.total_params,
            "binary_params": self.binary_params,
            "float_params": self.float_params,
            "float_buffers": self.float_buffers,
            "memory_bytes": self.memory_bytes,
            "float32_memory_bytes": self.float32_memory_bytes,
            "compression_ratio": self.compression_ratio,
            "bops": self.bops,
            "float_macs": self.float_macs,
            "binary_mac_fraction": self.binary_mac_fraction,
        }

    def to_text(self) -> str:
        """An aligned table, one row per layer plus a total row, then a totals block."""
        header = ["Layer", "Type", "In bits", "W bits", "Output", "Binary params",
                  "Float params", "Memory", "BOPs", "Float MACs"]
        right = [False, False, True, True, True, True, True, True, True, True]
        rows = [
            [
                la.name,
                la.type,
                str(la.input_bits),
                "-" if la.weight_bits is None else str(la.weight_bits),
                "-" if la.output_shape is None else "x".join(map(str, la.output_shape)),
                format_count(la.binary_params),
                format_count(la.float_params),
                format_bytes(la.memory_bytes),
                format_count(la.bops),
                format_count(la.float_macs),
            ]
            for la in self.layers
        ]
        total = ["Total", "", "", "", "", format_count(self.binary_params),
                 format_count(self.float_params), format_bytes(self.memory_bytes),
                 format_count(self.bops), format_count(self.float_macs)]
        widths = [max(len(r[i]) for r in (header, *rows, total)) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            cols = zip(cells, widths, right, strict=True)
            return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in cols).rstrip()

        rule = "-" * sum(widths + [2 * (len(widths) - 1)])
        c, h, w = self.input_shape
        block = [
            ("Total params", _count_both(self.total_params)),
            ("  binary (1 bit)", _count_both(self.binary_params)),
            ("  float (32 bit)", _count_both(self.float_params)),
            ("Float buffers", _count_both(self.float_buffers)
             + ", e.g. BN running stats: in memory, not in params"),
            ("Memory", _bytes_both(self.memory_bytes)),
            ("Float32 memory", _bytes_both(self.float32_memory_bytes)),
            ("Compression", f"{self.compression_ratio:.2f}x vs float32"),
            ("BOPs", _count_both(self.bops)),
            ("Float MACs", _count_both(self.float_macs)),
            ("Binarized MACs", f"{100 * self.binary_mac_fraction:.1f} %"),
        ]
        key_w = max(len(k) for k, _ in block)
        return "\n".join(
            [
                f"Model summary for input (C, H, W) = ({c}, {h}, {w})",
                line(header),
                rule,
                *(line(r) for r in rows),
                rule,
                line(total),
                "",
                *(f"{k.ljust(key_w)}  {v}" for k, v in block),
            ]
        )


def _scaled(value: float, step: float, units: list[str]) -> str:
    """``value`` with three significant digits in the largest unit that keeps it >= 1."""
    i = 0
    while abs(value) >= step and i < len(units) - 1:
        value /= step
        i += 1
    if i == 0 and float(value).is_integer():
        return f"{int(value)}{units[0]}"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}{units[i]}"


def _count_both(n: int) -> str:
    """Human-readable and exact: ``1.23 M (1,234,567)``."""
    return f"{format_count(n)} ({n:,})"


def _bytes_both(n: float) -> str:
    """Human-readable and exact bytes (bits / 8, so at most 3 decimals): ``1.54 KiB (1,580 B)``."""
    exact = f"{int(n):,}" if float(n).is_integer() else f"{n:,.3f}"
    return f"{format_bytes(n)} ({exact} B)"


def format_count(n: float) -> str:
    """Human-readable count in powers of 1000: 950, 1.23 K, 45.6 M."""
    return _scaled(n, 1000.0, ["", " K", " M", " G", " T"])


def format_bytes(n: float) -> str:
    """Human-readable size in powers of 1024: 292 B, 1.12 B, 45.6 KiB, 3.10 MiB."""
    return _scaled(n, 1024.0, [" B", " KiB", " MiB", " GiB", " TiB"])


def _float_buffer_count(module: nn.Module) -> int:
    """Elements of the module's own persistent floating-point buffers (BN running stats)."""
    skip = getattr(module, "_non_persistent_buffers_set", set())
    return sum(
        b.numel()
        for name, b in module.named_buffers(recurse=False)
        if b.is_floating_point() and name not in skip
    )


def _is_summarized(module: nn.Module) -> bool:
    """Modules that get a row: conv, linear, BN, pooling, and anything owning params/stats."""
    return (
        isinstance(module, _COMPUTE_TYPES)
        or any(True for _ in module.parameters(recurse=False))
        or _float_buffer_count(module) > 0
    )


def _weight_bits(module: nn.Module) -> int | None:
    if is_binary_layer(module):
        return 1
    return FLOAT_BITS if isinstance(getattr(module, "weight", None), nn.Parameter) else None


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> ModelSummary:
    """Summarize ``model`` on one input of shape (C, H, W): one row per layer call.

    A module called twice gets a row per call (MACs count each time, its parameters only
    once, as do parameters shared between modules); modules holding parameters that the
    forward never calls come last with no output shape, so the totals still cover every
    parameter of the model.
    """
    shape = check_input_shape(input_shape)
    names = {m: (n or "(root)") for n, m in model.named_modules()}
    targets = [m for m in model.modules() if _is_summarized(m)]
    seen_params: set[int] = set()
    seen_modules: set[int] = set()
    calls: dict[int, int] = {}
    layers: list[LayerSummary] = []

    def make_row(m: nn.Module, output_shape: tuple[int, ...] | None, macs: int) -> LayerSummary:
        binary = flt = 0
        for pname, p in m.named_parameters(recurse=False):
            if id(p) in seen_params:
                continue
            seen_params.add(id(p))
            if is_binary_layer(m) and pname == "weight":
                binary += p.numel()
            else:
                flt += p.numel()
        buffers = 0 if id(m) in seen_modules else _float_buffer_count(m)
        seen_modules.add(id(m))
        bop = is_bop_layer(m)
        calls[id(m)] = calls.get(id(m), 0) + 1
        name = names[m] if calls[id(m)] == 1 else f"{names[m]} (call {calls[id(m)]})"
        return LayerSummary(
            name=name,
            type=type(m).__name__,
            input_bits=1 if bop else FLOAT_BITS,
            weight_bits=_weight_bits(m),
            output_shape=output_shape,
            binary_params=binary,
            float_params=flt,
            float_buffers=buffers,
            memory_bytes=(binary + (flt + buffers) * FLOAT_BITS) / 8,
            bops=macs if bop else 0,
            float_macs=0 if bop else macs,
        )

    def hook(m: nn.Module, inp: tuple, out: object) -> None:
        layers.append(make_row(m, _output_shape(out), layer_macs(m, inp, out)))

    run_with_hooks(model, shape, targets, hook)
    for m in targets:
        if id(m) not in seen_modules:
            row = make_row(m, None, 0)
            if row.params or row.float_buffers:
                layers.append(row)
    return ModelSummary.from_layers(shape, layers)


def _output_shape(out: object) -> tuple[int, ...] | None:
    """Per-sample shape of a tensor output (or of the first tensor in a tuple/list)."""
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if hasattr(o, "shape")), None)
    shape = getattr(out, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape[1:])
