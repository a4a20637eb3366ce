"""The deploy targets as one family: each takes a :class:`~bnnprune.deploy.source.Deployable`
(its program, and its PyTorch model where a target needs it), writes its files and returns
an :class:`ExportReport`; :data:`DEPLOY_TARGETS` names them for ``bnnprune export`` and
``bnnprune fpga-estimate``.

Every target has the signature ``export(net, out, **options) -> ExportReport`` and a
``check(out, **options)`` that refuses bad options before anything is loaded or compiled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnprune.atomic import atomic_write_bytes
from bnnprune.deploy import cexport, finn_run, fpga, mcu
from bnnprune.deploy.onnx_export import export_onnx
from bnnprune.deploy.qonnx_export import export_qonnx, require_qonnx
from bnnprune.deploy.source import Deployable
from bnnprune.engine import EngineError, save

__all__ = ["DEPLOY_TARGETS", "EXPORT_FORMATS", "DeployTarget", "ExportReport", "export",
           "get_deploy_target"]

PathLike = str | os.PathLike[str]


@dataclass
class ExportReport:
    """What a target wrote and found: its files, lines for people (in order), a JSON-ready
    dict, and ``error``, a fault found after the files were written (the CLI prints the
    lines, then fails with it)."""

    target: str
    files: list[Path]
    lines: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _no_check(out: Path | None, **options: Any) -> None:
    """A target whose options need no check before loading."""


@dataclass(frozen=True)
class DeployTarget:
    """One deploy target: its name, what it writes, its export function and its options."""

    name: str
    summary: str
    export: Callable[..., ExportReport]
    options: tuple[str, ...] = ()  # keyword options ``export`` takes besides net and out
    check: Callable[..., None] = _no_check
    writes_format: bool = True  # a file format of `bnnprune export` (else an estimate)


def _written(target: str, out: Path, net: Deployable, size: int) -> ExportReport:
    """The report of a target that writes one file of ``size`` bytes, next to the float32
    weights of the model it came from (when there is one)."""
    line = f"wrote {out}: {size / 1024:.1f} KiB"
    fb = net.float_bytes()
    if fb is not None:
        line += (f", {fb / size:.1f}x smaller than the float32 weights "
                 f"({fb / 1024:.1f} KiB)")
    return ExportReport(target, [out], [line], {"bytes": size, "float_bytes": fb})


def export_bnn(net: Deployable, out: PathLike) -> ExportReport:
    """The packed engine's ``.bnn`` file (:func:`bnnprune.engine.save`)."""
    out = Path(out)
    return _written("bnn", out, net, save(net.program, out))


def export_onnx_file(net: Deployable, out: PathLike, *, opset: int = 17) -> ExportReport:
    """The float-simulated model as ONNX (:func:`~bnnprune.deploy.onnx_export.export_onnx`):
    it needs the PyTorch model, not only a program."""
    if net.model is None:
        raise EngineError(f"{net.name}: the ONNX export needs the PyTorch model (a checkpoint "
                          "or a module), not a compiled program")
    out = Path(out)
    export_onnx(net.model, out, net.input_shape, opset)
    return _written("onnx", out, net, out.stat().st_size)


def export_qonnx_file(net: Deployable, out: PathLike, *, finn: bool = False,
                      input_scale: float | None = None) -> ExportReport:
    """The program as QONNX for FINN (:func:`~bnnprune.deploy.qonnx_export.export_qonnx`)."""
    require_qonnx()  # before compiling: a missing package is the first thing to say
    out = Path(out)
    export_qonnx(net.program, path=out, finn=finn, input_scale=input_scale)
    return _written("qonnx", out, net, out.stat().st_size)


def check_c(out: Path | None, *, baseline: Any = None, target: str | None = None) -> None:
    """The C export writes a folder; a Cortex-M ``target`` must be known and its toolchain
    and qemu installed (the count needs them)."""
    if out is not None and out.exists() and not out.is_dir():
        raise EngineError(f"{out} is not a folder (the C export writes a folder of C files)")
    if target is not None:
        mcu.get_target(target)
        mcu.require_tools()


def export_c_folder(net: Deployable, out: PathLike, *, baseline: Deployable | None = None,
                    target: str | None = None) -> ExportReport:
    """The C99 export (:mod:`~bnnprune.deploy.cexport`) and its flash/RAM footprint, next to
    the unpruned ``baseline``'s; with a Cortex-M ``target``, also the mps2 board example and
    its code bytes and instructions per inference counted under qemu
    (:mod:`~bnnprune.deploy.mcu`)."""
    out = Path(out)
    check_c(out, target=target)
    core = mcu.get_target(target) if target else None
    if baseline is not None and baseline.input_shape != net.input_shape:
        raise EngineError(f"{baseline.name} has another input shape than {net.name}")
    base = cexport.c_footprint(baseline.program) if baseline is not None else None
    program = net.program
    fp = cexport.export_c(program, out)
    report = ExportReport("c", [out / name for name in cexport.FILES],
                          [f"wrote {out}/{{{','.join(cexport.FILES)}}}"],
                          {"footprint": fp.to_dict(),
                           "baseline_footprint": base.to_dict() if base else None})
    extra = None
    costs = []
    if core is not None:
        names = (*mcu.BOARD_FILES, "Makefile")
        board = mcu.write_board(out, core)
        report.files += [board / name for name in names]
        report.lines.append(f"wrote {board}/{{{','.join(names)}}}")
        costs = [mcu.measure(program, core)]
        if baseline is not None:
            costs.append(mcu.measure(baseline.program, core))
        bcost = costs[1] if baseline is not None else None
        extra = {"code (B)": (costs[0].code_bytes, bcost.code_bytes if bcost else None),
                 "instructions": (costs[0].insns, bcost.insns if bcost else None)}
        report.lines.append(f"{core.name}: {' '.join(core.cpu_flags)} {mcu.OPT}, run on qemu "
                            f"{core.machine}" + (f" ({core.note})" if core.note else ""))
        report.data["mcu"] = {"target": core.name, "code_bytes": extra["code (B)"],
                              "instructions": extra["instructions"],
                              "exact": all(c.exact for c in costs)}
    report.lines += cexport.format_footprint(fp, base, extra)
    if core is not None:
        exact = all(c.exact for c in costs)
        report.lines.append(
            f"instructions per inference: counted under emulation (qemu), not cycles; mean "
            f"of {costs[0].images} random images. Logits equal the engine's bit for bit: "
            f"{'yes' if exact else 'NO'}")
        if not exact:
            report.error = f"the {core.name} build's logits differ from the engine's"
    return report


def estimate_fpga(net: Deployable, out: PathLike | None = None, *,
                  baseline: Deployable | None = None, target_fps: float | None = None,
                  pe_simd: tuple[int, int] | None = None, clock_mhz: float = 200.0,
                  ram_style: str = "block", fp_bits: int = 8, search: str = "min-lut",
                  estimator: str = "auto") -> ExportReport:
    """The FINN dataflow estimate (:mod:`~bnnprune.deploy.fpga`, or FINN's own through
    :mod:`~bnnprune.deploy.finn_run`), next to the unpruned ``baseline``'s; its JSON written
    to ``out`` when given.

    ``estimator``: ``finn`` (an error when FINN is missing or refuses the model), ``model``
    (bnnprune's cost model) or ``auto`` (FINN where it runs, else the model; the report
    says why). FINN folds for a target fps: ``pe_simd`` uses the model. Without either,
    ``target_fps`` is 1000.
    """
    if estimator not in ("auto", "finn", "model"):
        raise EngineError(f"estimator must be auto, finn or model, got {estimator!r}")
    if estimator == "finn" and pe_simd:
        raise EngineError("the finn estimator folds for a target fps (FINN's SetFolding), "
                          "not for pe_simd")
    target = None if pe_simd else (target_fps if target_fps is not None else 1000.0)
    program = net.program
    base = baseline.program if baseline is not None else None
    lines: list[str] = []
    text = ""
    if estimator != "model" and not pe_simd:
        try:
            text, result = finn_run.report(program, base, target_fps=target,
                                           clock_mhz=clock_mhz)
        except EngineError as e:
            if estimator == "finn":
                raise
            lines.append(f"estimator: bnnprune's cost model (FINN not used: {e})")
    if not text:
        text, result = fpga.report(program, base, target_fps=target, pe_simd=pe_simd,
                                   clock_mhz=clock_mhz, ram_style=ram_style, fp_bits=fp_bits,
                                   search=search)
        result["estimator"] = "model"
    lines.append(text)
    files = []
    if out is not None:
        atomic_write_bytes(out, json.dumps(result, indent=2).encode())
        files.append(Path(out))
        lines.append(f"wrote {out}")
    return ExportReport("fpga", files, lines, result)


DEPLOY_TARGETS: dict[str, DeployTarget] = {t.name: t for t in (
    DeployTarget("bnn", "the packed engine's .bnn file", export_bnn),
    DeployTarget("onnx", "the float-simulated BNN as ONNX", export_onnx_file, ("opset",)),
    DeployTarget("qonnx", "bipolar weights and threshold activations for FINN",
                 export_qonnx_file, ("finn", "input_scale")),
    DeployTarget("c", "dependency-free C99 (model.c/.h, kernels, host main.c)",
                 export_c_folder, ("baseline", "target"), check_c),
    DeployTarget("fpga", "FINN dataflow estimate: folding, cycles, LUT/BRAM per layer",
                 estimate_fpga, ("baseline", "target_fps", "pe_simd", "clock_mhz", "ram_style",
                                 "fp_bits", "search", "estimator"), writes_format=False),
)}
EXPORT_FORMATS = tuple(n for n, t in DEPLOY_TARGETS.items() if t.writes_format)


def get_deploy_target(name: str) -> DeployTarget:
    """The target called ``name``; :class:`EngineError` listing the known ones."""
    if name not in DEPLOY_TARGETS:
        raise EngineError(f"unknown deploy target {name!r}; known: {', '.join(DEPLOY_TARGETS)}")
    return DEPLOY_TARGETS[name]


def export(net: Deployable, target: str, out: PathLike | None, **options: Any) -> ExportReport:
    """Deploy ``net`` to ``target`` (a name of :data:`DEPLOY_TARGETS`) into ``out``; an
    option the target does not take is an error."""
    t = get_deploy_target(target)
    unknown = sorted(set(options) - set(t.options))
    if unknown:
        raise EngineError(f"the {target} target takes no {', '.join(unknown)}")
    return t.export(net, out, **options)
