"""The page of a pre-registered sweep (``sweep.primaries`` set): the verdict per primary in
plain words, the pre-registration quoted verbatim, the plateau criterion per baseline, p_l
per layer per seed, every row's accuracy, exploratory comparisons and compute per cell.

Every number is computed from the cell records (through the sweep's results); the only
other input is the committed pre-registration file the config names.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from bnnprune.atomic import atomic_write_bytes
from bnnprune.config import model_label
from bnnprune.report.plots import plt, save_figure
from bnnprune.report.sweep import _accuracy_table, _cells_table, plot_pareto

__all__ = ["plot_primaries", "render_primaries_report", "write_primaries_report"]


def _num(x: float | None, fmt: str = "+.2f", scale: float = 100.0) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else \
        f"{scale * x:{fmt}}"


def _p(x: float) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return "< 0.001" if x < 0.001 else f"{x:.3f}"


def verdict(pr: dict[str, Any]) -> str:
    """One primary's answer in plain words: only what its interval and Holm p support."""
    n = pr["n"]
    if n < 2:
        return f"not decided yet: {n} seed(s) with every cell it needs"
    diff = (f"{pr['a']} minus {pr['b']}: {_num(pr['mean'])} pp, 95% interval "
            f"[{_num(pr['lo'])}, {_num(pr['hi'])}], Holm-adjusted p = {_p(pr['p_holm'])}, "
            f"{n} seeds")
    if pr["resolved_holm"]:
        side = pr["a"] if pr["mean"] > 0 else pr["b"]
        return f"**{side} is better** ({diff})"
    return (f"**no difference resolved** ({diff}); with {n} seeds and the observed paired SD "
            f"of {_num(pr['sd'], '.2f')} pp the design detects a true difference of "
            f"{_num(pr['detectable'], '.2f')} pp or more with {pr['power']:.0%} power")


def _primaries_table(prs: list[dict[str, Any]]) -> list[str]:
    lines = ["| primary | A - B | seeds | mean (pp) | 95% interval (pp) | paired SD (pp) | p | "
             "Holm p | detectable at 80% power (pp) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for pr in prs:
        lines.append(
            f"| {pr['label']} {pr['name']} | {pr['a']} - {pr['b']} | {pr['n']} | "
            f"{_num(pr['mean'])} | [{_num(pr['lo'])}, {_num(pr['hi'])}] | "
            f"{_num(pr['sd'], '.2f')} | {_p(pr['p'])} | {_p(pr['p_holm'])} | "
            f"{_num(pr['detectable'], '.2f')} |")
    return lines


def _pooled_verdict(pooled: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The recipe's plateau verdict on the seed mean in one line, provisional while some
    seeds' baselines are missing."""
    n, of = len(pooled["seeds"]), pooled["of"]
    state = (f"provisional: {n} of {of} seeds' baselines are in; final once all {of} are"
             if pooled["provisional"] else f"all {of} seeds' baselines")
    if not n:
        return f"**Recipe verdict:** not decided yet ({state})."
    first, last = pooled["epochs"]
    return (f"**Recipe verdict ({state}): {'passes' if pooled['passed'] else 'fails'}.** "
            f"Slope of the seed-mean validation accuracy over epochs {first}-{last}: "
            f"{_num(pooled['slope_pp'], '+.2f', 1.0)} pp per epoch "
            f"(< {cfg['plateau_max_slope_pp']}: {'yes' if pooled['slope_ok'] else 'no'}); "
            f"worst layer's seed-mean flip ratio max/min: "
            f"{_num(pooled['worst_flatness'], '.2f', 1.0)} "
            f"(< {cfg['plateau_max_flatness']}: {'yes' if pooled['flat_ok'] else 'no'}).")


def _slope_table(results: dict[str, Any], base: dict[int, dict[str, Any]]) -> list[str]:
    """The seed-mean-slope rule: the criterion, the recipe's verdict, and per seed the same
    figures (reported; no seed is gated out)."""
    cfg = results["config"]["sweep"]
    plateau = results.get("plateau") or {}
    k = cfg["plateau_slope_epochs"]
    lines = [f"Criterion (fixed before any result), read on the recipe, not on a seed: the "
             f"least-squares slope of the seed-mean validation accuracy over the {k} epochs "
             f"before the flip interval is below {cfg['plateau_max_slope_pp']} pp per epoch, "
             f"and every binary layer's seed-mean flip ratio max/min inside the interval (the "
             f"mean over seeds of each seed's max/min) is below "
             f"{cfg['plateau_max_flatness']}. Per-seed figures are reported; no seed is gated "
             "out.", "", _pooled_verdict(results["plateau_pooled"], cfg), "",
             f"| seed | val acc by epoch (%) | slope over the {k} epochs before the interval "
             "(pp per epoch) | flip ratio max/min (worst layer) | within the thresholds alone "
             "(reported, not gating) | train / val / test acc at the end (%) |",
             "|---:|---|---:|---:|---|---|"]
    for seed in sorted(base):
        lines.append(_baseline_row(seed, base[seed], plateau.get(str(seed)) or {}, "slope_pp",
                                   "no"))
    return lines


def _recipe_warning(results: dict[str, Any]) -> list[str]:
    """Above every primary result: the recipe failed the pre-registered plateau criterion
    (seed-mean-slope rule only; nothing is rerun)."""
    pooled = results.get("plateau_pooled")
    if not pooled or not pooled["seeds"] or pooled["passed"]:
        return []
    return [f"**The training recipe fails the pre-registered plateau criterion** "
            f"({'provisional, ' if pooled['provisional'] else ''}{len(pooled['seeds'])} of "
            f"{pooled['of']} seeds): every primary result below prunes baselines not shown to "
            "be near a plateau. Nothing is rerun; see the plateau section.", ""]


def _baselines_table(results: dict[str, Any]) -> list[str]:
    """Per seed: the plateau criterion's inputs and verdict, accuracies at the end."""
    cfg = results["config"]["sweep"]
    plateau = results.get("plateau") or {}
    base = {r["seed"]: r for r in results["records"] if r["kind"] == "baseline"}
    if not base:
        return ["No baseline finished yet."]
    if results.get("plateau_pooled") is not None:
        return _slope_table(results, base)
    lines = [f"Criterion (fixed before any result): validation accuracy rises by less than "
             f"{cfg['plateau_max_rise_pp']} pp over the epochs before the flip interval, and "
             f"every layer's per-epoch flip ratio inside it varies by less than "
             f"{cfg['plateau_max_flatness']}x (max/min).", "",
             "| seed | val acc by epoch (%) | rise before the interval (pp) | flip ratio "
             "max/min (worst layer) | passed | train / val / test acc at the end (%) |",
             "|---:|---|---:|---:|---|---|"]
    for seed in sorted(base):
        lines.append(_baseline_row(seed, base[seed], plateau.get(str(seed)) or {}, "rise_pp",
                                   "**no**: not used"))
    return lines


def _baseline_row(seed: int, r: dict[str, Any], v: dict[str, Any], figure: str,
                  failed: str) -> str:
    """One baseline's row: validation accuracy by epoch, the rule's ``figure`` (rise or
    slope, pp), worst layer flatness, its verdict (``failed`` when it misses) and the final
    train / val / test accuracies."""
    c = r.get("convergence") or {}
    accs = " ".join(f"{100 * a:.1f}" for a in c.get("val_acc_by_epoch") or [])
    train = (c.get("train_acc_by_epoch") or [math.nan])[-1]
    return (f"| {seed} | {accs} | {_num(v.get(figure), '+.2f', 1.0)} | "
            f"{_num(v.get('worst_flatness'), '.2f', 1.0)} | "
            f"{'yes' if v.get('passed') else failed} | "
            f"{_num(train, '.2f')} / {_num(r.get('val_acc'), '.2f')} / "
            f"{_num(r['test_acc'], '.2f')} |")


def _p_layers_table(results: dict[str, Any]) -> list[str]:
    """p_l per binary layer per seed, and the max/min ratio that makes allocations differ."""
    base = sorted((r for r in results["records"] if r["kind"] == "baseline"
                   and r.get("sensitivity")), key=lambda r: r["seed"])
    if not base:
        return []
    layers = list(base[0]["sensitivity"]["layers"])
    reds = list(base[0].get("allocations") or {})
    cols = [*layers, "max/min",
            *(f"layers where target != uniform at -{float(r):.0%}" for r in reds)]
    lines = ["| seed | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
    for r in base:
        ps = [r["sensitivity"]["layers"][n]["p"] for n in layers]
        ratio = max(ps) / min(ps) if min(ps) > 0 else math.inf
        vals = [*(f"{100 * p:.1f}" for p in ps), f"{ratio:.2f}",
                *(str(r["allocations"][red]["layers_differing"]) for red in reds)]
        lines.append(f"| {r['seed']} | " + " | ".join(vals) + " |")
    return lines


def _exploratory_table(results: dict[str, Any]) -> list[str]:
    rows = results.get("exploratory") or []
    if not rows:
        return []
    lines = ["| A | B | reduction | seeds | A - B (pp) | 95% interval (pp) |",
             "|---|---|---|---:|---:|---|"]
    for d in rows:
        red = "own (paper)" if d["reduction"] is None else f"-{d['reduction']:.0%}"
        lines.append(f"| {d['a']} | {d['b']} | {red} | {d['n']} | {_num(d['mean'])} | "
                     f"[{_num(d['lo'])}, {_num(d['hi'])}] |")
    return lines


def plot_primaries(results: dict[str, Any], path: str | Path) -> Path:
    """Per primary: every seed's contrast (dots) and the mean with its 95% interval."""
    prs = results["primaries"]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.8 * len(prs)))
    for i, pr in enumerate(prs):
        y = len(prs) - 1 - i
        xs = [100 * v for v in pr["contrast_by_seed"].values()]
        ax.plot(xs, [y + 0.15] * len(xs), "o", color="0.6", markersize=4)
        if pr["n"] >= 2:
            ax.errorbar([100 * pr["mean"]], [y], xerr=[[100 * (pr["mean"] - pr["lo"])],
                                                       [100 * (pr["hi"] - pr["mean"])]],
                        fmt="s", color="C0", capsize=4)
    ax.axvline(0, color="k", linewidth=1)
    ax.set_yticks(range(len(prs)))
    ax.set_yticklabels([f"{p['label']}: {p['a']}\n- {p['b']}" for p in reversed(prs)],
                       fontsize=8)
    ax.set_xlabel("test accuracy difference (pp): seeds (dots), mean and 95% interval")
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)


def plots(results: dict[str, Any], plot_dir: Path) -> dict[str, Path]:
    """The page's figures, drawn into ``plot_dir``."""
    files = {"primaries": plot_primaries(results, plot_dir / "primaries.png")}
    if results["table"]:
        files["accuracy vs BOPs"] = plot_pareto(results, plot_dir / "pareto.png")
    return files


def render_primaries_report(results: dict[str, Any], plots: dict[str, str],
                            docs_command: str | None = None,
                            preregistration: str | None = None) -> str:
    cfg = results["config"]
    t, p, s, ds = cfg["train"], cfg["prune"], cfg["sweep"], results["dataset"]
    n_cells = len(results["records"]) + results.get("pending", 0)
    lines = [
        f"# Pre-registered trial: {model_label(cfg['model'])} on {ds['name']}",
        "",
        "Generated by `bnnprune sweep` from its committed cell records; do not edit by hand, "
        "rerun the command instead (finished cells are reused, so it regenerates this page).",
        "",
        *([f"**In progress:** {len(results['records'])} of {n_cells} cells finished; the "
           "verdicts below use only the seeds whose cells are all finished.", ""]
          if results.get("pending") else []),
        "## Verdicts (primary comparisons, Holm-corrected)",
        "",
        *_recipe_warning(results),
        *(f"- **{pr['label']}** {pr['question']} {verdict(pr)}." for pr in results["primaries"]),
        "",
        *_primaries_table(results["primaries"]),
        "",
        *(f"![{k}]({v})" for k, v in plots.items() if k == "primaries"),
        "",
        f"Default method of `bnnprune run` by the same primaries on the validation split "
        f"(never the test set; a comparison not resolved goes to the simpler choice, uniform "
        f"widths and magnitude channels, which need no flip data): "
        f"`{results['default_method']['method']}` ({results['default_method']['seeds']} "
        "seeds).",
        "",
        "Every other comparison on this page is exploratory (not corrected for "
        "multiplicity).",
        "",
        "## Setup",
        "",
        "| setting | value |",
        "|---|---|",
        f"| data | {ds['name']}: {ds['train']} training images, {ds.get('val', 0)} validation "
        f"images held out of the other training images, {ds['test']} test images (the same "
        "for every seed) |",
        f"| model | {model_label(cfg['model'], '`')} |",
        f"| baseline | {t['epochs']} epochs of Adam, batch {t['batch_size']}: "
        f"{t['epochs'] - t['plateau_epochs']} {t['schedule']} epochs from lr {t['lr']:g} to "
        f"{t['lr'] * t['plateau_lr']:g}, then {t['plateau_epochs']} epochs held there; flips "
        f"recorded over the last {t['track_last']} |",
        f"| pruning | binary layers only; insensitive = flipped more than {p['threshold']} "
        f"times; fine-tuned {p['retrain_epochs']} epochs at lr {p['retrain_lr']:g}; from "
        f"scratch: {t['epochs'] + p['retrain_epochs']} epochs (equal total epochs); the paper "
        f"policy iterates up to {p['max_rounds']} rounds |",
        f"| seeds | {s['seeds']} |",
        f"| compute | {results.get('cell_seconds', 0.0) / 3600:.2f} h of cell compute so far |",
        "",
        "Command:",
        "",
        "```",
        "bash scripts/setup.sh",
        docs_command or results["command"],
        "```",
        "",
        "## Baselines: the plateau criterion",
        "",
        *_baselines_table(results),
        "",
        "Insensitive fraction p_l (%) per binary layer per seed (the allocation can differ "
        "from uniform widths only where the layers differ):",
        "",
        *_p_layers_table(results),
        "",
        "## Test accuracy (%) of every row (mean ± std over seeds)",
        "",
        *(_accuracy_table(results) if results["table"] else ["No pruned cell finished yet."]),
        "",
        *(f"![{k}]({v})" for k, v in plots.items() if k == "accuracy vs BOPs"),
        "",
        "## Exploratory comparisons (paired, uncorrected)",
        "",
        *_exploratory_table(results),
        "",
        *_cells_table(results),
        "## The pre-registration (verbatim)",
        "",
        *(preregistration or "(no pre-registration file)").rstrip("\n").splitlines(),
        "",
    ]
    lines = [ln for i, ln in enumerate(lines) if ln or i == 0 or lines[i - 1]]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_primaries_report(results: dict[str, Any], md_path: str | Path,
                           plot_dir: str | Path | None = None,
                           docs_command: str | None = None) -> Path:
    """Draw the plots into ``plot_dir`` (default: next to the page) and write the page,
    quoting the pre-registration file the config names."""
    md_path = Path(md_path)
    plot_dir = Path(plot_dir) if plot_dir is not None else md_path.parent
    plot_dir.mkdir(parents=True, exist_ok=True)
    files = plots(results, plot_dir)
    rel = {t: Path(os.path.relpath(f, md_path.parent)).as_posix() for t, f in files.items()}
    prereg = results["config"]["sweep"]["preregistration"]
    text = render_primaries_report(results, rel, docs_command,
                                   Path(prereg).read_text() if prereg else None)
    atomic_write_bytes(md_path, text.encode())
    return md_path
