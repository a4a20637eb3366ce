"""FINN-style dataflow cost estimate: folding, cycles, LUTs and BRAMs per layer (not synthesis).

A FINN streaming dataflow accelerator has one matrix-vector-activation unit (MVAU) per
convolution or fully connected layer, all running concurrently as a pipeline. A layer with
``MW = Cin*KH*KW`` inputs per output, ``MH = Cout`` outputs and ``V`` output pixels per image,
folded onto ``PE`` processing elements (PE divides MH) of ``SIMD`` lanes (SIMD divides MW),
needs ``(MH/PE) * (MW/SIMD) * V`` cycles per image; the pipeline's throughput is set by its
slowest layer: ``fps = clock / max(cycles)``.

The resource figures are FINN's own analytical cost models, computed here without FINN:

* LUTs (FINN-R, Blott et al., "FINN-R: An End-to-End Deep-Learning Framework for Fast
  Exploration of Quantized Neural Networks", ACM TRETS 11(3), 2018; as implemented in
  ``MVAU_hls.lut_estimation``, finn/src/finn/custom_op/fpgadataflow/hls/
  matrixvectoractivation_hls.py): ``300 + 1.1 * PE * (mult + addertree + acc + thr + comp)
  + c2`` with ``mult = SIMD*(2*ceil((W+A)/6) - 1)*(W+A)``, ``addertree = (W+A)*(2*SIMD - 1)``,
  ``acc`` the accumulator width bound ``ceil(a + log2(1 + 2^-a) + 1)``,
  ``a = log2(MW) + W + A - 1 - signed`` (capped at 32), thresholds and comparators
  ``(2^B - 1)*acc*ceil(TMEM/64)`` and ``(2^B - 1)*acc`` only when they live in LUTRAM, and
  ``c2 = PE*SIMD*W*ceil(WMEM/64)`` for weights in LUTRAM.
* BRAMs (RAMB18, ``MVAU.bram_estimation`` in finn/src/finn/custom_op/fpgadataflow/
  matrixvectoractivation.py, from the same paper): the weight memory of depth
  ``WMEM = MW*MH/(PE*SIMD)`` and width ``PE*SIMD*W`` bits tiled into 18 Kbit blocks in the
  aspect ratios of UG573 (16384x1, 8192x2, 4096x4, 2048x9, 1024x18, 512x36).

Folding search for ``target`` cycles per image (a layer meets it with ``cycles < target``):

* ``"min-lut"`` (default): every legal (PE, SIMD) pair of the layer is costed and the one
  with the fewest estimated LUTs (then BRAMs) that meets the target is kept; the cost of a
  layer then never grows as the target is relaxed, which makes "same LUTs -> fps" a
  bisection over the target.
* ``"finn"``: FINN's ``SetFolding`` transformation
  (finn/src/finn/transformation/fpgadataflow/set_folding.py): SIMD walks up the divisors of
  MW, stopping at the first that meets the target, or before the first that makes the
  weight stream per PE wider than 36 bits (``W*SIMD > 36``); then PE walks up the divisors
  of MH until the target is met.

Either way, if the slowest layer misses the target even at its most parallel folding, every
layer is folded again for that layer's cycles (FINN's second pass), so the others are not
more parallel than the bottleneck allows.

What is left out: sliding-window generators, pooling, padding, FIFOs and data-width
converters (LUTs of their own, rarely the bottleneck once folded to match), thresholds in
BRAM, DSPs. Binary layers are ``W = A = 1`` with bipolar thresholds (``B = 1``);
full-precision layers are counted as ``fp_bits``-bit weights and activations (FINN needs
them quantized, e.g. the first layer to 8 bits), which a float model does not yet satisfy.
These are estimates from published formulas, not synthesis results.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bnnprune.engine.errors import EngineError
from bnnprune.engine.program import Program

__all__ = [
    "Estimate",
    "LayerEstimate",
    "MvauLayer",
    "bram_estimate",
    "compare",
    "cycles",
    "estimate",
    "fold_for_target",
    "format_comparison",
    "lut_estimate",
    "max_fps_within",
    "mvau_layers",
    "report",
]

WWIDTH_MAX = 36  # FINN SetFolding's default cap on weight bits per PE (W * SIMD)
RAM_STYLES = ("block", "distributed")


@dataclass(frozen=True)
class MvauLayer:
    """One matrix-vector unit: ``MH x MW`` matrix applied to ``vectors`` inputs per image."""

    name: str
    mw: int  # Cin * KH * KW: SIMD divides it
    mh: int  # Cout: PE divides it
    vectors: int  # output pixels per image
    wbits: int
    abits: int
    obits: int | None  # 1: bipolar thresholds; None: accumulator output (no activation)

    @property
    def binary(self) -> bool:
        return self.wbits == 1 and self.abits == 1

    @property
    def macs(self) -> int:
        return self.mw * self.mh * self.vectors


@dataclass
class LayerEstimate:
    layer: MvauLayer
    pe: int
    simd: int
    cycles: int
    luts: int
    brams: int


@dataclass
class Estimate:
    """Per-layer folding and costs of one model, and the pipeline they make."""

    layers: list[LayerEstimate]
    clock_mhz: float
    ram_style: str
    target_cycles: int | None = None
    notes: list[str] = field(default_factory=list)
    search: str = ""

    @property
    def cycles(self) -> int:
        return max(le.cycles for le in self.layers)

    @property
    def fps(self) -> float:
        return self.clock_mhz * 1e6 / self.cycles

    @property
    def luts(self) -> int:
        return sum(le.luts for le in self.layers)

    @property
    def brams(self) -> int:
        return sum(le.brams for le in self.layers)

    @property
    def bottleneck(self) -> str:
        return max(self.layers, key=lambda le: le.cycles).layer.name

    def to_dict(self) -> dict[str, Any]:
        return {"clock_mhz": self.clock_mhz, "ram_style": self.ram_style, "search": self.search,
                "target_cycles": self.target_cycles, "cycles": self.cycles, "fps": self.fps,
                "luts": self.luts, "brams": self.brams, "bottleneck": self.bottleneck,
                "layers": [{**asdict(le.layer), "pe": le.pe, "simd": le.simd,
                            "cycles": le.cycles, "luts": le.luts, "brams": le.brams}
                           for le in self.layers]}


def mvau_layers(program: Program, fp_bits: int = 8) -> list[MvauLayer]:
    """The program's convolution/linear layers as MVAUs (binary: 1-bit; float: ``fp_bits``)."""
    if isinstance(fp_bits, bool) or not isinstance(fp_bits, int) or not 2 <= fp_bits <= 32:
        raise EngineError(f"fp_bits must be an integer in [2, 32], got {fp_bits!r}")
    layers = []
    for op in program.ops:
        if op.kind not in ("bconv", "fconv"):
            continue
        kh, kw = op.attrs["kernel"]
        out = program.values[op.output]
        binary = op.kind == "bconv"
        bits_out = (op.attrs.get("mode") == "bits") if binary else bool(op.attrs.get("pack"))
        layers.append(MvauLayer(
            name=op.name, mw=op.attrs["cin"] * kh * kw, mh=op.attrs["cout"],
            vectors=out.h * out.w, wbits=1 if binary else fp_bits,
            abits=1 if binary else fp_bits, obits=1 if bits_out else None))
    if not layers:
        raise EngineError("the program has no convolution or linear layer to map to an MVAU")
    return layers


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _check_fold(layer: MvauLayer, pe: int, simd: int) -> None:
    if pe < 1 or layer.mh % pe:
        raise EngineError(f"{layer.name}: PE={pe} does not divide MH={layer.mh}")
    if simd < 1 or layer.mw % simd:
        raise EngineError(f"{layer.name}: SIMD={simd} does not divide MW={layer.mw}")


def cycles(layer: MvauLayer, pe: int, simd: int) -> int:
    """Cycles per image of one MVAU: ``(MH/PE) * (MW/SIMD) * vectors`` (FINN get_exp_cycles)."""
    _check_fold(layer, pe, simd)
    return (layer.mh // pe) * (layer.mw // simd) * layer.vectors


def _acc_bits(layer: MvauLayer) -> int:
    """FINN's accumulator width bound for MW products of W- and A-bit signed operands."""
    a = math.log2(layer.mw) + layer.wbits + layer.abits - 1 - 1
    return int(min(32, math.ceil(a + math.log2(1 + 2.0 ** -a) + 1)))


def lut_estimate(layer: MvauLayer, pe: int, simd: int, ram_style: str = "block") -> int:
    """FINN-R LUT model of one MVAU (LUT multipliers; see the module docstring)."""
    _check_fold(layer, pe, simd)
    w, a = layer.wbits, layer.abits
    wmem = layer.mw * layer.mh // (pe * simd)
    c2 = pe * simd * w * math.ceil(wmem / 64) if ram_style == "distributed" else 0
    mult = simd * (2 * math.ceil((w + a) / 6) - 1) * (w + a)
    addertree = (w + a) * (2 * simd - 1)
    acc = _acc_bits(layer)
    thr = comp = 0
    if layer.obits is not None and ram_style == "distributed":
        steps = 2 ** layer.obits - 1
        thr = steps * acc * math.ceil((layer.mh // pe) / 64)
        comp = steps * acc
    return int(300 + 1.1 * (pe * (mult + addertree + acc + thr + comp)) + c2)


def bram_estimate(layer: MvauLayer, pe: int, simd: int, ram_style: str = "block") -> int:
    """RAMB18 count of the weight memory (FINN MVAU.bram_estimation); 0 for LUTRAM weights."""
    _check_fold(layer, pe, simd)
    if ram_style == "distributed":
        return 0
    depth = layer.mw * layer.mh / (pe * simd)
    width = pe * simd * layer.wbits
    if width == 1:
        return math.ceil(depth / 16384)
    if width == 2:
        return math.ceil(depth / 8192)
    if width <= 4:
        return math.ceil(depth / 4096) * math.ceil(width / 4)
    if width <= 9:
        return math.ceil(depth / 2048) * math.ceil(width / 9)
    if width <= 18 or depth > 512:
        return math.ceil(depth / 1024) * math.ceil(width / 18)
    return math.ceil(depth / 512) * math.ceil(width / 36)


def fold_for_target(layer: MvauLayer, target: int, search: str = "min-lut",
                    ram_style: str = "block", wwidth_max: int = WWIDTH_MAX) -> tuple[int, int]:
    """``(PE, SIMD)`` for fewer than ``target`` cycles per image.

    ``"finn"``: FINN's SetFolding rule (SIMD first, then PE; see the module docstring).
    ``"min-lut"``: of all legal pairs that meet the target, the one with the fewest estimated
    LUTs (then BRAMs); the most parallel one (PE = MH, SIMD = MW) when none does.
    """
    if search == "finn":
        simd = 1
        for d in _divisors(layer.mw):
            prev, simd = simd, d
            if cycles(layer, 1, simd) < target:
                break
            if layer.wbits * simd > wwidth_max:
                simd = prev
                break
        pe = 1
        for d in _divisors(layer.mh):
            pe = d
            if cycles(layer, pe, simd) < target:
                break
        return pe, simd
    if search != "min-lut":
        raise EngineError(f"folding search must be 'finn' or 'min-lut', got {search!r}")
    cyc, best = _min_lut_table(layer, ram_style)
    i = bisect.bisect_left(cyc, target)  # options [0, i) have fewer than target cycles
    return best[i - 1] if i else (layer.mh, layer.mw)


@functools.lru_cache(maxsize=256)
def _min_lut_table(layer: MvauLayer,
                   ram_style: str) -> tuple[list[int], list[tuple[int, int]]]:
    """All legal foldings sorted by cycles, with the cheapest (LUTs, then BRAMs) folding
    among the first i options at index i - 1: a target lookup is one bisection."""
    opts = sorted((cycles(layer, pe, simd), lut_estimate(layer, pe, simd, ram_style),
                   bram_estimate(layer, pe, simd, ram_style), pe, simd)
                  for pe in _divisors(layer.mh) for simd in _divisors(layer.mw))
    cyc, best, cur = [], [], None
    for o in opts:
        if cur is None or o[1:3] < cur[1:3]:
            cur = o
        cyc.append(o[0])
        best.append((cur[3], cur[4]))
    return cyc, best


def _check_common(clock_mhz: float, ram_style: str) -> None:
    if not (isinstance(clock_mhz, int | float) and math.isfinite(clock_mhz) and clock_mhz > 0):
        raise EngineError(f"clock must be a positive number of MHz, got {clock_mhz!r}")
    if ram_style not in RAM_STYLES:
        raise EngineError(f"ram_style must be one of {RAM_STYLES}, got {ram_style!r}")


def _layer_estimates(layers: list[MvauLayer], folds: list[tuple[int, int]],
                     ram_style: str) -> list[LayerEstimate]:
    return [LayerEstimate(l, pe, simd, cycles(l, pe, simd), lut_estimate(l, pe, simd, ram_style),
                          bram_estimate(l, pe, simd, ram_style))
            for l, (pe, simd) in zip(layers, folds)]


def _fold_all(layers: list[MvauLayer], target: int, relax: bool, search: str,
              ram_style: str) -> list[tuple[int, int]]:
    folds = [fold_for_target(l, target, search, ram_style) for l in layers]
    worst = max(cycles(l, pe, s) for l, (pe, s) in zip(layers, folds))
    if relax and worst >= target:  # FINN's second pass: balance to what the bottleneck reaches
        folds = [fold_for_target(l, worst + 1, search, ram_style) for l in layers]
    return folds


def estimate(layers_or_program: Program | list[MvauLayer], *, target_fps: float | None = None,
             pe_simd: tuple[int, int] | None = None, clock_mhz: float = 200.0,
             ram_style: str = "block", fp_bits: int = 8, search: str = "min-lut") -> Estimate:
    """Fold every layer for ``target_fps`` (by ``search``, see :func:`fold_for_target`) or to
    at most ``pe_simd`` (``(P, S)``: the largest divisors of MH and MW not above P and S)."""
    _check_common(clock_mhz, ram_style)
    layers = (mvau_layers(layers_or_program, fp_bits) if isinstance(layers_or_program, Program)
              else list(layers_or_program))
    if (target_fps is None) == (pe_simd is None):
        raise EngineError("give exactly one of target_fps and pe_simd")
    if pe_simd is not None:
        p, s = pe_simd
        if min(p, s) < 1:
            raise EngineError(f"PE and SIMD must be >= 1, got {pe_simd}")
        folds = [(max(d for d in _divisors(l.mh) if d <= p),
                  max(d for d in _divisors(l.mw) if d <= s)) for l in layers]
        return Estimate(_layer_estimates(layers, folds, ram_style), clock_mhz, ram_style,
                        search="pe_simd")
    if not (isinstance(target_fps, int | float) and math.isfinite(target_fps) and target_fps > 0):
        raise EngineError(f"target fps must be a positive number, got {target_fps!r}")
    target = max(1, math.floor(clock_mhz * 1e6 / target_fps))
    folds = _fold_all(layers, target, True, search, ram_style)
    est = Estimate(_layer_estimates(layers, folds, ram_style), clock_mhz, ram_style, target,
                   search=search)
    if est.cycles >= target:
        est.notes.append(f"target {target_fps:g} fps not reached: {est.bottleneck} needs "
                         f"{est.cycles} cycles at its most parallel folding")
    return est


def max_fps_within(layers_or_program: Program | list[MvauLayer], lut_budget: int, *,
                   clock_mhz: float = 200.0, ram_style: str = "block",
                   fp_bits: int = 8, search: str = "min-lut") -> Estimate:
    """The fastest pipeline (folded by ``search``) whose LUT estimate fits ``lut_budget``.

    Binary search over the target cycles per image (LUTs do not grow as the target grows);
    if nothing fits, the slowest folding (PE = SIMD = 1) is returned.
    """
    _check_common(clock_mhz, ram_style)
    layers = (mvau_layers(layers_or_program, fp_bits) if isinstance(layers_or_program, Program)
              else list(layers_or_program))

    def at(target: int) -> Estimate:
        folds = _fold_all(layers, target, False, search, ram_style)
        return Estimate(_layer_estimates(layers, folds, ram_style), clock_mhz, ram_style, target)

    hi = max(cycles(l, 1, 1) for l in layers) + 1  # everything at PE = SIMD = 1
    lo = 1
    if at(hi).luts > lut_budget:
        return at(hi)
    while lo < hi:  # smallest target whose folding fits the budget
        mid = (lo + hi) // 2
        if at(mid).luts <= lut_budget:
            hi = mid
        else:
            lo = mid + 1
    return at(lo)


def compare(baseline: Estimate, pruned: Estimate) -> dict[str, float]:
    """Pruned over baseline ratios of pipeline cycles, fps, LUTs (all, binary layers) and BRAMs."""
    def binary_luts(e: Estimate) -> int:
        return sum(le.luts for le in e.layers if le.layer.binary)

    return {"cycles": pruned.cycles / baseline.cycles, "fps": pruned.fps / baseline.fps,
            "luts": pruned.luts / baseline.luts,
            "binary_luts": binary_luts(pruned) / max(1, binary_luts(baseline)),
            "brams": pruned.brams / baseline.brams if baseline.brams else float("nan")}


def _row(le: LayerEstimate | None) -> list[str]:
    if le is None:
        return ["-"] * 7
    return [f"{le.layer.mw}x{le.layer.mh}", str(le.layer.vectors), f"{le.pe}/{le.simd}",
            f"{le.cycles:,}", f"{le.luts:,}", str(le.brams),
            "bin" if le.layer.binary else f"{le.layer.wbits}b"]


def format_comparison(estimates: dict[str, Estimate]) -> str:
    """A markdown table, one block of columns per model (layers matched by name), and totals."""
    names: list[str] = []
    for est in estimates.values():
        for le in est.layers:
            if le.layer.name not in names:
                names.append(le.layer.name)
    cols = ["MWxMH", "V", "PE/SIMD", "cycles", "LUT", "BRAM18", "type"]
    head = ["layer"] + [f"{c} ({m})" if i == 0 else c for m in estimates
                        for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [n]
        for est in estimates.values():
            cells += _row(next((le for le in est.layers if le.layer.name == n), None))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for m, est in estimates.items():
        lines.append(f"{m}: pipeline {est.cycles:,} cycles/image (bottleneck {est.bottleneck}) "
                     f"= {est.fps:,.0f} fps at {est.clock_mhz:g} MHz; {est.luts:,} LUTs, "
                     f"{est.brams} BRAM18 (weights, ram_style {est.ram_style})")
        lines += [f"  note: {n}" for n in est.notes]
    return "\n".join(lines)


def report(program: Program, baseline: Program | None = None, *,
           target_fps: float | None = None, pe_simd: tuple[int, int] | None = None,
           clock_mhz: float = 200.0, ram_style: str = "block", fp_bits: int = 8,
           search: str = "min-lut") -> tuple[str, dict[str, Any]]:
    """The estimate of ``program`` (and of the unpruned ``baseline`` next to it) as text and
    a JSON-friendly dict: same folding rule for both, then the pruned model's fps within the
    baseline's LUTs."""
    opts: dict[str, Any] = {"clock_mhz": clock_mhz, "ram_style": ram_style, "fp_bits": fp_bits,
                            "search": search}
    model = estimate(program, target_fps=target_fps, pe_simd=pe_simd, **opts)
    result: dict[str, Any] = {"folding": "pe_simd" if pe_simd else search,
                              "model": model.to_dict()}
    note = "(FINN-R / FINN analytical estimates of the MVAUs only, not synthesis: docs/fpga.md)"
    if baseline is None:
        return f"{format_comparison({'model': model})}\n{note}", result
    base = estimate(baseline, target_fps=target_fps, pe_simd=pe_simd, **opts)
    r = compare(base, model)
    fit = max_fps_within(program, base.luts, **opts)
    same = "the same PE/SIMD caps" if pe_simd else f"the same target ({target_fps:g} fps)"
    lines = [format_comparison({"unpruned": base, "pruned": model}), "",
             f"pruned / unpruned at {same}: {r['luts']:.2f}x LUTs ({r['binary_luts']:.2f}x in the "
             f"binary layers), {r['brams']:.2f}x BRAM18, {r['fps']:.2f}x fps"
             + ("" if pe_simd else " (both meet the target)"),
             f"within the unpruned model's {base.luts:,} LUTs the pruned model reaches "
             f"{fit.fps:,.0f} fps ({fit.fps / base.fps:.2f}x) with {fit.luts:,} LUTs", note]
    result.update(baseline=base.to_dict(), ratios=r, same_luts=fit.to_dict())
    return "\n".join(lines), result
