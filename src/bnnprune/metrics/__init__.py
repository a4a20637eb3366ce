"""Operation and memory counting: binary MACs (BOPs), float MACs, parameters, memory.

- :func:`count_bops`: the fast single number the pruning loop needs.
- :func:`summarize`: the per-layer table (larq-style) with totals, as data.
- :func:`binary_channels`: each binary layer's output-channel count.
"""

from __future__ import annotations

from bnnprune.metrics.ops import binary_channels, count_bops, is_bop_layer, layer_macs
from bnnprune.metrics.summary import (
    LayerSummary,
    ModelSummary,
    format_bytes,
    format_count,
    summarize,
)

__all__ = [
    "LayerSummary",
    "ModelSummary",
    "binary_channels",
    "count_bops",
    "format_bytes",
    "format_count",
    "is_bop_layer",
    "layer_macs",
    "summarize",
]
