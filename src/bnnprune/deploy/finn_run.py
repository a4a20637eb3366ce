"""Run FINN's compiler front end on a model, from bnnprune's environment.

FINN (``finn-plus``) lives in its own environment, ``.venv-finn`` (``scripts/setup.sh
--fpga``), because it pins numpy, onnx and qonnx to other versions than ours. This module
exports the FINN form of the QONNX graph (:func:`export_qonnx` with ``finn=True``), runs
``finn_flow.py`` (next to this file) with that environment's Python, and reads back FINN's
per-layer estimates and, given images, FINN's own execution of the streamlined and
hardware-layer graphs. :func:`compare_bits` checks the latter against the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnnprune.deploy.qonnx_export import export_qonnx
from bnnprune.engine.errors import EngineError
from bnnprune.engine.program import Program

__all__ = ["FINN_PYTHON_ENV", "FinnResult", "compare_bits", "finn_python", "format_layers",
           "report", "run_finn"]

FINN_PYTHON_ENV = "BNNPRUNE_FINN_PYTHON"  # a Python with finn-plus, instead of .venv-finn
FLOW = Path(__file__).with_name("finn_flow.py")
_REPO_VENV = Path(__file__).resolve().parents[3] / ".venv-finn" / "bin" / "python"
GRAPHS = ("streamlined", "hw")  # the graphs FINN executes: after streamlining, hardware layers


def finn_python() -> Path | None:
    """The Python that has FINN: ``$BNNPRUNE_FINN_PYTHON``, else the checkout's .venv-finn."""
    env = os.environ.get(FINN_PYTHON_ENV)
    if env:
        return Path(env)
    return _REPO_VENV if _REPO_VENV.is_file() else None


@dataclass
class FinnResult:
    """FINN's report (stages, layers with folding, cycles and resources) and executions."""

    report: dict[str, Any]
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.report["layers"]

    @property
    def cycles(self) -> int:
        """The slowest hardware layer's cycles per frame: the pipeline's initiation interval."""
        return max(int(layer["cycles"]) for layer in self.layers)

    def fps(self) -> float:
        return self.report["clock_mhz"] * 1e6 / self.cycles

    def total(self, resource: str) -> float:
        return sum(float(layer.get(resource, 0.0)) for layer in self.layers)


def run_finn(program: Program, *, images: np.ndarray | None = None, target_fps: float = 1000.0,
             clock_mhz: float = 200.0, fpga_part: str | None = None,
             input_scale: float | None = None, segments: bool = False,
             python: str | os.PathLike[str] | None = None, timeout: float = 1800) -> FinnResult:
    """Take ``program`` through FINN's front end (see ``finn_flow.py``); with ``images``
    (N, C, H, W), also FINN's execution of its graphs on them; ``input_scale``: the 8-bit
    input quantizer of :func:`export_qonnx`; ``segments``: a graph with ops FINN leaves in
    float between hardware layers (e.g. an average pool FINN's form cannot sum in integers)
    becomes one dataflow partition per contiguous run of hardware layers, each folded for
    ``target_fps`` (``report["between"]`` names the ops outside FINN between them), instead
    of an error. Raises
    :class:`EngineError` when FINN is not installed, refuses the graph or fails (its last
    error line)."""
    py = Path(python) if python is not None else finn_python()
    if py is None or not py.is_file():
        raise EngineError("FINN is not installed: run 'bash scripts/setup.sh --fpga' (makes "
                          f".venv-finn) or set {FINN_PYTHON_ENV} to a Python with finn-plus")
    if not (np.isfinite(target_fps) and target_fps > 0 and np.isfinite(clock_mhz)
            and clock_mhz > 0):
        raise EngineError(f"target fps and clock must be positive, got {target_fps!r}, "
                          f"{clock_mhz!r}")
    with tempfile.TemporaryDirectory(prefix="bnnprune-finn-") as tmp:
        t = Path(tmp)
        export_qonnx(program, path=t / "model.onnx", finn=True, input_scale=input_scale)
        cmd = [str(py), "-I", str(FLOW), str(t / "model.onnx"), "--report", str(t / "report.json"),
               "--target-fps", repr(float(target_fps)), "--clock-mhz", repr(float(clock_mhz))]
        if fpga_part:
            cmd += ["--fpga-part", fpga_part]
        if segments:
            cmd.append("--segments")
        if images is not None:
            x = np.ascontiguousarray(images, np.float32)
            if x.ndim != 4 or tuple(x.shape[1:]) != program.input_shape:
                raise EngineError(f"images must be (N, *{program.input_shape}), got {x.shape}")
            np.save(t / "x.npy", x)
            cmd += ["--inputs", str(t / "x.npy"), "--outputs", str(t / "y.npz")]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # -I: FINN sees only its own paths
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                                  cwd=tmp)
        except subprocess.TimeoutExpired:
            raise EngineError(f"FINN's front end ran past {timeout:g} s") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise EngineError(f"FINN's front end failed: {lines[-1] if lines else proc.returncode}")
        report = json.loads((t / "report.json").read_text())
        outputs = dict(np.load(t / "y.npz")) if images is not None else {}
    return FinnResult(report, outputs)


def compare_bits(program: Program, images: np.ndarray, result: FinnResult) -> dict[str, int]:
    """Mismatching bits between the engine's binary values and FINN's execution of each graph
    (:data:`GRAPHS`): the engine's bits values in program order against FINN's one-bit
    tensors in graph order (same count and shapes, or :class:`EngineError`). Returns
    ``{"<graph>": mismatches, "<graph>_bits": bits compared}``."""
    inter = program.intermediates(np.ascontiguousarray(images, np.float32))
    keys = [f"{v.source}:bits" for v in program.values if v.kind == "bits" and v.source]
    keys = list(dict.fromkeys(keys))
    out: dict[str, int] = {}
    for g in GRAPHS:
        finn = sorted(k for k in result.outputs if k.startswith(f"{g}_bits_"))
        if len(finn) != len(keys):
            raise EngineError(f"FINN's {g} graph has {len(finn)} one-bit tensors, the engine "
                              f"{len(keys)} binary values ({', '.join(keys)})")
        bad = total = 0
        for key, name in zip(keys, finn):
            want, got = inter[key], 2 * result.outputs[name] - 1
            if got.shape != want.shape:
                raise EngineError(f"FINN's {name} has shape {got.shape}, the engine's {key} "
                                  f"{want.shape}")
            bad += int((got != want).sum())
            total += want.size
        out[g], out[f"{g}_bits"] = bad, total
    return out


def format_layers(results: dict[str, FinnResult]) -> str:
    """FINN's hardware layers of each model (markdown), then each model's totals."""
    cols = "| model | layer | PE/SIMD | cycles | LUT | BRAM18 |"
    lines = [cols, "|---|---|---|---|---|---|"]
    for m, r in results.items():
        several = r.report.get("segments", 1) > 1
        for layer in r.layers:
            fold = f"{layer.get('PE', '-')}/{layer.get('SIMD', '-')}"
            name = f"{layer['segment']}:{layer['name']}" if several else layer["name"]
            lines.append(f"| {m} | {name} | {fold} | {layer['cycles']:,} | "
                         f"{layer.get('LUT', 0):,.0f} | {layer.get('BRAM_18K', 0):g} |")
    lines.append("")
    for m, r in results.items():
        rep = r.report
        lines.append(f"{m}: {r.cycles:,} cycles/frame = {r.fps():,.0f} fps at "
                     f"{rep['clock_mhz']:g} MHz; {r.total('LUT'):,.0f} LUTs, "
                     f"{r.total('BRAM_18K'):g} BRAM18 in {len(r.layers)} hardware layers "
                     f"({rep['fpga_part']}); outside the dataflow: "
                     f"{', '.join(rep['outside']) or 'nothing'}")
        for k, ops in enumerate(rep.get("between", [])):
            lines.append(f"  between dataflow segments {k} and {k + 1}, outside FINN (float, "
                         f"on the host): {', '.join(ops)}")
    return "\n".join(lines)


def report(program: Program, baseline: Program | None = None, *, target_fps: float = 1000.0,
           clock_mhz: float = 200.0, fpga_part: str | None = None) -> tuple[str, dict[str, Any]]:
    """FINN's estimates of ``program`` (and of the unpruned ``baseline``) folded by FINN's
    SetFolding for ``target_fps``, as text and a JSON-friendly dict. A model with float ops
    between hardware layers (e.g. a ceil-mode average pool) is estimated per dataflow segment (see
    :func:`run_finn`); the text names the ops left to the host between segments."""
    opts: dict[str, Any] = {"target_fps": target_fps, "clock_mhz": clock_mhz,
                            "fpga_part": fpga_part, "segments": True}
    results = {"model": run_finn(program, **opts)}
    if baseline is not None:
        results = {"unpruned": run_finn(baseline, **opts), "pruned": results["model"]}
    lines = [format_layers(results)]
    if baseline is not None:
        b, p = results["unpruned"], results["pruned"]
        lines.append(f"pruned / unpruned at {target_fps:g} fps: "
                     f"{p.total('LUT') / b.total('LUT'):.2f}x LUTs, "
                     f"{p.total('BRAM_18K') / max(1.0, b.total('BRAM_18K')):.2f}x BRAM18, "
                     f"{p.fps() / b.fps():.2f}x fps")
    version = next(iter(results.values())).report["finn"]
    lines.append(f"(FINN's own estimates: {version} res_estimation and exp_cycles_per_layer of "
                 "the dataflow layers after SetFolding; not synthesis: docs/fpga.md)")
    data = {"estimator": "finn", **{m: r.report for m, r in results.items()}}
    return "\n".join(lines), data
