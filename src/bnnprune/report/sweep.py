"""The sweep's report (docs/results.md) and plots, generated from its results.json.

Every sentence with a number is computed here from the measurements; nothing is typed in by
hand, so a rerun with other settings rewrites the conclusions too.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from bnnprune.atomic import atomic_write_bytes
from bnnprune.config import SCRATCH_ROW, PruneConfig, model_label
from bnnprune.evidence import identical, question_verdicts
from bnnprune.report.plots import plt, save_figure

__all__ = ["plot_pareto", "plot_premise", "plot_speed", "render_sweep_report",
           "write_sweep_report"]

PAPER = "Li and Ren (ISQED 2020) report 20-40% fewer BOPs at a 0.5-1.0 pp accuracy drop"
CHOICE_LABELS = {
    "highest_wff": "highest WFF first",
    "lowest_wff": "lowest WFF first",
    "random": "random",
    "smallest_magnitude": "smallest latent magnitude first",
}


def _pct(ms: dict[str, float], digits: int = 2) -> str:
    if not ms or ms["n"] == 0:
        return "-"
    if ms["n"] == 1:
        return f"{100 * ms['mean']:.{digits}f}"
    return f"{100 * ms['mean']:.{digits}f} ± {100 * ms['std']:.{digits}f}"


def _methods(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Table rows grouped by method (alphabetical by key), each sorted by BOPs reduction."""
    order = [e["method_key"] for e in results["table"]]
    groups: dict[str, list[dict[str, Any]]] = {k: [] for k in dict.fromkeys(order)}
    for e in results["table"]:
        groups[e["method_key"]].append(e)
    for rows in groups.values():
        rows.sort(key=lambda e: e["bops_reduction"]["mean"])
    return groups


# ---------------------------------------------------------------- plots


def plot_pareto(results: dict[str, Any], path: str | Path) -> Path:
    """Accuracy vs BOPs (% of unpruned), one line per method, error bars = std over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    markers = "os^DvP*X"
    for i, (_, rows) in enumerate(_methods(results).items()):
        x = [100 * (1 - e["bops_reduction"]["mean"]) for e in rows]
        xe = [100 * e["bops_reduction"]["std"] for e in rows]
        y = [100 * e["test_acc"]["mean"] for e in rows]
        ye = [100 * e["test_acc"]["std"] for e in rows]
        ax.errorbar(x, y, yerr=ye, xerr=xe, marker=markers[i % len(markers)], capsize=3,
                    label=rows[0]["method"], linewidth=1.2, markersize=5)
    base = results["baseline"]["test_acc"]
    ax.axhline(100 * base["mean"], color="k", linestyle="--", linewidth=1,
               label=f"baseline ({results['config']['train']['epochs']} epochs)")
    ax.axhspan(100 * (base["mean"] - base["std"]), 100 * (base["mean"] + base["std"]),
               color="k", alpha=0.08)
    budget = results["budget"]["test_acc"]
    if budget["n"]:
        ax.errorbar([100], [100 * budget["mean"]], yerr=[100 * budget["std"]], marker="*",
                    color="k", markersize=11, capsize=3, linestyle="none",
                    label="unpruned, same total epochs")
    ax.set_xlabel("BOPs (% of unpruned)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs BOPs (mean ± std over {_n_seeds(results)} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    return save_figure(fig, path)


def plot_premise(results: dict[str, Any], path: str | Path) -> Path:
    """Accuracy after flipping x% of each layer's binary weights, chosen four ways."""
    prem = results["premise"]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    x = prem["percents"]
    for choice, pts in prem["curves"].items():
        ax.errorbar(x, [100 * p["mean"] for p in pts], yerr=[100 * p["std"] for p in pts],
                    marker="o", capsize=3, label=CHOICE_LABELS.get(choice, choice))
    ax.axhline(100 * prem["unflipped_acc"]["mean"], color="k", linestyle="--", linewidth=1,
               label="no weight flipped")
    flipped = 100 * prem["flipped_in_window"]["mean"]
    ax.axvline(flipped, color="grey", linestyle=":", linewidth=1,
               label=f"weights that flipped at all in the interval ({flipped:.1f}%)")
    ax.set_xlabel("binary weights whose sign is flipped (% of every layer)")
    ax.set_ylabel("test accuracy (%), no retraining")
    ax.set_title("Premise check: which weights can change sign without hurting?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    return save_figure(fig, path)


def plot_speed(results: dict[str, Any], path: str | Path) -> Path:
    """Packed-engine latency ratio (pruned / unpruned) against the BOPs ratio."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    markers = "os^DvP*X"
    lo = 1.0
    for i, (_, rows) in enumerate(_methods(results).items()):
        for b, fill in (("batch1", True), ("batch64", False)):
            pts = [(e[f"bops_ratio_{b}"]["mean"], e[f"latency_ratio_{b}"]["mean"])
                   for e in rows if e[f"latency_ratio_{b}"]["n"]]
            if not pts:
                continue
            lo = min(lo, *(min(p) for p in pts))
            ax.plot(*zip(*pts, strict=True), marker=markers[i % len(markers)], linestyle="none",
                    color=f"C{i}", markerfacecolor=f"C{i}" if fill else "none",
                    label=f"{rows[0]['method']} (batch {b[5:]})")
    lo = max(0.0, lo - 0.05)
    ax.plot([lo, 1.05], [lo, 1.05], color="k", linewidth=0.8, linestyle="--",
            label="latency ratio = BOPs ratio")
    ax.set_xlabel("BOPs ratio (pruned / unpruned)")
    ax.set_ylabel("packed-engine latency ratio")
    ax.set_title("Measured speed of the pruned models")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2)
    return save_figure(fig, path)


# ---------------------------------------------------------------- text


def _n_seeds(results: dict[str, Any]) -> int:
    return results["baseline"]["test_acc"]["n"]


def _by(results: dict[str, Any], key: str, target: float | None) -> dict[str, Any] | None:
    for e in results["table"]:
        if e["method_key"] == key and e["target_reduction"] == target:
            return e
    return None


def _compare(results: dict[str, Any], a: str, b: str, red: float) -> str:
    """A - B at one reduction as the paired table states it (the page's one statistic)."""
    d = next((d for d in results.get("paired") or []
              if d["a"] == a and d["b"] == b and d["reduction"] == red), None)
    return "not compared" if d is None else _paired_text(d)


def _paired_text(d: dict[str, Any]) -> str:
    """A paired difference as the page states it: mean, 95% interval, verdict."""
    if d["n"] < 2:
        return f"{_pp(d['mean'])} pp (1 paired seed so far: no interval)"
    return (f"{_pp(d['mean'])} pp, 95% interval [{_pp(d['lo'])}, {_pp(d['hi'])}] over "
            f"{d['n']} paired seeds: {_label(d)}")


def _headline(results: dict[str, Any]) -> list[str]:
    base = results["baseline"]["test_acc"]
    budget = results["budget"]["test_acc"]
    reds = sorted({e["target_reduction"] for e in results["table"]
                   if e["target_reduction"] is not None})
    out = [f"- Unpruned baseline: **{_pct(base)}%**"
           + (f"; trained for the same total epochs as the pruned models: **{_pct(budget)}%**."
              if budget["n"] else ".")]
    for r in reds:
        rows = [e for e in results["table"] if e["target_reduction"] == r]
        best = max(rows, key=lambda e: e["test_acc"]["mean"])
        acc = best["test_acc"]["mean"]
        line = (f"- **{r:.0%} fewer BOPs:** best {best['method']} {_pct(best['test_acc'])}% "
                f"({100 * (acc - base['mean']):+.2f} pp vs baseline")
        if budget["n"]:
            line += f", {100 * (acc - budget['mean']):+.2f} pp vs same budget"
        line += ")"
        for other in ("target+random", "target+magnitude"):
            if _by(results, "target+wff", r) and _by(results, other, r):
                line += (f"; target+wff minus {other}: "
                         f"{_compare(results, 'target+wff', other, r)}")
        out.append(line + ".")
    out += _ranks(results)
    for key, retrain in (("paper+wff", "fine-tuned"),
                         ("paper+wff" + SCRATCH_ROW, "retrained from scratch")):
        paper = _by(results, key, None)
        if not paper:
            continue
        red = paper["bops_reduction"]["mean"]
        diff = paper["test_acc"]["mean"] - base["mean"]
        rounds = [len(r or []) for r in ((results.get("paper_rounds") or {}).get(key) or {})
                  .values()]
        how = (f"iterated: {_span(rounds)} round{'s' if max(rounds) > 1 else ''}" if rounds
               else "one round")
        out.append(
            f"- **Paper policy, {retrain}** ({how}, threshold "
            f"{results['config']['prune']['threshold']}; {paper['test_acc']['n']} seeds): it "
            f"pruned only what its insensitive fractions allow, {100 * red:.1f}% "
            f"(± {100 * paper['bops_reduction']['std']:.1f}) fewer BOPs, at "
            f"{100 * diff:+.2f} pp vs baseline ({_pct(paper['test_acc'])}%), after "
            f"{_epochs(paper)} epochs in all."
        )
    out += _retraining_lines(results)
    out += _paper_verdict(results)
    out += _premise_verdict(results)
    out += _speed_verdict(results)
    out += _contradictions(results, reds)
    return out


def _span(values: list[int]) -> str:
    """``"3"`` or ``"2-4"``: the range of a few whole numbers."""
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _retraining_lines(results: dict[str, Any]) -> list[str]:
    """The paper policy fine-tuned vs retrained from scratch, on the same first-round plan."""
    out = []
    for c in results.get("paper_retraining") or []:
        if not c["seeds"]:
            continue
        ft, sc = c["rounds"]
        out.append(
            f"- **Fine-tuning vs retraining from scratch** ({c['method']}, first round: the same "
            f"plan{'' if c['bops_equal'] else ' (BOPs differ!)'}, {c['epochs'][0]} vs "
            f"{c['epochs'][1]} epochs in all): fine-tuned minus from scratch "
            f"{_paired_text(c['diff'])}. The policy ran {_span(ft)} rounds fine-tuned and "
            f"{_span(sc)} from scratch.")
    return out


def _contradictions(results: dict[str, Any], reds: list[float]) -> list[str]:
    """Plain statements where these measurements go against the paper's claims."""
    out = []
    worse = [r for r in reds if (w := _by(results, "target+wff", r)) and (
        x := _by(results, "target+random", r)) and w["test_acc"]["mean"] <= x["test_acc"]["mean"]
        and min(w["test_acc"]["n"], x["test_acc"]["n"]) >= 2]  # one seed decides nothing
    if worse:
        out.append(
            f"- **Flip frequency did not pick better channels than chance:** at "
            f"{', '.join(f'-{r:.0%}' for r in worse)} BOPs, removing the channels with the "
            "highest mean flip frequency was no more accurate than removing random channels "
            "(same BOPs, same allocation, same retraining; the paper does not say how it "
            "picks channels, highest mean WFF is the natural reading of its premise).")
    speeds = [1 - e["latency_ratio_batch1"]["mean"] for e in results["table"]
              if e["latency_ratio_batch1"]["n"] and e["target_reduction"] is not None
              and e["target_reduction"] <= 0.4]
    if speeds and max(speeds) < 0.15:
        out.append(
            f"- **Does not reproduce the paper's 15-40% runtime speedup:** at 20-40% fewer "
            f"BOPs the packed CPU engine ran at most {max(speeds):.0%} faster at batch 1 on "
            "this model (the paper timed larger networks on a TitanX GPU).")
    return out


def _ranks(results: dict[str, Any]) -> list[str]:
    """Mean rank (1 = most accurate) of every row present at every reduction, and the
    pruning method that ranks best against the default of ``bnnprune run``."""
    rec = results.get("recommendation")
    if not rec or len(rec["reductions"]) < 2:
        return []
    labels = {e["method_key"]: e["method"] for e in results["table"]}
    ranks = rec["mean_ranks"]
    order = sorted(ranks, key=lambda m: (ranks[m], m))
    out = [f"- **Mean rank over the {len(rec['reductions'])} reductions** (1 = most accurate "
           f"of {len(ranks)}): " + ", ".join(f"{labels.get(m, m)} {ranks[m]:.2f}"
                                              for m in order) + "."]
    wins = [d for d in rec["against"] if d["resolved"] and d["mean"] > 0]
    losses = [d for d in rec["against"] if d["resolved"] and d["mean"] < 0]
    from bnnprune.prune.resolve import resolve_prune

    default = resolve_prune(PruneConfig()).method.spec
    beaten = sorted({d["b"] for d in wins})
    best = rec.get("best_ranked", rec["method"])
    line = (f"- **Default method:** {best} ranks best among the pruning methods "
            f"(mean rank {ranks[best]:.2f}); paired against the other rows at each "
            f"reduction it is resolved better than "
            f"{', '.join(beaten) if beaten else 'none'}")
    if losses:
        line += f" and resolved worse than {', '.join(sorted({d['b'] for d in losses}))}"
    if best != rec["method"]:
        line += (f". No comparison resolves {len(rec['tied']) - 1} other pruning methods from "
                 f"it, and a tie goes to the method needing the least data: "
                 f"{rec['method']} (mean rank {rec['mean_rank']:.2f})")
    line += (f". `bnnprune run` defaults to {default}"
             + (" (the same)." if default == rec["method"] else
                f"; {rec['method']} would follow this evidence."))
    return [*out, line]


def _paper_verdict(results: dict[str, Any]) -> list[str]:
    """The largest target+wff reduction whose mean accuracy stays within 1.0 pp."""
    refs = [("the baseline", results["baseline"]["test_acc"])]
    if results["budget"]["test_acc"]["n"]:
        refs.append(("the unpruned model trained for the same epochs",
                     results["budget"]["test_acc"]))
    rows = [e for e in results["table"] if e["method_key"] == "target+wff"]
    if not rows:
        return []
    parts = []
    for name, ref in refs:
        ok = [e for e in rows if e["test_acc"]["mean"] - ref["mean"] >= -0.01]
        if not ok:
            parts.append(f"lost more than 1.0 pp against {name} at every reduction tried")
            continue
        e = max(ok, key=lambda e: e["bops_reduction"]["mean"])
        diff = e["test_acc"]["mean"] - ref["mean"]
        parts.append(f"reached {e['bops_reduction']['mean']:.0%} fewer BOPs within 1.0 pp of "
                     f"{name} ({100 * diff:+.2f} pp)")
    n = min(e["test_acc"]["n"] for e in rows)
    return [f"- **Against the paper:** {PAPER}. Here target+wff ({n} seed"
            f"{'' if n == 1 else 's'}) " + "; it ".join(parts) + "."]


def _premise_verdict(results: dict[str, Any]) -> list[str]:
    prem = results.get("premise") or {}
    curves = prem.get("curves") or {}
    if not {"highest_wff", "random", "lowest_wff"} <= set(curves):
        return []
    pcts = prem["percents"]
    i = min(range(len(pcts)), key=lambda j: abs(pcts[j] - 10))
    at = {c: curves[c][i]["mean"] for c in curves}
    order = sorted(at, key=lambda c: -at[c])
    line = (f"- **Premise check** (flip {pcts[i]:g}% of every binary layer's weights, no "
            f"retraining; unflipped {_pct(prem['unflipped_acc'])}%): "
            + ", ".join(f"{CHOICE_LABELS.get(c, c)} {100 * at[c]:.1f}%" for c in order) + ". ")
    vs = {c: v[i] for c, v in (prem.get("vs_random") or {}).items()}
    if {"highest_wff", "lowest_wff"} <= set(vs):  # paired by seed against random flips
        hi, lo = vs["highest_wff"], vs["lowest_wff"]
        line += (f"Against random flips of as many weights, paired by seed: highest WFF "
                 f"first {_paired_text(hi)}; lowest WFF first {_paired_text(lo)}")
        never = 1 - prem["flipped_in_window"]["mean"]
        if not lo["resolved"]:
            line += (f" (about {never:.0%} of the weights never flipped in the interval, so "
                     "most lowest-WFF picks are among weights that never flipped, as random "
                     "picks are)")
    else:
        holds = at["highest_wff"] > at["random"] > at["lowest_wff"]
        line += ("The premise's ordering holds in the means (highest WFF < random < lowest "
                 "WFF in damage)" if holds else "The premise's ordering (highest WFF < random "
                 "< lowest WFF in damage) does NOT hold in the means")
    if "smallest_magnitude" in at:
        better = at["smallest_magnitude"] > at["highest_wff"]
        line += ("; in the means the smallest latent magnitudes are safer still "
                 f"({100 * at['smallest_magnitude']:.1f}%)" if better else
                 "; in the means highest WFF is also safer than the smallest latent "
                 "magnitudes")
    return [line + "."]


def _speed_verdict(results: dict[str, Any]) -> list[str]:
    rows = [e for e in results["table"] if e["latency_ratio_batch1"]["n"]]
    if not rows:
        return []
    rows.sort(key=lambda e: e["bops_ratio_batch1"]["mean"])
    lo, hi = rows[0], rows[-1]
    line = (f"- **Packed-engine speed** (batch 1): pruned/unpruned latency "
            f"{lo['latency_ratio_batch1']['mean']:.2f} at BOPs ratio "
            f"{lo['bops_ratio_batch1']['mean']:.2f} ({lo['method']}) to "
            f"{hi['latency_ratio_batch1']['mean']:.2f} at {hi['bops_ratio_batch1']['mean']:.2f} "
            f"({hi['method']})")
    pick = _ops_pick(results)
    if pick is not None:
        base, ops = pick["speed"]["baseline_ops_batch64"], pick["speed"]["ops_batch64"]
        total = sum(o["median_s"] for o in base)
        i = max(range(len(base)), key=lambda j: base[j]["median_s"])
        if total > 0 and base[i]["median_s"] > 0:
            line += (f"; the op taking most of the unpruned time ({base[i]['op']}, "
                     f"{base[i]['median_s'] / total:.0%} at batch 64) ran at "
                     f"{ops[i]['median_s'] / base[i]['median_s']:.2f} of its unpruned time in "
                     f"{pick['label']} at -{pick['bops_reduction']:.0%} BOPs (op table below)")
    return [line + "."]


def _rounding(round_to: int | str) -> str:
    """How a config rounds channel counts, for the settings table."""
    from bnnprune.prune.policies import AUTO

    if round_to == AUTO:
        return "those the engine's kernels pay for"
    return f"multiples of {round_to}"


def _setup(results: dict[str, Any]) -> list[str]:
    cfg, ds = results["config"], results["dataset"]
    t, p = cfg["train"], cfg["prune"]
    seeds = cfg["sweep"]["seeds"]
    plateau = (f", then {t['plateau_epochs']} epochs at lr x{t['plateau_lr']:g} (plateau)"
               if t.get("plateau_epochs") else "")
    return [
        "| setting | value |",
        "|---|---|",
        f"| data | {ds['name']}: {ds['train']} training images (the same subset for every "
        f"seed), {ds['test']} test images, input {tuple(ds['input_shape'])} |",
        f"| model | {model_label(cfg['model'], '`')} |",
        f"| baseline | {t['epochs']} epochs, Adam lr {t['lr']:g}, {t['schedule']}{plateau}, "
        f"batch {t['batch_size']}; flips recorded over the last {t['track_last']} epochs |",
        f"| insensitive weight | flipped more than {p['threshold']} times in that interval |",
        f"| pruned models | pruned from their seed's baseline "
        f"({'then re-initialised' if p['from_scratch'] else 'keeping the surviving weights'}"
        f"; channel counts {_rounding(p['round_to'])}), retrained {p['retrain_epochs']} "
        f"epochs at lr {p['retrain_lr']:g} per round (the same for every method); the paper "
        f"policy iterates up to {p['max_rounds']} rounds |",
        f"| equal budget | the unpruned model trained {p['retrain_epochs']} more epochs the "
        "same way |",
        f"| seeds | {seeds} (initialisation, data order, random criterion) |",
        *(f"| machine | {m['machine']}: {m['cells']} cells, {m['seconds'] / 60:.1f} min |"
          for m in results.get("machines") or []),
        f"| compute | {results.get('cell_seconds', 0.0) / 3600:.2f} h of cell compute in all |",
    ]


def _accuracy_table(results: dict[str, Any]) -> list[str]:
    reds = sorted({e["target_reduction"] for e in results["table"]
                   if e["target_reduction"] is not None})
    head = "| method | " + " | ".join(f"-{r:.0%} BOPs" for r in reds) + " | own reduction |"
    lines = [head, "|---|" + "---:|" * (len(reds) + 1)]
    for _, rows in _methods(results).items():
        cells = []
        for r in reds:
            e = next((x for x in rows if x["target_reduction"] == r), None)
            cells.append(_pct(e["test_acc"]) if e else "")
        own = next((x for x in rows if x["target_reduction"] is None), None)
        own_s = (f"{_pct(own['test_acc'])} at -{100 * own['bops_reduction']['mean']:.1f}%"
                 if own else "")
        lines.append(f"| {rows[0]['method']} | " + " | ".join(cells) + f" | {own_s} |")
    base, budget = results["baseline"], results["budget"]
    lines += ["", f"Unpruned baseline: {_pct(base['test_acc'])}%"
              + (f"; unpruned model trained for the same total epochs: "
                 f"{_pct(budget['test_acc'])}%." if budget["test_acc"]["n"] else ".")]
    return lines


def _channels_table(results: dict[str, Any]) -> list[str]:
    """Channels kept per binary layer by the allocation policies (first seed), and how often
    the flip-proportional allocation equalled uniform scaling."""
    layers = list(results["baseline"].get("channels", {}))
    rows = [e for e in results["table"] if e["method_key"] in ("paper+wff", "target+wff",
                                                                "uniform+wff")]
    if not layers or not rows:
        return []
    seed = min(rows[0]["channels_by_seed"], key=int)
    lines = [f"Channels kept per binary layer (seed {seed}):", "",
             "| method | target | " + " | ".join(layers) + " |",
             "|---|---:|" + "---:|" * len(layers),
             "| unpruned | | " + " | ".join(str(results["baseline"]["channels"][n])
                                             for n in layers) + " |"]
    rows.sort(key=lambda e: (e["target_reduction"] or 0, e["method_key"]))
    for e in rows:
        ch = e["channels_by_seed"].get(seed, {})
        t = "own" if e["target_reduction"] is None else f"-{e['target_reduction']:.0%}"
        lines.append(f"| {e['method']} | {t} | " + " | ".join(str(ch.get(n, "")) for n in layers)
                     + " |")
    same = []
    for e in rows:
        u = _by(results, "uniform+wff", e["target_reduction"])
        if e["method_key"] == "target+wff" and u:
            seeds = set(e["channels_by_seed"]) & set(u["channels_by_seed"])
            n = sum(e["channels_by_seed"][s] == u["channels_by_seed"][s] for s in seeds)
            same.append(f"{n} of {len(seeds)} at -{e['target_reduction']:.0%}")
    if same:
        lines += ["", "Seeds where target + wff kept exactly the channel counts of uniform + wff "
                  "(the allocations coincide when the layers' p_l are nearly equal): "
                  + ", ".join(same) + "."]
    return lines


def _premise_table(results: dict[str, Any]) -> list[str]:
    prem = results.get("premise") or {}
    if not prem:
        return ["(not run)"]
    pcts = prem["percents"]
    lines = ["| weights chosen | " + " | ".join(f"{x:g}%" for x in pcts) + " |",
             "|---|" + "---:|" * len(pcts)]
    for choice, pts in prem["curves"].items():
        lines.append(f"| {CHOICE_LABELS.get(choice, choice)} | "
                     + " | ".join(_pct(p, 1) for p in pts) + " |")
    return lines


def _speed_table(results: dict[str, Any]) -> list[str]:
    rows = [e for e in results["table"] if e["latency_ratio_batch1"]["n"]]
    if not rows:
        return ["(speed not measured: sweep.speed = false)"]
    lines = ["| method | target | BOPs ratio | latency ratio, batch 1 | latency ratio, batch 64 "
             "| engine = PyTorch argmax |", "|---|---:|---:|---:|---:|---:|"]
    for _, group in _methods(results).items():
        for e in group:
            if not e["latency_ratio_batch1"]["n"]:
                continue
            t = "own" if e["target_reduction"] is None else f"-{e['target_reduction']:.0%}"
            agree = e["engine_agreement_min"]
            lines.append(
                f"| {e['method']} | {t} | {e['bops_ratio_batch1']['mean']:.3f} | "
                f"{e['latency_ratio_batch1']['mean']:.3f} ± {e['latency_ratio_batch1']['std']:.3f}"
                f" | {e['latency_ratio_batch64']['mean']:.3f} ± "
                f"{e['latency_ratio_batch64']['std']:.3f} | "
                f"{'-' if agree is None else f'{agree:.1%}'} |")
    return lines


def _ops_pick(results: dict[str, Any]) -> dict[str, Any] | None:
    """The most-pruned target+wff model of the first seed with an op-by-op timing."""
    recs = [r for r in results.get("records", []) if r.get("kind") == "prune"
            and (r.get("speed") or {}).get("ops_batch64")]
    if not recs:
        return None
    seed = min(r["seed"] for r in recs)
    recs = [r for r in recs if r["seed"] == seed]
    pick = [r for r in recs if r["method_key"] == "target+wff"] or recs
    r = max(pick, key=lambda r: r.get("bops_reduction") or 0)
    same = [o["op"] for o in r["speed"]["ops_batch64"]] == [
        o["op"] for o in r["speed"]["baseline_ops_batch64"]]
    return r if same else None


def _ops_table(results: dict[str, Any]) -> list[str]:
    """Op-by-op engine time of the most-pruned target+wff model of the first seed."""
    r = _ops_pick(results)
    if r is None:
        return []
    ops, base = r["speed"]["ops_batch64"], r["speed"]["baseline_ops_batch64"]
    lines = [f"Where the time goes: {r['label']} at -{r['bops_reduction']:.0%} BOPs, seed "
             f"{r['seed']}, batch 64, median per op:", "",
             "| op | kind | unpruned (µs) | pruned (µs) | ratio |", "|---|---|---:|---:|---:|"]
    for a, b in zip(base, ops, strict=True):
        ratio = b["median_s"] / a["median_s"] if a["median_s"] else float("nan")
        lines.append(f"| {a['op']} | {a['kind']} | {1e6 * a['median_s']:.1f} | "
                     f"{1e6 * b['median_s']:.1f} | {ratio:.2f} |")
    return lines


def _p_table(results: dict[str, Any]) -> list[str]:
    p = results.get("p_layers") or {}
    channels = results["baseline"].get("channels", {})
    if not p:
        return []
    lines = ["| binary layer | channels | p_l (insensitive fraction), mean ± std |",
             "|---|---:|---:|"]
    for name, v in p.items():
        lines.append(f"| {name} | {channels.get(name, '')} | {_pct(v)}% |")
    return lines


def _pp(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.2f}"


def _verdicts(results: dict[str, Any]) -> list[str]:
    """One plain answer per question, from the paired differences at every reduction."""
    out = []
    for v in question_verdicts(results.get("paired") or []):
        q, ds, wins, losses, n, kept = v.question, v.comparisons, v.wins, v.losses, v.seeds, v.kept
        after = f", {kept} after Holm's correction within these {len(ds)}"
        if v.identical:
            verdict = ("identical: A and B reached the same accuracy on every seed (they kept "
                       "the same channels)")
        elif not wins and not losses:
            verdict = "no difference resolved" + _detectable(v.detectable)
        elif wins and not losses:
            verdict = (f"yes in {len(wins)} of {len(ds)}{after}" if kept else
                       f"not resolved after correction (A better in {len(wins)} of {len(ds)} "
                       f"uncorrected{after})")
        elif losses and not wins:
            verdict = (f"no: it is worse in {len(losses)} of {len(ds)}{after}" if kept else
                       f"not better (A worse in {len(losses)} of {len(ds)} uncorrected{after})")
        else:
            verdict = "mixed"
        def cases(xs: list[dict[str, Any]]) -> str:
            return ", ".join(f"{d['a']} vs {d['b']} at -{d['reduction']:.0%} "
                             f"({_pp(d['mean'])} pp)" for d in xs)
        detail = "; ".join(x for x in (
            f"A better in {cases(wins)}" if wins else "",
            f"A worse in {cases(losses)}" if losses else "") if x)
        out.append(f"- **{q}** {verdict} ({len(ds)} comparisons, >= {n} paired seeds each"
                   + (f"; {detail}" if detail else "; every 95% interval contains 0") + ").")
    return out


def _detectable(dd: list[float]) -> str:
    """The smallest differences the comparisons detect (80% power, two-sided 5%, from their
    observed paired SDs: :func:`bnnprune.evidence.question_verdicts`), for a verdict of no
    difference."""
    if not dd:
        return ""
    span = f"{100 * min(dd):.2f}" if len(dd) == 1 else f"{100 * min(dd):.2f}-{100 * max(dd):.2f}"
    return f" (with 80% power these designs detect differences of {span} pp or more)"


def _paired_table(results: dict[str, Any]) -> list[str]:
    rows = results.get("paired") or []
    if not rows:
        return []
    lines = ["| question | A | B | BOPs | seeds | A - B (pp) | 95% interval (pp) | |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for d in rows:
        lines.append(
            f"| {d['question']} | {d['a']} | {d['b']} | -{d['reduction']:.0%} | {d['n']} | "
            f"{_pp(d['mean'])} | [{_pp(d['lo'])}, {_pp(d['hi'])}] | "
            f"{_label(d)} |")
    return lines


def _label(d: dict[str, Any]) -> str:
    if identical(d):
        return "identical"
    return "resolved" if d["resolved"] else "no difference resolved"


def _convergence_table(results: dict[str, Any]) -> list[str]:
    conv = results.get("convergence") or {}
    if not conv:
        return []
    lines = ["| seed | test acc by epoch (%) | acc change over the epochs before the interval "
             "| acc spread inside the interval (max - min) | flip ratio max/min inside the "
             "interval (worst layer) |", "|---:|---|---:|---:|---:|"]
    for seed, c in sorted(conv.items(), key=lambda kv: int(kv[0])):
        accs = " ".join(f"{100 * a:.1f}" for a in c["test_acc_by_epoch"])
        ch = c["acc_change_before_interval"]
        inside = c["test_acc_by_epoch"][-c["interval_epochs"]:] if c["interval_epochs"] else []
        spread = f"{100 * (max(inside) - min(inside)):.2f} pp" if inside else "n/a"
        flat = c["worst_flatness"]
        lines.append(f"| {seed} | {accs} | {_pp(ch) if ch is not None else 'n/a'} pp "
                     f"({c['epochs_compared']} epochs) | {spread} | "
                     f"{'n/a' if flat is None else f'{flat:.2f}'} |")
    return lines


def _rounds_table(results: dict[str, Any]) -> list[str]:
    pr = results.get("paper_rounds") or {}
    if not pr:
        return []
    lines = ["| retraining | seed | round | p_l per layer (%) | BOPs | test acc | epochs |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for key, by_seed in sorted(pr.items()):
        how = "from scratch" if key.endswith(SCRATCH_ROW) else "fine-tuning"
        for seed, rounds in sorted(by_seed.items(), key=lambda kv: int(kv[0])):
            for r in rounds or []:
                p = " ".join(f"{k}: {100 * v:.1f}" for k, v in (r.get("p") or {}).items())
                lines.append(f"| {how} | {seed} | {r['round']} | {p} | {r['bops'] / 1e6:.2f} M "
                             f"| {r['test_acc']:.2%} | {r.get('epochs', '')} |")
    return lines


def _epochs(entry: dict[str, Any]) -> str:
    """The total training epochs of a row's final models (a range when seeds differ)."""
    eps = entry.get("epochs") or []
    return _span(eps) if eps else "?"


def _correlation_table(results: dict[str, Any]) -> list[str]:
    corr = results.get("correlation") or {}
    if not corr:
        return []
    lines = ["| layer | Spearman(flips, abs w), weights | Spearman(mean WFF, mean abs w), "
             "channels |", "|---|---:|---:|"]
    def ms(x: dict[str, float]) -> str:
        return f"{x['mean']:+.3f} ± {x['std']:.3f}" if x["n"] else "n/a"

    for n, c in corr.items():
        lines.append(f"| {n} | {ms(c['weights'])} | {ms(c['channels'])} |")
    return lines


def _thresholds_table(results: dict[str, Any], field: str = "thresholds",
                      head: str = "flips >") -> list[str]:
    th = results.get(field) or {}
    if not th:
        return []
    layers = list(next(iter(th.values()))["p"])
    lines = [f"| {head} | " + " | ".join(f"p_l {n}" for n in layers) + " | paper policy BOPs "
             "reduction (one round) |", "|---:|" + "---:|" * (len(layers) + 1)]
    for t, e in sorted(th.items(), key=lambda kv: int(kv[0])):
        cells = " | ".join(f"{100 * e['p'][n]['mean']:.2f}%" for n in layers)
        lines.append(f"| {t} | {cells} | {100 * e['paper_reduction']['mean']:.1f}% |")
    return lines


def _near_convergence(results: dict[str, Any], n: int) -> list[str]:
    if not results.get("paired") and not results.get("convergence"):
        return []
    return [
        "## Near convergence: the four questions",
        "",
        f"Paired differences of test accuracy (A - B) over the seeds where both were measured "
        f"(same baseline per seed, same BOPs, same epochs), with 95% t intervals; {n} seeds "
        "planned, the seeds column counts those finished.",
        "",
        *_verdicts(results),
        "",
        *_paired_table(results),
        "",
        "### Did training reach a plateau before the pruning interval?",
        "",
        *_convergence_table(results),
        "",
        "### The paper's policy, round by round",
        "",
        *_rounds_table(results),
        "",
        "### Flip frequency and latent magnitude",
        "",
        "Rank correlation of each weight's flip count with its |latent w| (mean ± std over "
        "seeds); strongly negative means flips mostly restate magnitude.",
        "",
        *_correlation_table(results),
        "",
        "### Flip threshold and interval sensitivity",
        "",
        "Mean over seeds; insensitive = flipped more than the threshold inside the interval.",
        "",
        *_thresholds_table(results),
        "",
        "The same with the interval cut to its last k epochs (threshold "
        f"{results['config']['prune']['threshold']}):",
        "",
        *_thresholds_table(results, "intervals", "last k epochs"),
        "",
    ]


def render_sweep_report(results: dict[str, Any], plots: dict[str, str],
                        docs_command: str | None = None) -> str:
    n = _n_seeds(results)
    cmd = results["command"]
    lines = [
        "# Does flip frequency pick the right channels? Measured evidence",
        "",
        "Generated by `bnnprune sweep` from its cell records; do not edit by hand, rerun "
        "the command instead (finished cells are reused, so it regenerates this page).",
        "",
        *([f"**In progress:** {len(results['records'])} of "
           f"{len(results['records']) + results['pending']} cells finished; every table and "
           "verdict below uses only the finished cells (the seeds counted in each row).", ""]
          if results.get("pending") else []),
        "## Headline",
        "",
        *_headline(results),
        "",
        *_near_convergence(results, n),
        "## Setup",
        "",
        *_setup(results),
        "",
        "Command (the sweep resumes: finished cells are reused; add `--jobs 2` to run two "
        "cells at a time, `--report-only` to only rewrite this page from the records):",
        "",
        "```",
        "bash scripts/setup.sh",
        docs_command or cmd,
        "```",
        "",
        f"## Test accuracy (%) at equal BOPs and equal training budget (mean ± std, {n} seeds)",
        "",
        "Each method prunes the same trained baseline of its seed to the same BOPs and is "
        "retrained for the same epochs; `target` allocates the reduction across layers in "
        "proportion to each layer's insensitive fraction p_l, `uniform` cuts every layer by "
        "the same fraction, and the criterion (wff = highest mean flip frequency, random, "
        "magnitude = smallest mean |latent w|, bn_scale = smallest |BN gamma|, flip_magnitude = "
        "smallest mean |w| / (1 + flips)) picks the channels inside a layer; `scratch` is a "
        "uniform-width network trained from scratch for the same total epochs. The paper "
        "policy cuts each layer by its own p_l, retrains, and repeats while the largest p_l "
        "decreases (up to prune.max_rounds rounds), so it lands at its own reduction.",
        "",
        *_accuracy_table(results),
        "",
        *(f"![{t}]({f})" for t, f in plots.items() if t == "accuracy vs BOPs"),
        "",
        "Insensitive fractions of the baselines (what the paper policy and the target "
        "allocation see):",
        "",
        *_p_table(results),
        "",
        *_channels_table(results),
        "",
        "## Premise check: flip signs without retraining",
        "",
        "On each trained baseline, the signs of x% of every binary layer's weights are "
        "flipped, chosen by highest flip count (ties at random), lowest flip count, at "
        "random, or smallest latent magnitude; test accuracy without retraining "
        f"(mean ± std over {n} seeds). If frequently flipping weights are the insensitive "
        "ones, flipping them should hurt least.",
        "",
        *_premise_table(results),
        "",
        *(f"![{t}]({f})" for t, f in plots.items() if t == "premise check"),
        "",
        "## Speed on the packed engine",
        "",
        "Every pruned model and its unpruned baseline compiled to the bit-packed "
        "XNOR/popcount engine and timed interleaved in the same process (median of "
        f"{results['config']['sweep']['speed_repeats']} runs at batch 1), with nothing else "
        "running; mean ± std over seeds. The last column is the share of 512 test images on "
        "which the engine's class equals PyTorch's (lowest over seeds).",
        "",
        *_speed_table(results),
        "",
        *_ops_table(results),
        "",
        *(f"![{t}]({f})" for t, f in plots.items() if t == "speed"),
        "",
        *_cells_table(results),
    ]
    # sections with nothing to show leave no run of blank lines behind
    lines = [ln for i, ln in enumerate(lines) if ln or i == 0 or lines[i - 1]]
    return "\n".join(lines).rstrip("\n") + "\n"


def _cells_table(results: dict[str, Any]) -> list[str]:
    """Every cell's compute time (minutes) by seed, and the machine it ran on."""
    cells = results.get("cells") or []
    if not cells:
        return []
    machines = sorted({c["machine"] for c in cells if c["machine"]})
    tag = {m: f" ({chr(65 + i)})" for i, m in enumerate(machines)} if len(machines) > 1 else {}
    seeds = sorted({c["seed"] for c in cells})
    by = {(c["cell"], c["seed"]): c for c in cells}
    where = ("" if not machines else f"Every cell ran on {machines[0]}." if len(machines) == 1
             else "Machines: " + "; ".join(f"{t.strip()} {m}" for m, t in tag.items()) + ".")
    lines = ["## Cells: machine and wall time", "",
             "Compute of every cell in minutes (its wall time; a baseline rebuilt from an "
             f"earlier phase counts that phase's training time). {where}", "",
             "| cell | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---:|" * len(seeds)]
    for name in sorted({c["cell"] for c in cells}):
        vals = []
        for s in seeds:
            c = by.get((name, s))
            vals.append("" if c is None else
                        f"{c['seconds'] / 60:.1f}{tag.get(c['machine'], '')}")
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return [*lines, ""]


def write_sweep_report(results: dict[str, Any], md_path: str | Path,
                       plot_dir: str | Path | None = None,
                       docs_command: str | None = None) -> Path:
    """Draw the plots into ``plot_dir`` (default: next to the page) and write the page."""
    md_path = Path(md_path)
    plot_dir = Path(plot_dir) if plot_dir is not None else md_path.parent
    plot_dir.mkdir(parents=True, exist_ok=True)
    files = {"accuracy vs BOPs": plot_pareto(results, plot_dir / "pareto.png")}
    if results.get("premise"):
        files["premise check"] = plot_premise(results, plot_dir / "premise.png")
    if any(e["latency_ratio_batch1"]["n"] for e in results["table"]):
        files["speed"] = plot_speed(results, plot_dir / "speed.png")
    rel = {t: Path(os.path.relpath(f, md_path.parent)).as_posix() for t, f in files.items()}
    atomic_write_bytes(md_path, render_sweep_report(results, rel, docs_command).encode())
    return md_path
