"""report.md for a `bnnprune run`, generated from its results.json (never edited by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnnprune.atomic import atomic_write_bytes
from bnnprune.config import model_label
from bnnprune.machine import isa_label
from bnnprune.metrics import format_bytes
from bnnprune.records import MachineRecord, ModelRecord

__all__ = ["render_report", "speed_table", "write_report"]


def _row(r: ModelRecord, base: ModelRecord) -> str:
    red = 1 - r.bops / base.bops
    drop = base.test_acc - r.test_acc
    return (
        f"| {r.label} | {r.test_acc:.2%} | {drop * 100:+.2f} pp | {r.bops / 1e6:.2f} M "
        f"| {red:.1%} | {format_bytes(r.binary_params / 8)} "
        f"| {format_bytes(r.memory_bytes)} |"
    )


def model_records(results: dict[str, Any]) -> list[ModelRecord]:
    """Baseline, every round, every compared method and the equal-budget model, in order."""
    rows = [results["baseline"], *results["rounds"], *results["compared"]]
    if results.get("unpruned_budget"):
        rows.append(results["unpruned_budget"])
    return [ModelRecord.from_dict(r) for r in rows]


def methods_table(results: dict[str, Any]) -> list[str]:
    """Every evaluated model: accuracy, drop vs baseline, BOPs, reduction, memory."""
    rows = model_records(results)
    base = rows[0]
    return [
        "| model | test acc | drop | BOPs | BOPs reduction | binary weights | total memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(_row(r, base) for r in rows),
    ]


def _ratio(v: float | None, base: float | None) -> str:
    return f"{v / base:.3f}" if v is not None and base else "-"


def _bytes(v: int | None) -> str:
    return f"{v:,} B" if v is not None else "-"


def speed_table(results: dict[str, Any]) -> list[str]:
    """Every timed model on the packed engine: median latency and its ratio to the baseline
    at each batch size, the C export's flash and RAM, and how often its top-1 equals
    PyTorch's; [] when the run measured none (``prune.speed`` off, older results)."""
    engine, speed = results.get("engine"), results.get("speed")
    if not engine:
        return []
    if "error" in engine:
        return [f"Not measured: the engine cannot compile the model ({engine['error']})."]
    batches = list(speed["repeats"])
    base = engine["models"][0]
    lines = [
        "| model | " + " | ".join(f"batch {b} ms | ratio" for b in batches)
        + " | C flash | ratio | C RAM | ratio | top-1 = PyTorch |",
        "|---|" + "---:|---:|" * len(batches) + "---:|---:|---:|---:|---:|",
    ]
    for e, t in zip(engine["models"], speed["models"], strict=True):
        times = " | ".join(f"{t['latency_s'][b] * 1e3:.3f} | {t['latency_ratio'][b]:.3f}"
                           for b in batches)
        lines.append(
            f"| {e['label']} | {times} | {_bytes(e['flash_bytes'])} "
            f"| {_ratio(e['flash_bytes'], base['flash_bytes'])} | {_bytes(e['ram_bytes'])} "
            f"| {_ratio(e['ram_bytes'], base['ram_bytes'])} | {e['agreement']:.1%} |")
    return lines


def speed_note(results: dict[str, Any]) -> str:
    """Where and how the latencies of :func:`speed_table` were measured, in one paragraph."""
    speed, engine = results["speed"], results["engine"]
    reps = " and ".join(f"{n} runs at batch {b}" for b, n in speed["repeats"].items())
    return (
        f"Packed XNOR/popcount engine on {speed['cpu']} ({isa_label(speed['isa'])}), "
        f"{speed['threads']} thread(s): medians of {reps}, every model interleaved in one run, "
        "so each ratio to the baseline comes from the same machine load. These are wall-clock "
        "times of this machine under its load at the time; `bnnprune bench PRUNED.bnn "
        "--baseline UNPRUNED.bnn` measures a pair in detail. C flash and RAM: the const data and "
        "the scratch arena of `bnnprune export --format c` (code not included). top-1 = "
        f"PyTorch: share of {engine['images_checked']} test images on which the engine predicts "
        f"PyTorch's class. The section took {speed['cpu_seconds']:.1f} s of CPU time."
    )


def _speed_sentence(results: dict[str, Any]) -> list[str]:
    """The pruned model's engine latency and C flash against the baseline's, in one line."""
    speed, engine = results.get("speed"), results.get("engine")
    if not speed:
        return []
    at = " and ".join(f"{v:.2f}x (batch {b})"
                      for b, v in speed["models"][1]["latency_ratio"].items())
    pruned, base = engine["models"][1], engine["models"][0]
    return [f"**Speed:** {results['method']}'s latency on the packed engine is {at} the "
            f"baseline's ({speed['cpu']}, wall-clock, one interleaved run); its C export needs "
            f"{_ratio(pruned['flash_bytes'], base['flash_bytes'])}x the flash and "
            f"{_ratio(pruned['ram_bytes'], base['ram_bytes'])}x the RAM.", ""]


def _budget_sentence(results: dict[str, Any]) -> str:
    budget = results.get("unpruned_budget")
    if not budget:
        return "."
    drop = budget["test_acc"] - results["pruned"]["test_acc"]
    return (
        f"; against the unpruned model trained for the same total epochs "
        f"({budget['test_acc']:.2%}) the drop is {drop * 100:+.2f} pp."
    )


def _identical_plans(results: dict[str, Any]) -> list[str]:
    """Say so when another allocation policy kept exactly the main method's channel counts."""
    main, policy = results["pruned"]["channels"], results["config"]["prune"]["policy"]
    compared = [ModelRecord.from_dict(c) for c in results["compared"]]
    same = [c.label for c in compared if c.plan["policy"] != policy and c.channels == main]
    if not same:
        return []
    return [
        f"Note: {', '.join(same)} kept the same channel counts per layer as "
        f"{results['method']} (the layers' insensitive fractions p_l are nearly equal, so "
        "proportional cuts equal uniform cuts).",
        "",
    ]


def _speed_section(results: dict[str, Any]) -> list[str]:
    table = speed_table(results)
    if not table:
        return []
    note = [speed_note(results), ""] if results.get("speed") else []
    return ["## Engine speed and C footprint", "", *table, "", *note]


def render_report(results: dict[str, Any], plots: dict[str, str]) -> str:
    cfg = results["config"]
    base = ModelRecord.from_dict(results["baseline"])
    final = ModelRecord.from_dict(results["pruned"])
    ds = results["dataset"]
    machine = MachineRecord.from_dict(results["machine"])
    seeds = results.get("seeds") or [cfg["train"]["seed"]]
    lines = [
        "# bnnprune run report",
        "",
        f"Model {model_label(cfg['model'], '`')} on {ds['name']} "
        f"({ds['train']} train / {ds['test']} test images), method **{results['method']}**, "
        f"baseline {cfg['train']['epochs']} epochs, pruned models retrained "
        f"{results['retrain_epochs']} epochs. Wall time {results['wall_seconds'] / 60:.1f} min on "
        f"{machine.short}.",
        "",
        f"**Result:** {results['bops_reduction']:.1%} fewer BOPs at "
        f"{results['accuracy_drop'] * 100:+.2f} pp accuracy drop "
        f"({base.test_acc:.2%} -> {final.test_acc:.2%})" + _budget_sentence(results),
        "",
        f"**This is one run ({len(seeds)} seed: {', '.join(map(str, seeds))}).** Differences "
        "between methods of a few tenths of a point are within seed-to-seed noise; "
        "`bnnprune sweep` compares methods over several seeds with paired intervals.",
        "",
        *_speed_sentence(results),
        *_identical_plans(results),
        "## Accuracy, BOPs and memory",
        "",
        *methods_table(results),
        "",
        "Methods compared at the same BOPs prune the same trained baseline and are retrained "
        "with the same epochs and schedule; `unpruned + N epochs` gives the unpruned model the "
        "same total training budget.",
        "",
        *_speed_section(results),
        "## Channels per binary layer",
        "",
        "| layer | before | after | p_l (insensitive fraction) |",
        "|---|---:|---:|---:|",
    ]
    sens = (results.get("sensitivity") or {}).get("layers", {})
    for name, c in base.channels.items():
        p = sens.get(name, {}).get("p")
        lines.append(
            f"| {name} | {c} | {final.channels.get(name, c)} | "
            f"{'' if p is None else f'{p:.2%}'} |"
        )
    if len(results["rounds"]) > 1:
        lines += [
            "",
            "## Rounds (paper policy)",
            "",
            "| round | max p_l | BOPs | test acc |",
            "|---:|---:|---:|---:|",
        ]
        for r in map(ModelRecord.from_dict, results["rounds"]):
            lines.append(
                f"| {r.round} | {r.max_p:.2%} | {r.bops / 1e6:.2f} M | {r.test_acc:.2%} |"
            )
        if results.get("stop"):
            lines += ["", f"Stopped: {results['stop']}."]
    notes = [n for r in results["rounds"] for n in r["plan"].get("notes", [])]
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{title}]({file})" for title, file in plots.items()]
    lines += ["", "All figures come from `results.json` in this folder."]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Draw the plots and write report.md into ``out_dir``."""
    from bnnprune.report.plots import (
        plot_accuracy_vs_bops,
        plot_accuracy_vs_latency,
        plot_channels,
    )

    out = Path(out_dir)
    points = [r.to_dict() for r in model_records(results)]
    plot_accuracy_vs_bops(points, points[0]["bops"], out / "accuracy_vs_bops.png")
    plot_channels(points[0]["channels"], results["pruned"]["channels"], out / "channels.png")
    plots = {"accuracy vs BOPs": "accuracy_vs_bops.png"}
    if results.get("speed"):
        plot_accuracy_vs_latency(points, results["speed"], out / "accuracy_vs_latency.png")
        plots["accuracy vs engine latency"] = "accuracy_vs_latency.png"
    plots["channels"] = "channels.png"
    for title, file in (
        ("flip-count histograms", "flip_histograms.png"),
        ("flip ratio over training", "flip_ratio.png"),
    ):
        if (out / file).is_file():
            plots[title] = file
    path = out / "report.md"
    atomic_write_bytes(path, render_report(results, plots).encode())
    return path
