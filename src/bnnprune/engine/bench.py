"""Speed measurements of the packed engine, all taken in one run on this machine.

- roofline: a streaming XOR+popcount kernel over L1-resident rows on every numba thread;
- kernel: each XNOR-popcount conv of the program alone, in useful binary MACs/s
  (``cin*kh*kw`` bits per output, the BOPs definition of :func:`bnnprune.metrics.count_bops`);
- end to end: latency at batch 1 and throughput at batch 64, packed engine vs PyTorch float
  eager on the same model (measurements interleaved, medians reported);
- pruned vs unpruned: packed latency ratio next to the BOPs ratio.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from torch import nn

from bnnprune.engine import kernels as K
from bnnprune.engine.errors import EngineError
from bnnprune.engine.fileformat import load
from bnnprune.engine.pack import tail_mask
from bnnprune.engine.program import Program

__all__ = ["benchmark", "format_benchmark", "machine_info", "program_bops", "roofline"]


def machine_info() -> dict[str, Any]:
    """CPU model, core and thread counts, and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(),
            "openblas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
            "numba": numba.__version__,
            "numpy": np.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def program_bops(program: Program) -> int:
    """Binary MACs of one image: cin*kh*kw per output of every XNOR-popcount op."""
    total = 0
    for op in program.ops:
        if op.kind == "bconv":
            kh, kw = op.attrs["kernel"]
            v = program.values[op.output]
            total += op.attrs["cin"] * kh * kw * op.attrs["cout"] * v.h * v.w
    return total


def _time(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _rng_words(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 2**63, size=shape, dtype=np.int64).view(np.uint64)


def roofline(seconds: float = 0.2, row_words: int = 512, repeats: int = 5) -> dict[str, float]:
    """Streaming XOR+popcount rate over L1-resident rows (2 x 4 KiB per thread)."""
    threads = numba.get_num_threads()
    rng = np.random.default_rng(0)
    a, b = _rng_words(rng, (threads, row_words)), _rng_words(rng, (threads, row_words))
    K.stream_xor_popcount(a, b, 1)
    reps = 64
    def probe(r: int) -> float:
        return _time(lambda: K.stream_xor_popcount(a, b, r))

    while probe(reps) < seconds / 4:
        reps *= 2
    best = min(probe(reps) for _ in range(repeats))
    wps = threads * row_words * reps / best
    return {"words_per_s": wps, "bmacs_per_s": 64 * wps}


def _kernel_rows(program: Program, batch: int, repeats: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    rows = []
    for idx, op in enumerate(program.ops):
        if op.kind != "bconv":
            continue
        a = op.attrs
        x = program.values[op.inputs[0]]
        v = program.values[op.output]
        (kh, kw), (ph, pw) = a["kernel"], a["padding"]
        xp = _rng_words(rng, (batch, x.h + 2 * ph, x.w + 2 * pw, K.words(a["cin"])))
        xp &= np.tile(tail_mask(a["cin"]), (batch, x.h + 2 * ph, x.w + 2 * pw, 1))
        wb = K.block_weights(op.arrays["w"])
        nbits = a["cin"] * kh * kw
        if a["mode"] == "bits":
            def run(xp=xp, wb=wb, op=op, v=v, nbits=nbits) -> np.ndarray:
                return K.run_bconv(xp, wb, op.attrs["cout"], op.attrs["stride"], nbits,
                                   (v.h, v.w), thr=op.arrays["thr"], flip=op.arrays["flip"])
        else:
            def run(xp=xp, wb=wb, op=op, v=v, nbits=nbits) -> np.ndarray:
                arrs = tuple(op.arrays[k] for k in ("m1", "a1", "m2", "a2"))
                return K.run_bconv(xp, wb, op.attrs["cout"], op.attrs["stride"], nbits,
                                   (v.h, v.w), affine=arrs)
        run()
        best = min(_time(run) for _ in range(repeats))
        macs = batch * v.h * v.w * a["cout"] * nbits
        rows.append({"op": op.name or f"op{idx}", "macs": macs, "seconds": best,
                     "bmacs_per_s": macs / best})
    return rows


def _interleaved(fns: list[Callable[[], Any]], repeats: int) -> list[list[float]]:
    for f in fns:
        f()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            samples[i].append(_time(f))
    return samples


def _stats(s: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(s), "min_s": min(s)}


def _as_program(p: Program | str | os.PathLike[str]) -> Program:
    return p if isinstance(p, Program) else load(p)


@torch.no_grad()
def benchmark(
    program_or_path: Program | str | os.PathLike[str],
    compare_model: nn.Module | None = None,
    *,
    baseline: Program | str | os.PathLike[str] | None = None,
    latency_batch: int = 1,
    throughput_batch: int = 64,
    repeats: int = 20,
    kernel_batch: int = 64,
) -> dict[str, Any]:
    """Measure the program (and optionally a PyTorch model and an unpruned baseline program).

    Returns a JSON-friendly dict; :func:`format_benchmark` renders it as a table.
    """
    program = _as_program(program_or_path)
    if repeats < 1 or latency_batch < 1 or throughput_batch < 1 or kernel_batch < 1:
        raise EngineError("repeats and batch sizes must be >= 1")
    result: dict[str, Any] = {"machine": machine_info(), "input_shape": list(program.input_shape),
                              "bops": program_bops(program)}
    if not isinstance(program_or_path, Program):
        result["file_bytes"] = Path(program_or_path).stat().st_size
    result["binary_params"] = program.binary_params()
    result["float_params"] = program.float_params()
    result["ideal_bytes"] = program.binary_params() // 8 + 4 * program.float_params()

    roof = roofline()
    rows = _kernel_rows(program, kernel_batch, max(3, repeats // 4))
    macs = sum(r["macs"] for r in rows)
    secs = sum(r["seconds"] for r in rows)
    roof_after = roofline()
    roof_best = max(roof["bmacs_per_s"], roof_after["bmacs_per_s"])
    kern = macs / secs if secs > 0 else 0.0
    result["roofline"] = {"bmacs_per_s": roof_best, "words_per_s": roof_best / 64}
    result["kernel"] = {"batch": kernel_batch, "layers": rows, "bmacs_per_s": kern,
                        "fraction_of_roofline": kern / roof_best if roof_best else 0.0}

    rng = np.random.default_rng(2)
    for label, batch in (("latency", latency_batch), ("throughput", throughput_batch)):
        x = rng.standard_normal((batch, *program.input_shape)).astype(np.float32)
        fns: list[Callable[[], Any]] = [lambda x=x, b=batch: program(x, batch_size=b)]
        if compare_model is not None:
            xt = torch.from_numpy(x)
            model = compare_model.eval()
            fns.append(lambda xt=xt, m=model: m(xt))
        samples = _interleaved(fns, repeats if batch == 1 else max(3, repeats // 4))
        entry: dict[str, Any] = {"batch": batch, "engine": _stats(samples[0])}
        entry["engine"]["images_per_s"] = batch / entry["engine"]["median_s"]
        if compare_model is not None:
            entry["torch"] = _stats(samples[1])
            entry["torch"]["images_per_s"] = batch / entry["torch"]["median_s"]
            entry["speedup"] = entry["torch"]["median_s"] / entry["engine"]["median_s"]
        result[label] = entry

    if baseline is not None:
        base = _as_program(baseline)
        if base.input_shape != program.input_shape:
            raise EngineError("baseline program has a different input shape")
        x = rng.standard_normal((latency_batch, *program.input_shape)).astype(np.float32)
        s_p, s_b = _interleaved([lambda: program(x), lambda: base(x)], repeats)
        bops_b = program_bops(base)
        result["pruned"] = {
            "bops": result["bops"], "baseline_bops": bops_b,
            "bops_ratio": result["bops"] / bops_b if bops_b else float("nan"),
            "latency_s": statistics.median(s_p), "baseline_latency_s": statistics.median(s_b),
            "latency_ratio": statistics.median(s_p) / statistics.median(s_b),
        }
    return result


def format_benchmark(result: dict[str, Any]) -> str:
    """Render :func:`benchmark`'s dict as a plain-text report."""
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['logical_cores']} logical cores, numba threads "
             f"{m['numba_threads']}, torch threads {m['torch_threads']}",
             f"input {tuple(result['input_shape'])}, {result['bops']:,} binary MACs per image"]
    if "file_bytes" in result:
        lines.append(f"file {result['file_bytes']:,} bytes (binary/8 + float*4 = "
                     f"{result['ideal_bytes']:,} bytes)")
    roof, kern = result["roofline"], result["kernel"]
    lines += ["", f"{'kernel (batch ' + str(kern['batch']) + ')':<28}{'GbMAC/s':>10}{'ms':>10}"]
    for r in kern["layers"]:
        lines.append(f"  {r['op']:<26}{r['bmacs_per_s'] / 1e9:>10.1f}{r['seconds'] * 1e3:>10.3f}")
    lines.append(f"  {'all binary layers':<26}{kern['bmacs_per_s'] / 1e9:>10.1f}")
    lines.append(f"  {'roofline (XOR+popcount)':<26}{roof['bmacs_per_s'] / 1e9:>10.1f}"
                 f"   kernel = {100 * kern['fraction_of_roofline']:.0f}% of roofline")
    lines += ["", f"{'end to end':<28}{'engine ms':>10}{'torch ms':>10}{'img/s eng':>11}"
                  f"{'img/s torch':>12}{'speedup':>9}"]
    for label in ("latency", "throughput"):
        e = result.get(label)
        if not e:
            continue
        t = e.get("torch")
        lines.append(
            f"  {label + ' (batch ' + str(e['batch']) + ')':<26}"
            f"{e['engine']['median_s'] * 1e3:>10.3f}"
            f"{(t['median_s'] * 1e3 if t else float('nan')):>10.3f}"
            f"{e['engine']['images_per_s']:>11.1f}"
            f"{(t['images_per_s'] if t else float('nan')):>12.1f}"
            f"{(str(round(e['speedup'], 2)) + 'x' if t else '-'):>9}")
    p = result.get("pruned")
    if p:
        lines += ["", "pruned vs unpruned (packed, batch 1)",
                  f"  BOPs {p['bops']:,} / {p['baseline_bops']:,} = {p['bops_ratio']:.3f}",
                  f"  latency {p['latency_s'] * 1e3:.3f} ms / {p['baseline_latency_s'] * 1e3:.3f}"
                  f" ms = {p['latency_ratio']:.3f}"]
    return "\n".join(lines)
