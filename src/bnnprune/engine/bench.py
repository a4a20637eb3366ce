"""Speed measurements of the packed engine, all taken in one run on this machine.

- roofline: the XOR+popcount peak with register-resident operands on every numba thread;
- FMA peak: independent register-resident ``<8 x float>`` FMA chains on every numba thread;
- kernel: each XNOR-popcount conv of the program alone, in useful binary MACs/s
  (``cin*kh*kw`` bits per output, the BOPs definition of :func:`bnnprune.metrics.count_bops`);
- end to end: latency at batch 1 and throughput at batch 64, packed engine vs PyTorch float
  eager on the same model (measurements interleaved, medians reported);
- pruned vs unpruned: packed latency ratio next to the BOPs ratio;
- pair (:func:`compare_pair`): a model and its pruned copy measured interleaved at batch 1 and
  64 with BOPs, float MAC and predicted latency ratios and the share of the physical limit
  (binary MACs at the roofline plus float MACs at the FMA peak).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import nn

from bnnprune.engine.compile import as_program
from bnnprune.engine.errors import EngineError
from bnnprune.engine.kernels.intrinsics import (
    CSA_GROUP,
    CSA_LANES,
    FMA_CHAINS,
    XPC_CHAINS,
    XPC_LANES,
    counting_scheme,
    csa_chains,
    fma_chains,
    instruction_set,
    xpc_chains,
)
from bnnprune.engine.latency import build_cost_model, kernels_compiled_here, op_channels
from bnnprune.engine.pack import tail_mask
from bnnprune.engine.program import Program, _threads, is_pruned_copy
from bnnprune.engine.timing import elapsed, interleaved, step_samples
from bnnprune.machine import isa_label, machine_info

__all__ = ["batch_repeats", "benchmark", "compare_latency", "compare_pair", "fma_peak",
           "format_benchmark", "format_pair", "interleaved_latencies", "machine_info", "op_times",
           "program_bops", "program_float_macs", "roofline"]


def _program_macs(program: Program, kind: str) -> int:
    """MACs of one image in every ``kind`` op: cin*kh*kw per output element."""
    total = 0
    for op in program.ops:
        if op.kind == kind:
            kh, kw = op.attrs["kernel"]
            v = program.values[op.output]
            total += op.attrs["cin"] * kh * kw * op.attrs["cout"] * v.h * v.w
    return total


def program_bops(program: Program) -> int:
    """Binary MACs of one image: every XNOR-popcount op (``bconv``)."""
    return _program_macs(program, "bconv")


def program_float_macs(program: Program) -> int:
    """Float MACs of one image: every full-precision conv / linear (``fconv``; a binary layer
    on real inputs is one too: the cost rule of :mod:`bnnprune.metrics.ops`)."""
    return _program_macs(program, "fconv")


def _rng_words(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 2**63, size=shape, dtype=np.int64).view(np.uint64)


@njit(parallel=True, cache=True)
def _xpc_probe(reps, out):
    for t in prange(out.shape[0]):
        out[t] = xpc_chains(reps, t + 1)


@njit(parallel=True, cache=True)
def _csa_probe(reps, out):
    for t in prange(out.shape[0]):
        out[t] = csa_chains(reps, t + 1)


# (probe, 64-bit words counted per repetition on one thread) of each counting scheme
_SCHEME_PROBES = {"popcount": (_xpc_probe, XPC_CHAINS * XPC_LANES),
                  "csa": (_csa_probe, CSA_GROUP * CSA_LANES)}


def roofline(seconds: float = 0.2, probe_s: float = 0.004, min_probes: int = 10
             ) -> dict[str, Any]:
    """XOR+popcount peak with register-resident operands on every numba thread: the best
    binary-MAC rate of the engine's counting schemes on this machine.

    Per scheme, each thread runs the GEMM's XOR and counting without its operand loads, so no
    memory limits it: ``popcount`` on :data:`~bnnprune.engine.kernels.intrinsics.XPC_CHAINS`
    independent vector chains of XOR, ``llvm.ctpop`` and add; ``csa`` on one chain of
    carry-save groups (:func:`~bnnprune.engine.kernels.intrinsics.csa_chains`). Each scheme
    is probed for ``seconds``; the best probe counts, so a probe that was preempted on a
    shared machine does not lower the reference (as in :func:`fma_peak`). Returns the best
    scheme's rate, its name and every scheme's rate (binary MACs/s).
    """
    threads = numba.get_num_threads()
    out = np.zeros(threads, np.int64)
    rates = {}
    for scheme, (probe, words) in _SCHEME_PROBES.items():
        probe(1, out)
        reps, best = _best_probe(lambda r, rows, probe=probe: probe(r, out[:rows]), threads,
                                 64, seconds, probe_s, min_probes)
        rates[scheme] = 64 * threads * reps * words / best
    scheme = max(rates, key=rates.__getitem__)
    return {"words_per_s": rates[scheme] / 64, "bmacs_per_s": rates[scheme], "scheme": scheme,
            "schemes": rates}


LIMIT_ROUNDS = 3  # calibrations of the physical limit before the timed runs, and as many after
LIMIT_TOLERANCE = 0.15  # the largest relative spread of a limit component's calibrations


def limit_round(seconds: float = 0.2) -> dict[str, Any]:
    """One calibration of the physical limit: :func:`roofline` and :func:`fma_peak`."""
    roof = roofline(seconds=seconds)
    return {"bmacs_per_s": roof["bmacs_per_s"], "scheme": roof["scheme"],
            "schemes": roof["schemes"], "fmacs_per_s": fma_peak(seconds=seconds)["fmacs_per_s"]}


def limit_summary(rounds: list[dict[str, Any]], tolerance: float = LIMIT_TOLERANCE
                  ) -> dict[str, Any]:
    """The physical limit from repeated calibrations (:func:`limit_round`): each component's
    best, its spread over the rounds (max / min - 1) and whether every spread is within
    ``tolerance``. A share of the limit is reported only when they agree: a disturbed probe
    (a preempted one is slower, one on a briefly quieter core faster) shows as a spread."""
    out: dict[str, Any] = {"rounds": rounds, "tolerance": tolerance,
                           "counting_scheme": counting_scheme(),
                           "instruction_set": instruction_set()}
    spread = {}
    for key in ("bmacs_per_s", "fmacs_per_s"):
        vals = [r[key] for r in rounds]
        out[key] = max(vals)
        spread[key] = max(vals) / min(vals) - 1
    best = max(rounds, key=lambda r: r["bmacs_per_s"])
    out["scheme"] = best["scheme"]
    out["schemes"] = {k: max(r["schemes"][k] for r in rounds) for k in best["schemes"]}
    out["spread"] = spread
    out["consistent"] = all(v <= tolerance for v in spread.values())
    return out


def format_limit(lim: dict[str, Any]) -> str:
    """One or two lines: the limit's components, their schemes and the calibrations' spread;
    says so when the calibrations disagree (no share of the limit is then given)."""
    spread = lim["spread"]
    others = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in lim["schemes"].items()
                       if k != lim["scheme"])
    text = (f"physical limit: {lim['bmacs_per_s'] / 1e9:.1f} G binary MACs/s (roofline, "
            f"{lim['scheme']} counting; {others}) + {lim['fmacs_per_s'] / 1e9:.1f} G float "
            f"MACs/s (FMA peak); {len(lim['rounds'])} calibrations, spread "
            f"{100 * spread['bmacs_per_s']:.0f}% / {100 * spread['fmacs_per_s']:.0f}%;"
            f" engine: {lim['instruction_set']}, {lim['counting_scheme']} counting")
    if not lim["consistent"]:
        text += (f"\ncalibrations disagree by more than {100 * lim['tolerance']:.0f}%: the "
                 "machine was disturbed, no share of the limit is given")
    return text


def _best_probe(run: Callable[[int, int], Any], threads: int, reps: int, seconds: float,
                probe_s: float, min_probes: int) -> tuple[int, float]:
    """``run(reps, rows)`` calibrated on one row (without the thread pool) to last about
    ``probe_s``, then repeated on all rows for ``seconds`` (at least ``min_probes`` times):
    the repetition count and the best time, so a preempted probe does not count."""
    def probe(r: int, rows: int) -> float:
        return elapsed(lambda: run(r, rows))

    with _threads(1):
        while probe(reps, 1) < probe_s:
            reps *= 2
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_probes or time.perf_counter() < t_end:
        times.append(probe(reps, threads))
    return reps, min(times)


@njit(parallel=True, cache=True)
def _fma_probe(reps, out):
    for t in prange(out.shape[0]):
        out[t] = fma_chains(reps, np.float32(1.0 + t))


def fma_peak(seconds: float = 0.2, probe_s: float = 0.004, min_probes: int = 10
             ) -> dict[str, float]:
    """Float FMA rate with register-resident accumulators on every numba thread (MACs/s).

    Each thread runs :data:`~bnnprune.engine.kernels.intrinsics.FMA_CHAINS` independent
    ``<8 x float>`` FMA chains (the engine's vector width); the best probe counts, as in
    :func:`roofline`.
    """
    threads = numba.get_num_threads()
    out = np.zeros(threads, np.float32)
    _fma_probe(1, out)
    reps, best = _best_probe(lambda r, rows: _fma_probe(r, out[:rows]), threads, 64, seconds,
                             probe_s, min_probes)
    return {"fmacs_per_s": threads * reps * FMA_CHAINS * 8 / best, "threads": threads}


def _random_bits(rng: np.random.Generator, buf: np.ndarray, channels: int) -> None:
    buf[...] = _rng_words(rng, buf.shape) & tail_mask(channels)


def _kernel_rows(program: Program, batch: int, repeats: int) -> list[dict[str, Any]]:
    """Each XNOR-popcount op alone (its patch matrix / padding included) on random bits.

    The calls are those the engine runs (a plan for ``batch`` images), interleaved over the
    ops and repeated; the best time of each is reported.
    """
    rng = np.random.default_rng(1)
    plan = program.plan(batch)
    ops = [(idx, op) for idx, op in enumerate(program.ops) if op.kind == "bconv"]
    for _, op in ops:
        _random_bits(rng, plan.bufs[op.inputs[0]], op.attrs["cin"])
    runs = [_calls(plan.op_calls(idx)) for idx, _ in ops]
    samples = interleaved(runs, repeats)
    rows = []
    for (idx, op), s in zip(ops, samples, strict=True):
        a = op.attrs
        v = program.values[op.output]
        kh, kw = a["kernel"]
        macs = batch * v.h * v.w * a["cout"] * a["cin"] * kh * kw
        best = min(s)
        prep = program.prepared(idx)
        rows.append({"op": op.name or f"op{idx}", "macs": macs, "seconds": best,
                     "bmacs_per_s": macs / best, "dense": bool(prep.dense),
                     "words_per_window": int(prep.wb.shape[1] * prep.wb.shape[2])})
    return rows


def _calls(calls: list[Callable[[], Any]]) -> Callable[[], None]:
    def run() -> None:
        for c in calls:
            c()
    return run


def op_times(program: Program, batch: int = 1, repeats: int = 20,
             seed: int = 3) -> list[dict[str, Any]]:
    """Median time of every op of the program inside a full run at ``batch`` images."""
    plan = program.plan(batch)
    x = np.random.default_rng(seed).standard_normal((batch, *program.input_shape))
    x = x.astype(np.float32)
    times = step_samples(plan, x, repeats)
    rows = []
    for (idx, _), t in zip(plan.steps, times, strict=True):
        op = program.ops[idx]
        rows.append({"op": op.name or f"op{idx}", "kind": op.kind,
                     "median_s": statistics.median(t)})
    return rows


def batch_repeats(repeats: int, batch: int) -> int:
    """Timed runs at ``batch`` images when batch 1 gets ``repeats``: a quarter (at least 3)
    for larger batches, whose runs are long enough to need fewer samples."""
    return repeats if batch == 1 else max(3, repeats // 4)


def interleaved_latencies(programs: list[Program], batch: int = 1, repeats: int = 20,
                          seed: int = 4) -> list[float]:
    """Median latency of each program at ``batch`` images, their runs interleaved (one run
    of each in turn, ``repeats`` times) so that all see the same machine load."""
    if len({p.input_shape for p in programs}) > 1:
        raise EngineError("the programs have different input shapes")
    x = np.random.default_rng(seed).standard_normal((batch, *programs[0].input_shape))
    x = x.astype(np.float32)
    samples = interleaved([lambda p=p: p(x, batch_size=batch) for p in programs], repeats)
    return [statistics.median(s) for s in samples]


def compare_latency(program: Program, baseline: Program, batch: int = 1, repeats: int = 20,
                    seed: int = 4) -> dict[str, float]:
    """Median latency of ``program`` and ``baseline`` at ``batch`` images (runs interleaved,
    so both see the same machine load) next to their BOPs ratio."""
    if baseline.input_shape != program.input_shape:
        raise EngineError("baseline program has a different input shape")
    lat, lat_b = interleaved_latencies([program, baseline], batch, repeats, seed)
    bops, bops_b = program_bops(program), program_bops(baseline)
    return {"batch": batch, "bops": bops, "baseline_bops": bops_b,
            "bops_ratio": bops / bops_b if bops_b else float("nan"),
            "latency_s": lat, "baseline_latency_s": lat_b, "latency_ratio": lat / lat_b}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def compare_pair(program: Program, baseline: Program, *, batches: tuple[int, ...] = (1, 64),
                 repeats: int = 20, table_repeats: int = 5, probe_s: float = 0.2,
                 cache: Any = None) -> dict[str, Any]:
    """A pruned ``program`` against its unpruned ``baseline``, measured interleaved in one run.

    Per batch size: both latencies (medians) and their ratio, the latency ratio the engine's
    cost model predicts (:mod:`bnnprune.engine.latency`, op tables timed with
    ``table_repeats`` or read from ``cache``), and each program's share of the physical
    limit: binary MACs at the XOR+popcount roofline plus float MACs at the FMA peak. Also
    the BOPs and float MAC ratios. JSON-ready.
    """
    if baseline.input_shape != program.input_shape:
        raise EngineError("baseline program has a different input shape")
    if not is_pruned_copy(program, baseline):
        raise EngineError("the program is not a channel-pruned copy of the baseline (its ops "
                          "differ); compare a model with its own pruned copy")
    if repeats < 1 or table_repeats < 1 or not batches or min(batches) < 1:
        raise EngineError("repeats and batch sizes must be >= 1")
    counts = {i: ([c], [o]) for i, (c, o) in
              enumerate(op_channels(program, i) for i in range(len(program.ops)))}
    rounds = [limit_round(probe_s) for _ in range(LIMIT_ROUNDS)]
    work = {"pruned": (program_bops(program), program_float_macs(program)),
            "unpruned": (program_bops(baseline), program_float_macs(baseline))}
    out: dict[str, Any] = {
        "threads": numba.get_num_threads(),
        "bops": {"pruned": work["pruned"][0], "unpruned": work["unpruned"][0],
                 "ratio": _ratio(work["pruned"][0], work["unpruned"][0])},
        "float_macs": {"pruned": work["pruned"][1], "unpruned": work["unpruned"][1],
                       "ratio": _ratio(work["pruned"][1], work["unpruned"][1])},
        "batches": {},
    }
    times = {}
    for batch in batches:
        lat = compare_latency(program, baseline, batch, repeats)
        model = build_cost_model(baseline, counts, batch=batch, threads=numba.get_num_threads(),
                                 repeats=table_repeats, cache=cache)
        entry: dict[str, Any] = {
            "pruned_s": lat["latency_s"], "unpruned_s": lat["baseline_latency_s"],
            "ratio": lat["latency_ratio"],
            "predicted_ratio": model.predict(program) / model.predict(baseline),
        }
        times[batch] = {"pruned": lat["latency_s"], "unpruned": lat["baseline_latency_s"]}
        out["batches"][str(batch)] = entry
    rounds += [limit_round(probe_s) for _ in range(LIMIT_ROUNDS)]
    lim = out["physical_limit"] = limit_summary(rounds)
    for batch, entry in zip(batches, out["batches"].values(), strict=True):
        for key, prog_s in times[batch].items():
            bops, macs = work[key]
            limit = batch * (bops / lim["bmacs_per_s"] + macs / lim["fmacs_per_s"])
            entry[f"{key}_limit_s"] = limit
            entry[f"{key}_fraction_of_limit"] = limit / prog_s if lim["consistent"] else None
            # the same share against per-word popcount counting alone (the AVX2 yardstick)
            pc = batch * (bops / lim["schemes"]["popcount"] + macs / lim["fmacs_per_s"])
            entry[f"{key}_fraction_of_popcount_limit"] = (pc / prog_s if lim["consistent"]
                                                          else None)
    out["kernels_compiled_here"] = kernels_compiled_here()
    return out


COMPILED_HERE_NOTE = ("note: this process compiled the engine's kernels itself; such code can "
                      "run slower than the cached kernels later runs load (1.4x on one conv "
                      "on an AVX2 AMD EPYC Zen 3: benchmarks/bench_compiled_here.py): run "
                      "again for figures to quote")


def share_text(v: float | None) -> str:
    """A share of the limit as a percentage, ``-`` where none was given."""
    return "-" if v is None else f"{100 * v:.0f}%"


def format_pair(pair: dict[str, Any]) -> str:
    """Render :func:`compare_pair`'s dict as plain text."""
    lines = [f"pruned vs unpruned ({pair['threads']} thread(s)): BOPs ratio "
             f"{pair['bops']['ratio']:.3f}, float MAC ratio {pair['float_macs']['ratio']:.3f}",
             f"{'batch':>7}{'pruned ms':>11}{'unpruned ms':>13}{'ratio':>8}{'predicted':>11}"
             f"{'% limit':>9}{'% limit (unpr.)':>17}"]
    for b, e in pair["batches"].items():
        lines.append(f"{b:>7}{e['pruned_s'] * 1e3:>11.3f}{e['unpruned_s'] * 1e3:>13.3f}"
                     f"{e['ratio']:>8.3f}{e['predicted_ratio']:>11.3f}"
                     f"{share_text(e['pruned_fraction_of_limit']):>9}"
                     f"{share_text(e['unpruned_fraction_of_limit']):>17}")
    lines.append(format_limit(pair["physical_limit"]))
    if pair.get("kernels_compiled_here"):
        lines.append(COMPILED_HERE_NOTE)
    return "\n".join(lines)


def _stats(s: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(s), "min_s": min(s)}


def _sum_kinds(rows: list[dict[str, Any]], kinds: tuple[str, ...] | None) -> float:
    """Summed median time of the ops of ``kinds`` (None: every op not binary or full-precision)."""
    if kinds is None:
        return sum(r["median_s"] for r in rows if r["kind"] not in ("bconv", "fconv"))
    return sum(r["median_s"] for r in rows if r["kind"] in kinds)


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
    threads: int | None = None,
) -> dict[str, Any]:
    """Measure the program (and optionally a PyTorch model and an unpruned baseline program).

    ``threads`` caps numba's threads for everything measured here, the roofline included
    (PyTorch keeps its own setting, see ``torch.set_num_threads``). Returns a JSON-friendly
    dict; :func:`format_benchmark` renders it as a table.
    """
    program = as_program(program_or_path)
    if repeats < 1 or latency_batch < 1 or throughput_batch < 1 or kernel_batch < 1:
        raise EngineError("repeats and batch sizes must be >= 1")
    with _threads(threads):
        return _benchmark(program_or_path, program, compare_model, baseline, latency_batch,
                          throughput_batch, repeats, kernel_batch)


def _benchmark(program_or_path: Program | str | os.PathLike[str], program: Program,
               compare_model: nn.Module | None,
               baseline: Program | str | os.PathLike[str] | None, latency_batch: int,
               throughput_batch: int, repeats: int, kernel_batch: int) -> dict[str, Any]:
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
    best = roof if roof["bmacs_per_s"] >= roof_after["bmacs_per_s"] else roof_after
    result["roofline"] = {"bmacs_per_s": roof_best, "words_per_s": roof_best / 64,
                          "threads": numba.get_num_threads(), "scheme": best["scheme"],
                          "schemes": best["schemes"],
                          "spread": max(roof["bmacs_per_s"], roof_after["bmacs_per_s"])
                          / min(roof["bmacs_per_s"], roof_after["bmacs_per_s"]) - 1}
    result["counting"] = {"scheme": counting_scheme(), "instruction_set": instruction_set()}
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
        samples = interleaved(fns, batch_repeats(repeats, batch))
        entry: dict[str, Any] = {"batch": batch, "engine": _stats(samples[0])}
        entry["engine"]["images_per_s"] = batch / entry["engine"]["median_s"]
        if compare_model is not None:
            entry["torch"] = _stats(samples[1])
            entry["torch"]["images_per_s"] = batch / entry["torch"]["median_s"]
            entry["speedup"] = entry["torch"]["median_s"] / entry["engine"]["median_s"]
        result[label] = entry

    if baseline is not None:
        base = as_program(baseline)
        result["pruned"] = compare_latency(program, base, latency_batch, repeats)
        t_p = op_times(program, latency_batch, repeats)
        t_b = op_times(base, latency_batch, repeats)
        result["pruned"].update(ops=t_p, baseline_ops=t_b)
        for key, kinds in (("binary", ("bconv",)), ("full_precision", ("fconv",)),
                           ("other", None)):
            a = _sum_kinds(t_p, kinds)
            b = _sum_kinds(t_b, kinds)
            result["pruned"][f"{key}_s"] = a
            result["pruned"][f"baseline_{key}_s"] = b
            result["pruned"][f"{key}_ratio"] = a / b if b else float("nan")
    result["kernels_compiled_here"] = kernels_compiled_here()
    return result


def format_benchmark(result: dict[str, Any]) -> str:
    """Render :func:`benchmark`'s dict as a plain-text report."""
    m = result["machine"]
    lines = [f"machine: {m['cpu']} ({isa_label(m['isa'])}), {m['logical_cores']} "
             "logical cores, numba threads "
             f"{m['numba_threads']}, torch threads {m['torch_threads']}",
             f"cpu flags: {' '.join(m.get('cpu_flags', [])) or 'unknown'}",
             f"input {tuple(result['input_shape'])}, {result['bops']:,} binary MACs per image"]
    if "file_bytes" in result:
        lines.append(f"file {result['file_bytes']:,} bytes (binary/8 + float*4 = "
                     f"{result['ideal_bytes']:,} bytes)")
    roof, kern = result["roofline"], result["kernel"]
    lines += ["", f"{'kernel (batch ' + str(kern['batch']) + ')':<28}{'GbMAC/s':>10}{'ms':>10}"]
    for r in kern["layers"]:
        name = r["op"] + (" (patch matrix)" if r.get("dense") else "")
        lines.append(f"  {name:<26}{r['bmacs_per_s'] / 1e9:>10.1f}{r['seconds'] * 1e3:>10.3f}")
    lines.append(f"  {'all binary layers':<26}{kern['bmacs_per_s'] / 1e9:>10.1f}")
    lines.append(f"  {'roofline (' + roof['scheme'] + ')':<26}{roof['bmacs_per_s'] / 1e9:>10.1f}"
                 f"   kernel = {100 * kern['fraction_of_roofline']:.0f}% of roofline; "
                 + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in roof["schemes"].items())
                 + f"; engine: {result['counting']['instruction_set']}, "
                 f"{result['counting']['scheme']} counting")
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
        if "binary_s" in p:
            lines.append("  op by op (medians inside a run):")
            for key, label in (("binary", "binary layers"),
                               ("full_precision", "full-precision layers"),
                               ("other", "pooling, packing, adds")):
                lines.append(f"    {label:<24}{p[key + '_s'] * 1e3:8.3f} ms / "
                             f"{p['baseline_' + key + '_s'] * 1e3:.3f} ms = "
                             f"{p[key + '_ratio']:.3f}")
    if result.get("kernels_compiled_here"):
        lines += ["", COMPILED_HERE_NOTE]
    return "\n".join(lines)
