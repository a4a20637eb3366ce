"""The evidence of a sweep: the statistics and verdicts its pages print, from its cell records.

- tables: mean and SD over seeds of every (row, reduction), the premise check, p_l, and the
  baselines' convergence, correlation, threshold and interval tables (:func:`aggregate`);
- comparisons: the trial's questions (:data:`QUESTIONS`, paired tests), the recommendation
  of ``bnnprune run``'s default, the paper policy's retraining;
- a pre-registered design (:func:`design_results`): the plateau verdict of every baseline,
  the primaries (:data:`PRIMARIES`, Holm-corrected), the exploratory comparisons
  (:data:`EXPLORATORY`, uncorrected) and the default method chosen on validation accuracy.

A primary is a list of (A row, B row) pairs of sweep table rows (``target+wff``, ``scratch``
...). For every seed, its contrast is the mean of ``acc(A) - acc(B)`` over those pairs and
over the sweep's BOPs reductions; a seed counts only once every cell it needs is finished.
The contrasts of all seeds are tested against 0 with a paired t test, the p values of the
sweep's primaries are Holm-adjusted together, and the smallest detectable difference (80%
power) is computed from the observed SD of the contrasts at the level Holm's first step
uses (alpha / number of primaries), the strictest any primary faces.

Nothing here trains or schedules: :mod:`bnnprune.sweep` computes the cells, this module
reads their records (plain dicts, as :func:`bnnprune.records.save_record` writes them).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bnnprune.config import SCRATCH_ROW, ConfigError, SweepConfig
from bnnprune.prune.methods import parse_method
from bnnprune.prune.resolve import sweep_methods
from bnnprune.records import machine_label
from bnnprune.stats import detectable_difference, holm, paired_difference, paired_test

__all__ = ["ALPHA", "CONTROL_ROW", "EXPLORATORY", "POWER", "PRIMARIES", "QUESTIONS", "Primary",
           "QuestionVerdict", "aggregate", "analyze", "check_primaries", "convergence",
           "default_method", "design_results", "exploratory", "held_before_interval", "identical",
           "lsq_slope", "paired_comparisons", "paper_retraining", "plateau_verdict",
           "pooled_plateau", "question_verdicts", "recommendation", "required_rows", "row_key",
           "seed_slope_verdict"]

CONTROL_ROW = " (paper control)"  # the row suffix of the paper policy's uniform control


def row_key(rec: dict[str, Any]) -> str:
    """The row of a prune, scratch or control record in the tables: its method, marked
    when the cell retrained from scratch; ``scratch`` for uniform widths from scratch and
    ``scratch-target`` for another policy's widths; ``uniform+wff (paper control)``."""
    if rec["kind"] == "scratch":
        m = rec["method_key"]
        return "scratch" if not m else f"scratch-{m.split('+', 1)[0]}"
    if rec["kind"] == "control":
        return f"{rec['method_key']}{CONTROL_ROW}"
    key = rec["method_key"]
    return key + SCRATCH_ROW if rec.get("retrain") == "scratch" else key


# ---------------------------------------------------------------- baselines


def convergence(history: list[dict[str, Any]], track_last: int) -> dict[str, Any]:
    """The plateau criterion of a baseline: accuracy change over the ``track_last`` epochs
    before the flip interval (on the validation split where the data has one, else on the
    test set, as older records did), and max/min of each layer's per-epoch flip ratio
    inside it (a flat interval is near 1; a learning rate decaying to 0 gives ~100)."""
    n = len(history)
    start = n - track_last  # index of the first epoch inside the interval
    split = "val_acc" if history and "val_acc" in history[0] else "test_acc"
    before = [h[split] for h in history[max(0, start - track_last):start]]
    inside = history[start:]
    flatness: dict[str, float] = {}
    for layer in (inside[0].get("flip_ratio") or {}) if inside else {}:
        vals = [h["flip_ratio"][layer] for h in inside]
        lo = min(vals)
        flatness[layer] = max(vals) / lo if lo > 0 else float("inf")
    out = {
        "acc_change_before_interval": (before[-1] - before[0]) if len(before) > 1 else None,
        "epochs_compared": len(before),
        "interval_epochs": len(inside),
        "flip_ratio_max_over_min": flatness,
        "worst_flatness": max(flatness.values()) if flatness else None,
        "test_acc_by_epoch": [h["test_acc"] for h in history],
        "lr_by_epoch": [h.get("lr") for h in history],
    }
    if split == "val_acc":  # older records carry neither key: their pages stay as they were
        out["split"] = "val"
        out["val_acc_by_epoch"] = [h["val_acc"] for h in history]
        out["train_acc_by_epoch"] = [h["train_acc"] for h in history]
    return out

def plateau_verdict(conv: dict[str, Any], max_rise_pp: float | None,
                    max_flatness: float | None) -> dict[str, Any] | None:
    """Whether a baseline's :func:`convergence` meets the pre-registered plateau criterion:
    accuracy rose by less than ``max_rise_pp`` points over the epochs before the flip
    interval, and every layer's per-epoch flip ratio inside it varies by less than
    ``max_flatness`` (max/min). None when the sweep sets no criterion."""
    if max_rise_pp is None and max_flatness is None:
        return None
    change = conv.get("acc_change_before_interval")
    flat = conv.get("worst_flatness")
    rise_ok = max_rise_pp is None or (change is not None and 100 * change < max_rise_pp)
    flat_ok = max_flatness is None or (flat is not None and flat < max_flatness)
    return {"rise_pp": None if change is None else 100 * change, "worst_flatness": flat,
            "rise_ok": rise_ok, "flat_ok": flat_ok, "passed": rise_ok and flat_ok}


def lsq_slope(values: Sequence[float]) -> float:
    """Least-squares slope of equally spaced values, in their unit per step (a trend that
    one noisy epoch cannot fake, unlike the change between two single epochs)."""
    n = len(values)
    if n < 2:
        raise ValueError(f"a slope needs at least 2 values, got {n}")
    x_mean, y_mean = (n - 1) / 2, statistics.fmean(values)
    return (sum((i - x_mean) * (v - y_mean) for i, v in enumerate(values))
            / sum((i - x_mean) ** 2 for i in range(n)))


def held_before_interval(conv: dict[str, Any], epochs: int) -> list[float] | None:
    """Validation accuracy of the ``epochs`` epochs just before a baseline's flip interval
    (None when its record has no validation split or fewer epochs before the interval)."""
    accs = conv.get("val_acc_by_epoch") or []
    start = len(accs) - conv.get("interval_epochs", 0)
    return accs[start - epochs:start] if accs and start >= epochs else None


def seed_slope_verdict(conv: dict[str, Any], max_slope_pp: float, max_flatness: float | None,
                       epochs: int) -> dict[str, Any]:
    """One seed's figures under the seed-mean-slope rule, for the page only (they gate
    nothing): its own slope before the interval and worst layer flatness, and whether they
    alone would meet the recipe's thresholds."""
    held = held_before_interval(conv, epochs)
    slope = None if held is None else 100 * lsq_slope(held)
    flat = conv.get("worst_flatness")
    slope_ok = slope is not None and slope < max_slope_pp
    flat_ok = max_flatness is None or (flat is not None and flat < max_flatness)
    return {"slope_pp": slope, "worst_flatness": flat, "slope_ok": slope_ok,
            "flat_ok": flat_ok, "passed": slope_ok and flat_ok}


def pooled_plateau(convs: dict[int, dict[str, Any]], max_slope_pp: float,
                   max_flatness: float | None, epochs: int, n_seeds: int) -> dict[str, Any]:
    """The recipe's plateau verdict on the seed mean: the least-squares slope (pp per epoch)
    of the validation accuracy averaged over the baselines present, over the ``epochs``
    epochs before the flip interval, and per layer the seed mean of the flip ratio's
    max/min inside the interval (records keep each seed's max/min, not its per-epoch
    ratios). Provisional while fewer than ``n_seeds`` baselines are in."""
    held = {seed: h for seed, c in sorted(convs.items())
            if (h := held_before_interval(c, epochs)) is not None}
    mean_curve = [statistics.fmean(h[i] for h in held.values()) for i in range(epochs)] \
        if held else []
    slope = 100 * lsq_slope(mean_curve) if mean_curve else None
    layers: dict[str, list[float]] = {}
    for seed in held:
        for layer, v in (convs[seed].get("flip_ratio_max_over_min") or {}).items():
            layers.setdefault(layer, []).append(v)
    flatness = {layer: statistics.fmean(v) for layer, v in layers.items()}
    worst = max(flatness.values()) if flatness else None
    slope_ok = slope is not None and slope < max_slope_pp
    flat_ok = max_flatness is None or (worst is not None and worst < max_flatness)
    span: list[int] = []  # the held epochs read, numbered from 1
    if held:
        c = convs[next(iter(held))]
        last = len(c["val_acc_by_epoch"]) - c["interval_epochs"]
        span = [last - epochs + 1, last]
    return {"seeds": sorted(held), "of": n_seeds, "provisional": len(held) < n_seeds,
            "epochs": span,
            "mean_val_acc": mean_curve, "slope_pp": slope, "flatness": flatness,
            "worst_flatness": worst, "slope_ok": slope_ok, "flat_ok": flat_ok,
            "passed": slope_ok and flat_ok}


# ---------------------------------------------------------------- tables


def _ms(vals: list[float]) -> dict[str, float]:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0, "mean": float("nan"), "std": float("nan")}
    return {"n": len(vals), "mean": statistics.fmean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}

def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every (method, reduction) and the premise."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)
    base = by_kind.get("baseline", [])
    base_bops = {r["seed"]: r["bops"] for r in base}
    rows: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in [*by_kind.get("prune", []), *by_kind.get("scratch", []),
              *by_kind.get("control", [])]:
        key = row_key(r)
        rows.setdefault((key, r["target_reduction"]), []).append(r)
    table = []
    for (key, target), rs in rows.items():
        entry = {
            "method_key": key, "method": rs[0].get("label", rs[0].get("method")),
            "target_reduction": target,
            "seeds": sorted(r["seed"] for r in rs),
            "test_acc": _ms([r["test_acc"] for r in rs]),
            "bops_reduction": _ms([1 - r["bops"] / base_bops[r["seed"]] for r in rs]),
            "bops": _ms([r["bops"] for r in rs]),
            "memory_bytes": _ms([r["memory_bytes"] for r in rs]),
            "channels_by_seed": {str(r["seed"]): r["channels"] for r in rs},
            "epochs": sorted({r["epochs"] for r in rs if r.get("epochs")}),
        }
        for b in ("batch1", "batch64"):
            sp = [r["speed"][b] for r in rs if r.get("speed")]
            entry[f"latency_ratio_{b}"] = _ms([s["latency_ratio"] for s in sp])
            entry[f"bops_ratio_{b}"] = _ms([s["bops_ratio"] for s in sp])
        agree = [r["speed"]["engine_agreement"] for r in rs if r.get("speed")]
        entry["engine_agreement_min"] = min(agree) if agree else None
        table.append(entry)
    table.sort(key=lambda e: (e["method_key"], e["target_reduction"] or 0))
    premise: dict[str, Any] = {}
    prem = by_kind.get("premise", [])
    if prem:
        percents = prem[0]["percents"]
        premise = {"percents": percents,
                   "unflipped_acc": _ms([r["unflipped_acc"] for r in prem]),
                   "flipped_in_window": _ms([r["flipped_in_window"] for r in prem]),
                   "curves": {}}
        for choice in prem[0]["curves"]:
            premise["curves"][choice] = [
                _ms([r["curves"][choice][i] for r in prem]) for i in range(len(percents))
            ]
        # each choice against random flips of the same count, paired by seed
        if "random" in prem[0]["curves"]:
            premise["vs_random"] = {
                choice: [paired_test([r["curves"][choice][i] for r in prem],
                                     [r["curves"]["random"][i] for r in prem])
                         for i in range(len(percents))]
                for choice in prem[0]["curves"] if choice != "random"}
    p_layers: dict[str, list[float]] = {}
    for r in base:
        for name, v in ((r.get("sensitivity") or {}).get("layers") or {}).items():
            p_layers.setdefault(name, []).append(v["p"])
    return {
        "baseline": {"test_acc": _ms([r["test_acc"] for r in base]),
                     "bops": _ms([r["bops"] for r in base]),
                     "memory_bytes": _ms([r["memory_bytes"] for r in base]),
                     "channels": base[0]["channels"] if base else {}},
        "budget": {"test_acc": _ms([r["test_acc"] for r in by_kind.get("budget", [])])},
        "table": table,
        "premise": premise,
        "p_layers": {n: _ms(v) for n, v in p_layers.items()},
        "paired": paired_comparisons(records),
        "recommendation": recommendation(records),
        "convergence": {str(r["seed"]): r["convergence"] for r in base if r.get("convergence")},
        "correlation": _mean_correlation(base),
        "thresholds": _mean_thresholds(base),
        "intervals": _mean_thresholds(base, "intervals"),
        "paper_rounds": _paper_rounds(by_kind.get("prune", [])),
        "paper_retraining": paper_retraining(by_kind.get("prune", [])),
        "machines": _machines(records),
        "cells": _cell_times(records),
        "cell_seconds": sum(_compute_seconds(r) for r in records),
    }

# The questions the trial answers: (A, B) pairs compared seed by seed at equal BOPs.
QUESTIONS = (
    ("does flip-proportional allocation beat uniform width?", "target+{c}", "uniform+{c}"),
    ("does WFF channel choice beat random?", "{a}+wff", "{a}+random"),
    ("does WFF channel choice beat latent magnitude?", "{a}+wff", "{a}+magnitude"),
    ("does |w|/(1+flips) beat magnitude?", "{a}+flip_magnitude", "{a}+magnitude"),
    ("does |w|/(1+flips) beat WFF?", "{a}+flip_magnitude", "{a}+wff"),
    ("does pruning a trained model beat uniform width from scratch?", "uniform+magnitude",
     "scratch"),
)

def _accuracies(records: list[dict[str, Any]],
                field: str = "test_acc") -> dict[tuple[str, Any], dict[int, float]]:
    """Test (or validation: ``field="val_acc"``) accuracy of every prune, scratch and control
    cell by (row, target reduction), then seed."""
    acc: dict[tuple[str, Any], dict[int, float]] = {}
    for r in records:
        if r["kind"] in ("prune", "scratch", "control") and r.get(field) is not None:
            acc.setdefault((row_key(r), r["target_reduction"]), {})[r["seed"]] = r[field]
    return acc

def paired_comparisons(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per question, reduction and variant: the paired difference in test accuracy (A - B)
    over the seeds where both were measured, with its 95% interval, paired SD and p."""
    acc = _accuracies(records)
    criteria = sorted({k.split("+", 1)[1] for k, _ in acc if "+" in k})
    out = []
    for question, a_t, b_t in QUESTIONS:
        variants = ([{"c": c} for c in criteria] if "{c}" in a_t
                    else [{"a": a} for a in ("target", "uniform")] if "{a}" in a_t else [{}])
        for v in variants:
            a_key, b_key = a_t.format(**v), b_t.format(**v)
            for (key, red), a_seeds in sorted(acc.items(), key=lambda kv: str(kv[0])):
                if key != a_key or (b_key, red) not in acc:
                    continue
                b_seeds = acc[(b_key, red)]
                seeds = sorted(set(a_seeds) & set(b_seeds))
                if not seeds:
                    continue
                d = paired_test([a_seeds[s] for s in seeds], [b_seeds[s] for s in seeds])
                out.append({"question": question, "a": a_key, "b": b_key, "reduction": red,
                            "seeds": seeds, **d})
    return out

def identical(d: dict[str, Any]) -> bool:
    """Every paired seed of a paired difference gave exactly the same accuracy (a zero-width
    interval at 0): A and B kept the same channels."""
    return d["mean"] == 0 and (d["n"] == 1 or d["lo"] == d["hi"] == 0)


@dataclass(frozen=True)
class QuestionVerdict:
    """What the paired comparisons of one of :data:`QUESTIONS` say together: which resolve
    for A or against it, how many stay resolved after Holm's correction within the
    question, and the smallest differences the designs detect."""

    question: str
    comparisons: list[dict[str, Any]]  # its rows of :func:`paired_comparisons`
    wins: list[dict[str, Any]]  # resolved, A better
    losses: list[dict[str, Any]]  # resolved, A worse
    seeds: int  # the fewest paired seeds of any comparison
    kept: int  # comparisons with a Holm-adjusted p below ALPHA (older results: no p)
    identical: bool  # A and B equal on every seed of every comparison
    detectable: list[float]  # smallest detectable differences (80% power), where computable


def question_verdicts(paired: list[dict[str, Any]]) -> list[QuestionVerdict]:
    """Each question of :func:`paired_comparisons`' rows (in their order) with its verdict."""
    by_q: dict[str, list[dict[str, Any]]] = {}
    for d in paired:
        by_q.setdefault(d["question"], []).append(d)
    out = []
    for q, ds in by_q.items():
        adjusted = holm([d.get("p", math.nan) for d in ds])
        dd = [detectable_difference(d["sd"], d["n"]) for d in ds
              if d.get("sd") is not None and d["n"] >= 2]
        out.append(QuestionVerdict(
            question=q, comparisons=ds,
            wins=[d for d in ds if d["resolved"] and d["mean"] > 0],
            losses=[d for d in ds if d["resolved"] and d["mean"] < 0],
            seeds=min(d["n"] for d in ds),
            kept=sum(p < ALPHA for p in adjusted if not math.isnan(p)),
            identical=all(identical(d) for d in ds),
            detectable=[x for x in dd if not math.isnan(x)]))
    return out


def recommendation(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean accuracy ranks over the reductions of every row measured at every reduction
    (pruning methods at a BOPs target and uniform width from scratch), the pruning method
    ranked best with its paired differences against every other row, and what
    ``bnnprune run``'s default should be: the simplest method (least data needed) that no
    comparison resolves from the best-ranked one. None before two rows are comparable."""
    acc: dict[str, dict[float, dict[int, float]]] = {}
    for (m, red), by_seed in _accuracies(records).items():
        if red is not None:
            acc.setdefault(m, {})[red] = by_seed
    reds = sorted({red for by in acc.values() for red in by})
    full = {m: by for m, by in acc.items() if set(by) == set(reds)}
    if len(full) < 2:
        return None
    ranks: dict[str, list[int]] = {m: [] for m in full}
    for red in reds:
        order = sorted(full, key=lambda m: (-statistics.fmean(full[m][red].values()), m))
        for i, m in enumerate(order, 1):
            ranks[m].append(i)
    mean_rank = {m: statistics.fmean(v) for m, v in ranks.items()}
    pruning = sorted(m for m in full if "+" in m)  # methods, not networks from scratch
    best = min(pruning, key=lambda m: mean_rank[m])
    against = []
    for m in sorted(full):
        for red in reds if m != best else []:
            seeds = sorted(set(full[best][red]) & set(full[m][red]))
            d = paired_difference([full[best][red][s] for s in seeds],
                                  [full[m][red][s] for s in seeds])
            against.append({"b": m, "reduction": red, "seeds": seeds, **d})
    # a tie goes to the simpler method: among the pruning methods no comparison resolves
    # from the best-ranked one, the one needing the least data (no flip counts), then rank
    tied = [m for m in pruning if m == best or not any(
        d["resolved"] for d in against if d["b"] == m)]
    chosen = min(tied, key=lambda m: (len(parse_method(m).needs), mean_rank[m], m))
    return {"method": chosen, "best_ranked": best, "tied": tied,
            "mean_rank": mean_rank[chosen], "reductions": reds, "mean_ranks": mean_rank,
            "against": against}

def _paper_rounds(prune: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Round by round records of the paper policy, per row (retraining) and seed."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(prune, key=lambda r: r["seed"]):
        if (r["method_key"] or "").startswith("paper+"):
            out.setdefault(row_key(r), {})[str(r["seed"])] = r.get("rounds")
    return out

def paper_retraining(prune: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fine-tuning minus retraining from scratch in the paper policy's first round, paired by
    seed: both prune the seed's baseline by its own p_l (the same plan), so only the
    retraining differs. Also how many rounds each ran and after how many epochs."""
    rounds = _paper_rounds(prune)
    out = []
    for key in sorted(rounds):
        fine, scratch = rounds[key], rounds.get(key + SCRATCH_ROW)
        if key.endswith(SCRATCH_ROW) or not scratch:
            continue
        seeds = sorted((s for s in set(fine) & set(scratch) if fine[s] and scratch[s]), key=int)
        ft = [fine[s][0] for s in seeds]
        sc = [scratch[s][0] for s in seeds]
        out.append({
            "method": key, "seeds": [int(s) for s in seeds],
            "diff": paired_difference([r["test_acc"] for r in ft], [r["test_acc"] for r in sc]),
            "epochs": [ft[0].get("epochs"), sc[0].get("epochs")] if seeds else [None, None],
            "bops_equal": all(a["bops"] == b["bops"] for a, b in zip(ft, sc, strict=True)),
            "rounds": [sorted(len(r) for r in by.values() if r) for by in (fine, scratch)],
        })
    return out

def _mean_correlation(base: list[dict[str, Any]]) -> dict[str, Any]:
    layers: dict[str, dict[str, list[float]]] = {}
    for r in base:
        for name, c in (r.get("correlation") or {}).items():
            for k, v in c.items():
                layers.setdefault(name, {}).setdefault(k, []).append(v)
    return {n: {k: _ms(v) for k, v in d.items()} for n, d in layers.items()}

def _mean_thresholds(base: list[dict[str, Any]], field: str = "thresholds") -> dict[str, Any]:
    """Mean over seeds of a baseline table keyed by flip threshold (or interval length)."""
    out: dict[str, Any] = {}
    for r in base:
        for t, v in (r.get(field) or {}).items():
            e = out.setdefault(t, {"p": {}, "paper_reduction": []})
            e["paper_reduction"].append(v["paper_reduction"])
            for n, p in v["p"].items():
                e["p"].setdefault(n, []).append(p)
    return {t: {"paper_reduction": _ms(e["paper_reduction"]),
                "p": {n: _ms(v) for n, v in e["p"].items()}} for t, e in out.items()}

def _compute_seconds(rec: dict[str, Any]) -> float:
    """A cell's compute: its wall time, or its phase's training time when the record was
    rebuilt from a phase trained earlier (baselines)."""
    return max(rec.get("seconds") or 0.0, rec.get("train_seconds") or 0.0)

def _cell_times(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every cell's compute time and machine, for the page."""
    return [{"cell": r["folder"].split("/", 1)[-1], "seed": r["seed"],
             "seconds": _compute_seconds(r),
             "machine": machine_label(r["machine"]) if r.get("machine") else None}
            for r in records if r.get("folder")]

def _machines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every machine that computed cells, with its cell count and compute time."""
    seen: dict[str, dict[str, Any]] = {}
    for r in records:
        m = r.get("machine")
        if not m:
            continue
        label = machine_label(m)
        e = seen.setdefault(label, {"machine": label, "cells": 0, "seconds": 0.0})
        e["cells"] += 1
        e["seconds"] += _compute_seconds(r)
    return sorted(seen.values(), key=lambda e: e["machine"])


# ---------------------------------------------------------------- pre-registered primaries


ALPHA = 0.05  # family-wise error rate of the primaries (two-sided)
POWER = 0.8  # for the smallest detectable difference


@dataclass(frozen=True)
class Primary:
    """One pre-registered comparison: the mean over ``pairs`` of A minus B, per seed."""

    label: str  # P1, P2, ...
    question: str
    a_name: str  # how the page names the A side and the B side
    b_name: str
    pairs: tuple[tuple[str, str], ...]


PRIMARIES: dict[str, Primary] = {
    "allocation": Primary(
        "P1", "Do flip-guided layer widths beat uniform widths at the same BOPs?",
        "flip-guided widths", "uniform widths",
        (("target+wff", "uniform+wff"), ("scratch-target", "scratch"))),
    "channel_choice": Primary(
        "P2", "Inside the flip-guided widths, does WFF pick better channels than latent "
        "magnitude?", "WFF channels", "magnitude channels",
        (("target+wff", "target+magnitude"),)),
    "prune_vs_scratch": Primary(
        "P3", "Does pruning a trained network beat training the same widths from scratch "
        "(same total epochs)?", "pruned and fine-tuned", "trained from scratch",
        (("target+wff", "scratch-target"), ("uniform+wff", "scratch"))),
}


def required_rows(names: Sequence[str]) -> set[str]:
    """Every table row the named primaries read (``KeyError`` for an unknown name)."""
    return {row for n in names for pair in PRIMARIES[n].pairs for row in pair}


def _contrasts(primary: Primary, acc: dict[tuple[str, Any], dict[int, float]],
               reductions: Sequence[float]) -> dict[int, tuple[float, float]]:
    """Per seed with every needed cell: (mean of the A sides, mean of the B sides)."""
    seeds: set[int] | None = None
    for a, b in primary.pairs:
        for r in reductions:
            have = set(acc.get((a, r), {})) & set(acc.get((b, r), {}))
            seeds = have if seeds is None else seeds & have
    out = {}
    for s in sorted(seeds or ()):
        a_vals = [acc[(a, r)][s] for a, _ in primary.pairs for r in reductions]
        b_vals = [acc[(b, r)][s] for _, b in primary.pairs for r in reductions]
        out[s] = (statistics.fmean(a_vals), statistics.fmean(b_vals))
    return out


def analyze(acc: dict[tuple[str, Any], dict[int, float]], names: Sequence[str],
            reductions: Sequence[float], alpha: float = ALPHA,
            power: float = POWER) -> list[dict[str, Any]]:
    """The named primaries tested on ``acc`` (test accuracy by (row, reduction), then
    seed): per primary the seeds used, the mean contrast with its 95% interval, the paired
    SD, the raw and Holm-adjusted p values, whether it is resolved at ``alpha`` after
    Holm, and the smallest difference detectable with ``power`` at level alpha / m."""
    rows = []
    for name in names:
        pr = PRIMARIES[name]
        by_seed = _contrasts(pr, acc, reductions)
        seeds = sorted(by_seed)
        test = paired_test([by_seed[s][0] for s in seeds], [by_seed[s][1] for s in seeds])
        rows.append({"name": name, "label": pr.label, "question": pr.question,
                     "a": pr.a_name, "b": pr.b_name, "pairs": [list(p) for p in pr.pairs],
                     "seeds": seeds, "contrast_by_seed": {str(s): by_seed[s][0] - by_seed[s][1]
                                                          for s in seeds}, **test})
    adjusted = holm([r["p"] for r in rows])
    level = alpha / max(1, len(rows))
    for r, p_holm in zip(rows, adjusted):
        r["p_holm"] = p_holm
        r["resolved_holm"] = bool(not math.isnan(p_holm) and p_holm < alpha)
        r["detectable"] = (detectable_difference(r["sd"], r["n"], level, power)
                           if r["n"] >= 2 else math.nan)
        r["alpha"], r["power"], r["level"] = alpha, power, level
    return rows


def _rows_of(cfg: SweepConfig) -> set[str]:
    """The table rows (:func:`row_key`) the sweep's cells produce at its reductions."""
    s = cfg.sweep
    rows = {m.spec for m in sweep_methods(s) if not m.policy.iterates}
    if s.scratch:
        rows |= {"scratch" if a == "uniform" else f"scratch-{a}" for a in s.scratch_policies}
    return rows

def check_primaries(cfg: SweepConfig) -> None:
    """ConfigError before anything trains when a primary is unknown or its rows are not
    among the sweep's cells."""
    unknown = [n for n in cfg.sweep.primaries if n not in PRIMARIES]
    if unknown:
        raise ConfigError(f"unknown sweep.primaries {unknown}; choose from "
                          f"{', '.join(PRIMARIES)}")
    missing = sorted(required_rows(cfg.sweep.primaries) - _rows_of(cfg))
    if missing:
        raise ConfigError(f"sweep.primaries compare rows this sweep does not compute: "
                          f"{', '.join(missing)} (add the methods to sweep.methods; scratch "
                          "rows need sweep.scratch and sweep.scratch_policies)")

def design_results(cfg: SweepConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The plateau verdict of every baseline and the pre-registered primaries (only when
    the sweep sets a criterion / primaries: older pages stay as they were)."""
    s = cfg.sweep
    out: dict[str, Any] = {}
    convs = {r["seed"]: r["convergence"] for r in records
             if r["kind"] == "baseline" and r.get("convergence")}
    if s.plateau_rule == "seed-mean-slope":
        out["plateau"] = {str(seed): seed_slope_verdict(c, s.plateau_max_slope_pp,
                                                        s.plateau_max_flatness,
                                                        s.plateau_slope_epochs)
                          for seed, c in convs.items()}
        out["plateau_pooled"] = pooled_plateau(convs, s.plateau_max_slope_pp,
                                               s.plateau_max_flatness,
                                               s.plateau_slope_epochs, len(s.seeds))
    elif s.plateau_max_rise_pp is not None or s.plateau_max_flatness is not None:
        out["plateau"] = {
            str(r["seed"]): plateau_verdict(r["convergence"], s.plateau_max_rise_pp,
                                            s.plateau_max_flatness)
            for r in records if r["kind"] == "baseline" and r.get("convergence")}
    if s.primaries:
        failed = {int(k) for k, v in out.get("plateau", {}).items()
                  if s.plateau_gate and not v["passed"]}
        used = [r for r in records if r["seed"] not in failed]
        out["primaries"] = analyze(_accuracies(used), s.primaries, s.reductions)
        out["exploratory"] = exploratory(used, s.reductions)
        # bnnprune run's default is chosen on the validation split, never on the test set
        out["primaries_val"] = analyze(_accuracies(used, "val_acc"), s.primaries,
                                       s.reductions)
        out["default_method"] = default_method(out["primaries_val"])
    return out

def default_method(val_primaries: list[dict[str, Any]]) -> dict[str, Any]:
    """``bnnprune run``'s default method from the primaries on validation accuracy: the
    flip-guided allocation (target) only if it is resolved better than uniform widths, WFF
    channels only if resolved better than magnitude; a tie goes to the simpler choice
    (uniform widths, magnitude: neither needs flip data)."""
    by = {p["name"]: p for p in val_primaries}

    def wins(name: str) -> bool:
        p = by.get(name)
        return bool(p and p["resolved_holm"] and p["mean"] > 0)

    policy = "target" if wins("allocation") else "uniform"
    criterion = "wff" if wins("channel_choice") else "magnitude"
    return {"method": f"{policy}+{criterion}",
            "seeds": min((p["n"] for p in val_primaries), default=0)}

# Exploratory comparisons of a pre-registered sweep (A row, B row), at every reduction
EXPLORATORY = (
    ("target+wff", "uniform+wff"), ("scratch-target", "scratch"),
    ("target+wff", "scratch-target"), ("uniform+wff", "scratch"),
    ("target+wff", "target+random"), ("target+magnitude", "target+random"),
    ("target+magnitude", "uniform+wff"),
)

def exploratory(records: list[dict[str, Any]], reductions: list[float]) -> list[dict[str, Any]]:
    """Paired differences of the :data:`EXPLORATORY` rows at each reduction, and the paper
    policy against its uniform control at the paper's own reduction; not corrected for
    multiplicity (they are labelled exploratory)."""
    acc = _accuracies(records)
    pairs = [(a, b, r) for r in reductions for a, b in EXPLORATORY]
    pairs += [(k, f"uniform+{k.split('+', 1)[1]}{CONTROL_ROW}", None)
              for k, red in sorted(acc, key=str) if red is None and k.startswith("paper+")
              and not k.endswith(SCRATCH_ROW)]
    out = []
    for a, b, r in pairs:
        sa, sb = acc.get((a, r), {}), acc.get((b, r), {})
        seeds = sorted(set(sa) & set(sb))
        if not seeds:
            continue
        d = paired_difference([sa[x] for x in seeds], [sb[x] for x in seeds])
        out.append({"a": a, "b": b, "reduction": r, "seeds": seeds, **d})
    return out
