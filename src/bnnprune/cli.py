"""`bnnprune` command line: thin wrappers that parse, call the library and print.

User mistakes (bad flags, missing data, damaged files) end with a one-line message on stderr
and exit code 2 (set BNNPRUNE_DEBUG=1 to see the traceback instead).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bnnprune.config import ConfigError, ExperimentConfig, PruneConfig, load_config
from bnnprune.data import DATASETS, DatasetError, dataset_shape, load_dataset, load_from_config
from bnnprune.lock import FolderBusy, hold_folder
from bnnprune.models import MODELS, build_from_config, build_model
from bnnprune.prune.policies import DEFAULTS, POLICIES
from bnnprune.prune.sensitivity import DEFAULT_THRESHOLD
from bnnprune.train import (
    CheckpointError,
    TrainingError,
    dist,
    evaluate,
    load_model,
    resolve_device,
    train,
)

EXIT_USAGE = 2


class CliError(Exception):
    """A user mistake found by the CLI itself."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        raise CliError(f"{self.prog}: {message}")


def _epilog(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# --------------------------------------------------------------------------- shared flags


def _add_experiment_flags(p: argparse.ArgumentParser) -> None:
    """The [model], [data] and [train] flags: each sets the config key named by its dest."""
    p.add_argument("--config", help="TOML file with [model], [data], [train] tables")
    g = p.add_argument_group("model")
    g.add_argument("--model", dest="model.name",
                   help=f"one of: {', '.join(sorted(MODELS))}, or your own factory as "
                   "package.module:function (see docs/own-models.md)")
    g.add_argument("--model-kwargs", dest="model.kwargs", metavar="JSON",
                   help='keyword arguments of the model, e.g. \'{"width": 2}\'')
    g.add_argument("--width", dest="model.width", type=float,
                   help="width multiplier (1.0 = paper size)")
    g.add_argument("--pad-value", dest="model.pad_value", type=float, choices=[1.0, -1.0],
                   help="binary padding value of binary convolutions")
    g.add_argument("--scale", dest="model.scale", action="store_const", const=True,
                   help="per-channel weight scale mean|w| (XNOR-Net)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", dest="data.name", help=f"one of: {', '.join(DATASETS)}")
    g.add_argument("--data-dir", dest="data.root",
                   help="folder (or CIFAR-10 .tar.gz) holding the data")
    g.add_argument("--download", dest="data.download", action="store_const", const=True,
                   help="download the dataset (checksum verified) if it is not found")
    g.add_argument("--train-subset", dest="data.train_subset", type=int,
                   help="use N training images")
    g.add_argument("--test-subset", dest="data.test_subset", type=int, help="use N test images")
    g.add_argument("--no-augment", dest="data.augment", action="store_const", const=False)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", dest="train.epochs", type=int)
    g.add_argument("--batch-size", dest="train.batch_size", type=int)
    g.add_argument("--lr", dest="train.lr", type=float, help="Adam learning rate")
    g.add_argument("--schedule", dest="train.schedule", choices=["cosine", "step", "constant"])
    g.add_argument("--track-last", dest="train.track_last", type=int,
                   help="pruning interval: record flips over the last K epochs (0: off)")
    g.add_argument("--seed", dest="train.seed", type=int)
    g.add_argument("--device", dest="train.device",
                   help="auto (CUDA when present), cpu, cuda:0, ...")


def _experiment_config(args: argparse.Namespace, cls: type = ExperimentConfig) -> Any:
    """Defaults <- config file <- command-line flags; then validate."""
    cfg = load_config(args.config, cls)
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            overrides.setdefault(section, {})[name] = value
    from bnnprune.config import apply_sections

    apply_sections(cfg, overrides)
    cfg.validate()
    return cfg


def _print_epoch(rec: dict[str, Any]) -> None:
    print(
        f"epoch {rec['epoch']:3d}  loss {rec['train_loss']:.4f}  train {rec['train_acc']:.2%}  "
        f"test {rec['test_acc']:.2%}  lr {rec['lr']:.2e}  {rec['seconds']:.1f}s",
        flush=True,
    )


def _check_out_dir(path: str | Path) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".bnnprune-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CliError(f"output folder {out} is not writable: {e.strerror or e}") from None
    return out


# --------------------------------------------------------------------------- commands


def _hold_output(stack: contextlib.ExitStack, out: Path, args: argparse.Namespace) -> Path:
    """Hold ``out`` until ``stack`` closes (one writer per folder; under torchrun rank 0
    holds it for all); a live holder makes this raise FolderBusy naming its PID."""
    held = stack.enter_context(hold_folder(out, " ".join(["bnnprune", *args.argv])[:200]))
    if held.took_over is not None:
        print(f"note: took over the lock of {out} left by {held.took_over.describe()}, "
              "which is no longer running", flush=True)
    return out


def _say(*parts: Any, **kw: Any) -> None:
    """print() on rank 0 only: under torchrun, one process speaks for all."""
    if dist.is_main():
        print(*parts, **kw)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _experiment_config(args)
    device = resolve_device(cfg.train.device)
    with dist.distributed_from_env(device), contextlib.ExitStack() as held:
        return _train(args, cfg, held)


def _train(args: argparse.Namespace, cfg: ExperimentConfig, held: contextlib.ExitStack) -> int:
    ds = dist.main_first(lambda: load_from_config(cfg.data, cfg.train.seed))
    model = build_from_config(cfg.model, ds, cfg.train.seed)
    out = dist.main_decides(lambda: _hold_output(held, _check_out_dir(args.output), args))
    world = dist.world_size()
    _say(
        f"model {cfg.model.label} on {ds.name}: "
        f"{len(ds.train_x)} train / {len(ds.test_x)} test images, device "
        f"{resolve_device(cfg.train.device)}" + (f" x {world} processes" if world > 1 else ""),
        flush=True,
    )
    t0 = time.perf_counter()
    res = train(
        model,
        ds,
        cfg.train,
        out_dir=out,
        resume=args.resume,
        progress=sys.stderr.isatty(),
        meta={"config": cfg.to_dict()},
        on_epoch=_print_epoch if dist.is_main() else None,
        augment_data=cfg.data.augment,
        tensorboard=args.tensorboard,
    )
    _say(f"test accuracy {res.test_acc:.2%}  wall time {time.perf_counter() - t0:.1f}s")
    _say(
        f"wrote {res.checkpoint} (model + flip data), {out / 'metrics.jsonl'}, "
        f"{out / 'flips.npz' if res.tracker else ''}".rstrip(", ")
    )
    return 0


def _dataset_for_checkpoint(ckpt: dict[str, Any], args: argparse.Namespace):
    info = ckpt.get("dataset") or {}
    name = args.dataset or info.get("name")
    if name is None:
        raise CliError("the checkpoint does not name its dataset: pass --dataset")
    ds = load_dataset(name, root=args.data_dir, test_subset=args.test_subset)
    want = tuple(info.get("input_shape", ds.input_shape))
    if tuple(ds.input_shape) != want or info.get("num_classes", ds.num_classes) != ds.num_classes:
        raise CliError(
            f"model expects inputs {want} with {info.get('num_classes')} classes; "
            f"{ds.name} has {tuple(ds.input_shape)} with {ds.num_classes}"
        )
    return ds


def cmd_eval(args: argparse.Namespace) -> int:
    model, ckpt = load_model(args.checkpoint)
    ds = _dataset_for_checkpoint(ckpt, args)
    device = resolve_device(args.device)
    model.to(device)
    info = ckpt.get("dataset") or {}
    mean, std = info.get("mean", ds.mean), info.get("std", ds.std)
    loss, acc = evaluate(model, ds.test_x, ds.test_y, mean, std, device=device)
    result = {
        "checkpoint": str(args.checkpoint),
        "dataset": ds.name,
        "images": len(ds.test_x),
        "loss": loss,
        "accuracy": acc,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{ds.name} test: accuracy {acc:.2%}  loss {loss:.4f}  ({len(ds.test_x)} images)")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from bnnprune.metrics import summarize

    target = args.model
    if Path(target).suffix == ".pt" or Path(target).is_file():
        model, ckpt = load_model(target)
        shape = tuple((ckpt.get("dataset") or {}).get("input_shape", ()))
        if not shape:
            raise CliError(f"{target} does not record its input shape")
    else:
        c, h, _w, k = dataset_shape(args.dataset)
        model = build_model(target, width=args.width, in_channels=c, num_classes=k, image_size=h)
        shape = (c, h, h)
    s = summarize(model, shape)
    print(json.dumps(s.to_dict(), indent=2) if args.json else s.to_text())
    return 0


def _flip_source(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in ("model.pt", "checkpoint.pt"):
            if (p / name).is_file():
                return p / name
        raise CliError(f"{p} holds no model.pt or checkpoint.pt")
    return p


def cmd_flips(args: argparse.Namespace) -> int:
    from bnnprune.atomic import atomic_write_bytes
    from bnnprune.flips import FlipTracker
    from bnnprune.prune import flip_table
    from bnnprune.report.plots import write_flip_plots

    src = _flip_source(args.run)
    model, ckpt = load_model(src)
    if not ckpt.get("flips"):
        raise CliError(f"{src} has no flip data: train with --track-last K (K >= 1) to record it")
    try:
        tracker = FlipTracker.from_state(model, ckpt["flips"])
    except (KeyError, ValueError) as e:
        raise CliError(f"{src}: flip data does not match the model ({e})") from None
    out = _check_out_dir(args.output or (src.parent / "flips"))
    table = flip_table(tracker, model, threshold=args.threshold)
    lo, hi = table.window
    print(
        f"flip window: steps {lo}..{hi} ({table.steps} steps recorded); "
        f"insensitive = more than {args.threshold} flips"
    )
    header = (
        f"{'layer':<22}{'weights':>10}{'channels':>9}{'flipped':>9}{'p_l':>8}{'mean WFF':>10}"
        "  flip ratio per epoch"
    )
    print(header)
    print("-" * len(header))
    for row in table.layers:
        ratios = " ".join(f"{r:.1e}" for r in row["epoch_flip_ratio"])
        print(
            f"{row['layer']:<22}{row['weights']:>10}{row['channels']:>9}{row['flipped']:>9.2%}"
            f"{row['p']:>8.2%}{row['mean_wff']:>10.2e}  {ratios}"
        )
    plots = write_flip_plots(tracker, out)
    atomic_write_bytes(out / "flips.json", json.dumps(table.to_dict(), indent=2).encode())
    print(f"wrote {', '.join(map(str, plots))}, {out / 'flips.json'}")
    return 0


def _print_channels(rows: Iterable[tuple[str, int, int]]) -> None:
    """The channel table: layer, channels before and after pruning."""
    print(f"{'layer':<22}{'before':>8}{'after':>8}")
    for name, before, after in rows:
        print(f"{name:<22}{before:>8}{after:>8}")


def _print_plan(plan: Any) -> None:
    _print_channels((name, plan.channels[name], after) for name, after in plan.keep.items())
    print(
        f"BOPs {plan.bops_before / 1e6:.3f} M -> {plan.bops_after / 1e6:.3f} M "
        f"({plan.reduction:.1%} fewer), float MACs {plan.float_macs_before / 1e6:.3f} M -> "
        f"{plan.float_macs_after / 1e6:.3f} M"
    )
    if plan.latency is not None:
        lat = plan.latency
        print(f"predicted engine latency (batch {lat['batch']}, {lat['threads']} thread(s)) "
              f"{lat['predicted_before_s'] * 1e3:.3f} ms -> {lat['predicted_after_s'] * 1e3:.3f}"
              f" ms = {lat['ratio']:.3f} of the unpruned")
    if plan.budget is not None:
        from bnnprune.prune.budget import format_budget

        print("\n".join(format_budget(plan.budget)))
    for note in plan.notes():
        print(f"note: {note}")


def cmd_prune(args: argparse.Namespace) -> int:
    from bnnprune.checkpoint import save_pruned
    from bnnprune.prune import RECORD_HINT, PlanOptions, prune_trained
    from bnnprune.prune.methods import Method
    from bnnprune.prune.policies import get_policy, taking
    from bnnprune.prune.resolve import default_criterion, default_policy
    from bnnprune.train import fine_tune_config

    budget = _device_budget(args)
    goals = [flag for flag, v in (("--target-bops", args.target_bops),
                                  ("--target-latency", args.target_latency),
                                  (BUDGET_FLAGS, budget)) if v is not None]
    if len(goals) > 1:
        raise CliError(f"give one of {', '.join(goals)}, not {len(goals)}")
    model, ckpt = load_model(args.checkpoint)
    info = ckpt.get("dataset") or {}
    shape = tuple(info.get("input_shape", ()))
    if len(shape) != 3:
        raise CliError(f"{args.checkpoint} does not record its input shape")
    if min(args.latency_batch, args.latency_threads) < 1:
        raise CliError("--latency-batch and --latency-threads must be >= 1")
    policy = default_policy(bool(goals)) if args.policy is None else args.policy
    criterion = default_criterion(policy) if args.criterion is None else args.criterion
    if args.target_latency is not None and "latency" not in get_policy(policy).targets:
        raise CliError(f"--target-latency needs --policy {taking('latency')}")
    if budget is not None and "budget" not in get_policy(policy).targets:
        raise CliError(f"{BUDGET_FLAGS} need --policy {taking('budget')}")
    method = Method(policy, criterion)
    method.require(bool(ckpt.get("flips")), fix=f"{args.checkpoint} has none; {RECORD_HINT}")
    # e.g. tp:taylor: gradients on a few training batches
    data = _dataset_for_checkpoint(ckpt, args) if method.needs_data else None
    options = PlanOptions(round_to=args.round_to, min_channels=args.min_channels,
                          exclude=[x for x in (args.exclude or "").split(",") if x],
                          keep_fp=args.keep_fp)
    plan, pruned = prune_trained(
        model, ckpt.get("flips"), method, shape, target=args.target_bops,
        target_latency=args.target_latency, budget=budget, options=options,
        threshold=args.threshold,
        latency_batch=args.latency_batch, latency_threads=args.latency_threads,
        seed=args.seed, data=data, progress=lambda s: _say(s, flush=True))
    _print_plan(plan)
    out = _check_out_dir(args.output)
    meta = {"plan": plan.to_dict(), "source": str(args.checkpoint)}
    if args.retrain_epochs > 0:
        ds = _dataset_for_checkpoint(ckpt, args)
        tcfg = fine_tune_config(ckpt.get("train_config"), args.retrain_epochs, args.lr,
                                args.track_last)
        res = train(pruned, ds, tcfg, out_dir=out, progress=sys.stderr.isatty(), meta=meta,
                    on_epoch=_print_epoch)
        print(f"retrained {args.retrain_epochs} epochs: test accuracy {res.test_acc:.2%}")
    else:
        save_pruned(out / "model.pt", pruned, ckpt, meta)
    print(f"wrote {out / 'model.pt'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bnnprune.config import RunConfig
    from bnnprune.prune.resolve import resolve_run

    cfg = _experiment_config(args, RunConfig)
    resolve_run(cfg)  # the methods and their data needs, before the output folder is held
    with contextlib.ExitStack() as held:  # one writer per run folder, until the report is out
        return _run(args, cfg, held)


def _run(args: argparse.Namespace, cfg: Any, held: contextlib.ExitStack) -> int:
    from bnnprune.pipeline import run_pipeline
    from bnnprune.report.markdown import methods_table, speed_table, write_report
    from bnnprune.report.plots import write_flip_plots

    with dist.distributed_from_env(resolve_device(cfg.train.device)):
        out = dist.main_decides(lambda: _hold_output(held, _check_out_dir(args.output), args))
        t0 = time.perf_counter()
        results = run_pipeline(
            cfg, out, log=lambda s: _say(s, flush=True), progress=sys.stderr.isatty(),
            on_baseline=write_flip_plots, tensorboard=args.tensorboard,
        )
        main = dist.is_main()
    if not main:
        return 0
    report = write_report(results, out)
    print()
    print("\n".join(methods_table(results)))
    print()
    speed = speed_table(results)
    if speed:
        print("engine speed and C footprint (see report.md for how they were measured)")
        print("\n".join(speed))
        print()
    base, final = results["baseline"], results["pruned"]
    _print_channels((name, c, final["channels"].get(name, c))
                    for name, c in base["channels"].items())
    print(
        f"\n{results['method']}: {results['bops_reduction']:.1%} fewer BOPs, accuracy "
        f"{base['test_acc']:.2%} -> {final['test_acc']:.2%} "
        f"(wall time {(time.perf_counter() - t0) / 60:.1f} min; one seed: see bnnprune sweep "
        "for multi-seed comparisons)"
    )
    print(f"wrote {out / 'results.json'}, {report} and plots in {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import shlex

    from bnnprune.config import SweepConfig
    from bnnprune.prune.resolve import resolve_sweep
    from bnnprune.report.primaries import write_primaries_report
    from bnnprune.report.sweep import write_sweep_report
    from bnnprune.sweep import run_sweep

    cfg = _experiment_config(args, SweepConfig)
    resolve_sweep(cfg)  # the methods and their data needs, before anything is written
    if args.list_cells or args.cell is not None:
        return _sweep_one_cell(args, cfg)
    with contextlib.ExitStack() as held:  # spawned cell workers run under this lock
        out = _hold_output(held, _check_out_dir(args.output), args)
        command = shlex.join(["bnnprune", *args.argv])
        results = run_sweep(cfg, out, jobs=args.jobs, log=lambda s: _say(s, flush=True),
                            progress=sys.stderr.isatty(), command=command,
                            compute=not args.report_only)
        # a pre-registered sweep (sweep.primaries) has its own page
        write = write_primaries_report if cfg.sweep.primaries else write_sweep_report
        report = write(results, out / "report.md")
        print(f"\nwrote {out / 'results.json'}, {report} and plots in {out}")
        if args.docs:
            docs, name = Path(args.docs), cfg.sweep.page
            page = write(results, docs / f"{name}.md", docs / name,
                         docs_command=shlex.join(_docs_command(args)))
            print(f"wrote {page} and plots in {docs / name}")
    print(f"wall time {results['invocations'][-1]['wall_seconds'] / 60:.1f} min")
    return 0


def _sweep_one_cell(args: argparse.Namespace, cfg: Any) -> int:
    """--list-cells / --cell K: workers of a batch system share the sweep folder, so neither
    holds it; --cell claims its baseline and cell folders instead."""

    from bnnprune.sweep import cell_status, compute_cell

    if args.jobs != 1 or args.docs:
        raise CliError("--jobs and --docs apply to a whole sweep, not to --list-cells or --cell")
    if args.list_cells:
        status = cell_status(cfg, args.output)
        for i, (cell, done) in enumerate(status):
            print(f"{i}\t{cell.folder}\t{'finished' if done else 'pending'}")
        n, done = len(status), sum(d for _, d in status)
        print(f"{n} cells, {done} finished (SLURM: #SBATCH --array=0-{n - 1})", file=sys.stderr)
        return 0
    out = _check_out_dir(args.output)
    compute_cell(cfg, out, args.cell, log=lambda s: print(s, flush=True))
    return 0


def _docs_command(args: argparse.Namespace) -> list[str]:
    """The command that writes the page, as the page quotes it: the same flags without
    --jobs / --report-only / -o, which change neither the records nor the page."""
    out, skip = [], 0
    for a in args.argv:
        if skip:
            skip -= 1
        elif a in ("--jobs", "-o", "--output"):
            skip = 1
        elif a != "--report-only" and not a.startswith(("--jobs=", "--output=")):
            out.append(a)
    return ["bnnprune", *out]


def _print_report(report: Any) -> None:
    """A deploy target's lines; a fault it found after writing becomes the error."""
    print("\n".join(report.lines))
    if report.error:
        raise CliError(report.error)


def cmd_export(args: argparse.Namespace) -> int:
    from bnnprune.deploy import DEPLOY_TARGETS, EXPORT_FORMATS, from_checkpoint

    net = from_checkpoint(args.checkpoint)
    out = Path(args.output)
    if out.parent and not out.parent.exists():
        raise CliError(f"output folder {out.parent} does not exist")
    target = DEPLOY_TARGETS[args.format]
    options: dict[str, Any] = {k: v for k, v in (
        ("baseline", args.baseline), ("target", args.target), ("finn", args.finn),
        ("input_scale", args.input_scale)) if v}
    for name in options:  # every input is checked before anything is compiled
        if name not in target.options:
            takers = [f for f in EXPORT_FORMATS if name in DEPLOY_TARGETS[f].options]
            raise CliError(f"--{name.replace('_', '-')} applies to --format "
                           f"{' or '.join(takers)} only")
    target.check(out, **options)
    if "baseline" in options:
        options["baseline"] = from_checkpoint(options["baseline"])
    _print_report(target.export(net, out, **options))
    return 0


def cmd_fpga_estimate(args: argparse.Namespace) -> int:
    from bnnprune.deploy import DEPLOY_TARGETS, load_deployable

    pe_simd = None
    if args.pe_simd != "auto":
        try:
            pe_simd = tuple(int(v) for v in args.pe_simd.split(","))
        except ValueError:
            pe_simd = ()
        if len(pe_simd) != 2:
            raise CliError(f"--pe-simd must be 'auto' or P,S (two integers), got {args.pe_simd!r}")
        if args.target_fps is not None:
            raise CliError("give --target-fps or --pe-simd P,S, not both")
    if args.estimator == "finn" and pe_simd:
        raise CliError("--estimator finn folds for --target-fps (FINN's SetFolding), not --pe-simd")
    baseline = load_deployable(args.baseline) if args.baseline else None
    net = load_deployable(args.model)
    _print_report(DEPLOY_TARGETS["fpga"].export(
        net, args.json, baseline=baseline, target_fps=args.target_fps, pe_simd=pe_simd,
        clock_mhz=args.clock_mhz, ram_style=args.ram_style, fp_bits=args.fp_bits,
        search=args.search, estimator=args.estimator))
    return 0


def _emit(result: dict[str, Any], text: str, json_to: str | None) -> None:
    """``--json``: '-' prints only JSON; a file name prints ``text`` and writes the file."""
    from bnnprune.atomic import atomic_write_bytes

    if json_to == "-":
        print(json.dumps(result, indent=2))
        return
    print(text)
    if json_to:
        atomic_write_bytes(json_to, json.dumps(result, indent=2).encode())
        print(f"wrote {json_to}")


def _csv(kind: Any) -> Any:
    """An argparse type: a comma-separated list of ``kind``."""
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return values
    return parse


def _bench_torch(args: argparse.Namespace) -> int:
    """``bench MODEL.pt --baseline UNPRUNED.pt``: both models timed in PyTorch."""
    from bnnprune import torchbench
    from bnnprune.checkpoint import load_model, recorded_input_shape

    device = resolve_device(args.device or "auto")  # before anything loads
    batches = args.batches or torchbench.DEFAULT_BATCHES
    torchbench.check_request(device, args.dtypes, args.modes, batches, args.repeats)
    if args.compare:
        raise CliError("--compare times a .bnn program against its model.pt; for a model.pt "
                       "give --baseline UNPRUNED.pt")
    if not args.baseline:
        raise CliError(f"bench {args.program} times a pruned model against its unpruned one: "
                       "give --baseline UNPRUNED.pt")
    pruned, ckpt = load_model(args.program)
    unpruned, base_ckpt = load_model(args.baseline)
    shapes = [recorded_input_shape(c) for c in (ckpt, base_ckpt)]
    if len(shapes[0]) != 3 or shapes[0] != shapes[1]:
        raise CliError(f"{args.program} and {args.baseline} must record the same input shape "
                       f"(C, H, W), got {shapes[0]} and {shapes[1]}")
    if ckpt["arch"].get("name") != base_ckpt["arch"].get("name"):
        raise CliError(f"{args.program} ({ckpt['arch'].get('name')}) is not a pruned copy of "
                       f"{args.baseline} ({base_ckpt['arch'].get('name')})")
    result = torchbench.compare_models(
        pruned, unpruned, shapes[0], device=device, dtypes=args.dtypes, modes=args.modes,
        batches=batches, repeats=args.repeats)
    _emit(result, torchbench.format_comparison(result), args.json)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bnnprune import engine
    from bnnprune.checkpoint import load_model, recorded_input_shape
    from bnnprune.deploy import is_bnn_file, load_program
    from bnnprune.engine.program import is_pruned_copy

    if not is_bnn_file(args.program):
        return _bench_torch(args)
    if args.device or args.dtypes or args.modes or args.batches:
        raise CliError("--device, --dtypes, --modes and --batches time a model.pt in PyTorch; "
                       f"{args.program} is a .bnn program (the packed CPU engine)")
    program = load_program(args.program)
    shape = tuple(program.input_shape)
    compare = None
    if args.compare:  # every input is checked before minutes of measuring start
        compare, ckpt = load_model(args.compare)
        want = recorded_input_shape(ckpt) or shape
        if want != shape:
            raise CliError(f"{args.compare} takes input shape {want}, {args.program} takes {shape}")
    baseline = None
    if args.baseline:
        baseline = load_program(args.baseline)
        if tuple(baseline.input_shape) != shape:
            raise CliError(
                f"baseline {args.baseline} has input shape {tuple(baseline.input_shape)}, "
                f"{args.program} has {shape}"
            )
    if args.repeats < 1:
        raise CliError(f"--repeats must be >= 1, got {args.repeats}")
    if baseline is not None and not is_pruned_copy(program, baseline):
        raise CliError(f"{args.program} is not a channel-pruned copy of {args.baseline} "
                       "(their ops differ)")
    result = engine.benchmark(program, compare, baseline=baseline, repeats=args.repeats)
    result["file_bytes"] = Path(args.program).stat().st_size
    if baseline is not None:  # interleaved at batch 1 and 64, ratios, share of the limit
        from bnnprune.engine.bench import compare_pair, format_pair

        result["pair"] = compare_pair(program, baseline, repeats=args.repeats,
                                      table_repeats=max(1, args.repeats // 4))
    text = engine.format_benchmark(result)
    if "pair" in result:
        text += "\n\n" + format_pair(result["pair"])
    _emit(result, text, args.json)
    return 0


BUDGET_FLAGS = "--flash-budget/--ram-budget/--insn-budget"  # a device budget, in messages


def _budget_bytes(text: str) -> int:
    """--flash-budget / --ram-budget: a whole number of bytes >= 1, else a usage error."""
    from bnnprune.prune.budget import check_budget

    try:
        return check_budget(text, "device")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _budget_insns(text: str) -> int:
    """--insn-budget: a whole number of instructions >= 1, else a usage error."""
    from bnnprune.prune.budget import check_budget

    try:
        return check_budget(text, "insns")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _device_budget(args: argparse.Namespace) -> Any:
    """The Budget of --flash-budget / --ram-budget / --insn-budget with --mcu, None without
    any; an instruction budget needs the Cortex-M toolchain and qemu (checked here, before
    the table's firmware runs)."""
    if args.mcu is not None and args.insn_budget is None:
        raise CliError("--mcu names the core of --insn-budget; give both")
    from bnnprune.engine.errors import EngineError
    from bnnprune.prune.budget import device_budget

    try:
        return device_budget(args.flash_budget, args.ram_budget, args.insn_budget, args.mcu)
    except (ValueError, EngineError) as e:
        raise CliError(str(e)) from None


def _latency_target(text: str) -> float:
    """--target-latency: a fraction in (0, 1), else a one-line usage error."""
    from bnnprune.prune.latency import check_latency_target

    try:
        return check_latency_target(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


ROUND_TO_HELP = ("channel counts: 'auto' (default) keeps counts the engine's kernels pay for "
                 "(8-channel output vectors, 64-bit input words); N keeps multiples of N")


def _round_to(text: str) -> int | str:
    """--round-to: 'auto' or a whole number >= 1, else a one-line usage error."""
    from bnnprune.prune.policies import check_round_to

    try:
        return check_round_to(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_prune_flags(p: argparse.ArgumentParser, method: bool = True) -> None:
    """Pruning flags; ``method=False`` leaves out those choosing one method (sweep)."""
    g = p.add_argument_group("pruning")
    if method:
        g.add_argument("--policy", dest="prune.policy", choices=list(POLICIES))
        g.add_argument("--target-bops", dest="prune.target", type=float,
                       help="BOPs reduction to reach, in (0, 1) (target and uniform policies)")
        g.add_argument("--target-latency", dest="prune.target_latency", type=_latency_target,
                       help="prune to this fraction of the unpruned engine latency, in (0, 1)")
        g.add_argument("--flash-budget", dest="prune.flash_budget", type=_budget_bytes,
                       metavar="BYTES", help="prune until the C export's const data fits "
                       "(replaces the BOPs target)")
        g.add_argument("--ram-budget", dest="prune.ram_budget", type=_budget_bytes,
                       metavar="BYTES", help="prune until the C export's scratch arena fits")
        g.add_argument("--insn-budget", dest="prune.insn_budget", type=_budget_insns,
                       metavar="N", help="prune until the instructions per inference on "
                       "--mcu fit (counted under qemu emulation, not cycles)")
        g.add_argument("--mcu", dest="prune.mcu", metavar="CORE",
                       help="the Cortex-M core of --insn-budget (e.g. cortex-m4)")
        g.add_argument("--latency-batch", dest="prune.latency_batch", type=int,
                       help="batch size of the latency target (default 1)")
        g.add_argument("--latency-threads", dest="prune.latency_threads", type=int,
                       help="engine threads of the latency target (default 1)")
        g.add_argument("--criterion", dest="prune.criterion",
                       help="which channels go: wff, random, magnitude, bn_scale, tp:NAME "
                       "(tp:taylor, tp:lamp, ...) or pkg.module:Class")
    g.add_argument("--threshold", dest="prune.threshold", type=int,
                   help="insensitive = flipped more than this many times")
    g.add_argument("--round-to", dest="prune.round_to", type=_round_to, help=ROUND_TO_HELP)
    g.add_argument("--min-channels", dest="prune.min_channels", type=int)
    g.add_argument("--exclude", dest="prune.exclude", help="comma-separated layers not to prune")
    g.add_argument("--keep-fp", dest="prune.keep_fp", action="store_const", const=True,
                   help="do not prune full-precision layers that feed only binary layers")
    if method:
        g.add_argument("--max-rounds", dest="prune.max_rounds", type=int,
                       help="paper policy rounds")
    g.add_argument("--retrain-epochs", dest="prune.retrain_epochs", type=int)
    g.add_argument("--retrain-lr", dest="prune.retrain_lr", type=float)
    g.add_argument("--from-scratch", dest="prune.from_scratch", action="store_const",
                   const=True, help="retrain pruned models from a fresh initialisation")
    if method:
        g.add_argument("--compare", dest="prune.compare",
                       help="methods pruned to the same BOPs: uniform,random,magnitude,"
                       "bn_scale,wff")
    g.add_argument("--no-budget-baseline", dest="prune.budget_baseline", action="store_const",
                   const=False, help="skip training the unpruned model for the same budget")
    if method:
        g.add_argument("--no-speed", dest="prune.speed", action="store_const", const=False,
                       help="do not time the models on the packed engine nor compute their "
                       "C flash/RAM")


# --------------------------------------------------------------------------- parser


def _command(sub: Any, name: str, func: Any, help: str, *examples: str) -> Any:
    """A subcommand that runs ``func``, with its one-line help and its examples as epilog."""
    p = sub.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=_epilog(*examples))
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from bnnprune.deploy import EXPORT_FORMATS

    p = _Parser(
        prog="bnnprune",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = _command(sub, "train", cmd_train, "train a BNN and record weight flips",
                 "bnnprune train -o runs/a",
                 "bnnprune train --model nin --width 0.25 --dataset fashion-mnist "
                 "--epochs 5 --track-last 2 -o runs/a",
                 "bnnprune train --config experiments/nin_cifar10.toml "
                 "--data-dir ~/data/cifar10 -o runs/nin",
                 "bnnprune train -o runs/a --resume   # continue after a crash",
                 "bnnprune train --model mypkg.nets:build_bnn --model-kwargs "
                 "'{\"width\": 2}' -o runs/m")
    _add_experiment_flags(t)
    t.add_argument("-o", "--output", required=True, help="run folder (checkpoints, logs, model.pt)")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    t.add_argument("--tensorboard", metavar="DIR",
                   help="log loss, accuracy, lr, flip ratios and flip histograms to DIR "
                   "(pip install 'bnnprune[tensorboard]')")

    e = _command(sub, "eval", cmd_eval, "test accuracy of a saved model",
                 "bnnprune eval runs/a/model.pt",
                 "bnnprune eval runs/a/model.pt --dataset fashion-mnist --json")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", help="default: the dataset the model was trained on")
    e.add_argument("--data-dir")
    e.add_argument("--test-subset", type=int)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")

    s = _command(sub, "summary", cmd_summary,
                 "per-layer table: precision, params, memory, BOPs, float MACs",
                 "bnnprune summary nin --dataset cifar10",
                 "bnnprune summary small --width 0.5",
                 "bnnprune summary runs/a/model.pt --json")
    s.add_argument("model", help="zoo model name or a saved model.pt")
    s.add_argument("--dataset", default="cifar10", help="input shape of this dataset (zoo models)")
    s.add_argument("--width", type=float, default=1.0)
    s.add_argument("--json", action="store_true")

    f = _command(sub, "flips", cmd_flips,
                 "flip statistics, histograms and flip-ratio plots of a run",
                 "bnnprune flips runs/a", "bnnprune flips runs/a/model.pt -o plots")
    f.add_argument("run", help="run folder or checkpoint with flip data")
    f.add_argument("-o", "--output", help="folder for plots and flips.json (default RUN/flips)")
    f.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD,
                   help="a weight is insensitive when it flipped more than this many times")

    pr = _command(sub, "prune", cmd_prune, "prune a trained model with its recorded flip data",
                  "bnnprune prune runs/a/model.pt --policy paper -o runs/a-pruned",
                  "bnnprune prune runs/a/model.pt --target-bops 0.4 --round-to 32 -o runs/b",
                  "bnnprune prune runs/a/model.pt --target-bops 0.5 --retrain-epochs 2 -o runs/c",
                  "bnnprune prune runs/a/model.pt --policy uniform --flash-budget 40000 -o runs/d",
                  "bnnprune prune runs/a/model.pt --policy uniform --insn-budget 6000000 "
                  "--mcu cortex-m4 -o runs/e")
    pr.add_argument("checkpoint")
    pr.add_argument("-o", "--output", required=True)
    pr.add_argument("--policy", choices=list(POLICIES), default=None)
    pr.add_argument("--target-bops", type=float, help="BOPs reduction in (0, 1)")
    pr.add_argument("--target-latency", type=_latency_target,
                    help="fraction of the unpruned engine latency to reach, in (0, 1)")
    pr.add_argument("--flash-budget", type=_budget_bytes, metavar="BYTES",
                    help="prune until the C export's const data (MODEL_FLASH_BYTES) fits")
    pr.add_argument("--ram-budget", type=_budget_bytes, metavar="BYTES",
                    help="prune until the C export's scratch arena (MODEL_SCRATCH_BYTES) fits")
    pr.add_argument("--insn-budget", type=_budget_insns, metavar="N",
                    help="prune until the C export's instructions per inference on --mcu "
                    "(counted under qemu emulation, not cycles) fit")
    pr.add_argument("--mcu", metavar="CORE", default=None,
                    help="the Cortex-M core of --insn-budget (e.g. cortex-m4; docs/deploy.md "
                    "lists them)")
    pr.add_argument("--latency-batch", type=int, default=PruneConfig.latency_batch,
                    help="batch size the latency target is measured at")
    pr.add_argument("--latency-threads", type=int, default=PruneConfig.latency_threads,
                    help="engine threads the latency target is measured at")
    pr.add_argument("--criterion", default=None,
                    help="wff, random, magnitude, bn_scale, flip_magnitude, tp:NAME (tp:taylor, "
                    "tp:lamp, ...) or pkg.module:Class (default: wff with the paper policy, "
                    "else the default of bnnprune run)")
    pr.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD)
    pr.add_argument("--round-to", type=_round_to, default=DEFAULTS.round_to,
                    help=ROUND_TO_HELP)
    pr.add_argument("--min-channels", type=int, default=DEFAULTS.min_channels)
    pr.add_argument("--exclude", help="comma-separated layer names not to prune")
    pr.add_argument("--keep-fp", action="store_true",
                    help="do not prune full-precision layers that feed only binary layers")
    pr.add_argument("--seed", type=int, default=0, help="seed of the random criterion")
    pr.add_argument("--retrain-epochs", type=int, default=0, help="fine-tune after pruning")
    pr.add_argument("--lr", type=float, default=PruneConfig.retrain_lr,
                    help="fine-tuning learning rate")
    pr.add_argument("--track-last", type=int, default=1, help="flip tracking while fine-tuning")
    pr.add_argument("--dataset")
    pr.add_argument("--data-dir")
    pr.add_argument("--test-subset", type=int)

    r = _command(sub, "run", cmd_run,
                 "the main job: train, prune by flip frequency, retrain, compare, report",
                 "bnnprune run",
                 "bnnprune run --policy paper -o runs/paper",
                 "bnnprune run --config experiments/nin_cifar10.toml "
                 "--data-dir ~/data/cifar10 --compare uniform,random,magnitude")
    _add_experiment_flags(r)
    _add_prune_flags(r)
    r.add_argument("-o", "--output", default="runs/run", help="run folder (default runs/run)")
    r.add_argument("--tensorboard", metavar="DIR",
                   help="one TensorBoard run per training phase under DIR (loss, accuracy, lr, "
                   "flip ratios, flip histograms; pip install 'bnnprune[tensorboard]')")

    sw = _command(sub, "sweep", cmd_sweep,
                  "evidence: methods x BOPs reductions x seeds, premise check, engine speed",
                  "bnnprune sweep --config experiments/sweep_fashion_mnist.toml --jobs 2 "
                  "--docs docs",
                  "bnnprune sweep --seeds 0 --reductions 0.3 --methods target+wff,target+random",
                  "bnnprune sweep --config C.toml -o /shared/s --list-cells",
                  "bnnprune sweep --config C.toml -o /shared/s --cell $SLURM_ARRAY_TASK_ID")
    _add_experiment_flags(sw)
    _add_prune_flags(sw, method=False)
    g = sw.add_argument_group("sweep")
    g.add_argument("--reductions", dest="sweep.reductions",
                   help="comma-separated BOPs reductions, e.g. 0.2,0.3,0.4,0.5")
    g.add_argument("--methods", dest="sweep.methods",
                   help="comma-separated policy+criterion, e.g. paper,target+wff,uniform")
    g.add_argument("--seeds", dest="sweep.seeds", help="comma-separated seeds, e.g. 0,1,2")
    g.add_argument("--flip-percents", dest="sweep.flip_percents",
                   help="premise check: comma-separated %% of weights to flip")
    g.add_argument("--no-speed", dest="sweep.speed", action="store_const", const=False,
                   help="do not time the pruned models on the packed engine")
    g.add_argument("--jobs", type=int, default=1,
                   help="cells trained in parallel processes (each gets cores/jobs threads)")
    g.add_argument("--docs", help="also write DIR/results.md and DIR/results/*.png")
    g.add_argument("--records", dest="sweep.records",
                   help="folder of the cells' JSON records (commit it; a fresh clone resumes)")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--report-only", action="store_true",
                     help="train and time nothing: write the page from the finished records")
    one.add_argument("--list-cells", action="store_true",
                     help="print every cell (index, folder, finished or pending) and stop")
    one.add_argument("--cell", type=int, metavar="K",
                     help="compute cell K of --list-cells alone (its baseline first when "
                     "missing): one job of a SLURM array; see docs/scaling.md")
    sw.add_argument("-o", "--output", default="runs/sweep",
                    help="sweep folder (default runs/sweep)")

    x = sub.add_parser(
        "export",
        help="compile a saved model to the packed .bnn engine (or ONNX, or C)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(
            "bnnprune export runs/run/pruned/model.pt -o model.bnn",
            "bnnprune export runs/a/model.pt --format onnx -o model.onnx",
            "bnnprune export runs/b/model.pt --format c -o out/ --baseline runs/a/model.pt",
            "bnnprune export runs/b/model.pt --format c -o out/ --target cortex-m4 "
            "--baseline runs/a/model.pt",
            "bnnprune export runs/a/model.pt --format qonnx -o model.onnx   # for FINN",
        ),
    )
    x.add_argument("checkpoint")
    x.add_argument("-o", "--output", required=True, help="file, or folder for --format c")
    x.add_argument("--format", choices=list(EXPORT_FORMATS), default="bnn",
                   help="c: dependency-free C99 (model.c/.h, kernels, host main.c); "
                        "qonnx: bipolar weights and threshold activations for FINN")
    x.add_argument("--baseline", help="--format c: unpruned model.pt whose footprint to compare")
    x.add_argument("--target", metavar="CORE",
                   help="--format c: a Cortex-M core (e.g. cortex-m4; docs/deploy.md lists "
                        "them): also write an mps2 board example for it "
                        "and print its code bytes and instructions per inference, counted "
                        "under qemu (needs arm-none-eabi-gcc and qemu-system-arm)")
    x.add_argument("--finn", action="store_true",
                   help="--format qonnx: FINN's hardware form (0/1 activations, borders as "
                        "FMPadding; docs/fpga.md)")
    x.add_argument("--input-scale", type=float, metavar="S",
                   help="--format qonnx: an 8-bit input quantizer of step S and 8-bit "
                        "first-layer weights (docs/fpga.md)")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser(
        "bench",
        help="latency/throughput of a .bnn program, or of a model.pt in PyTorch (GPU), "
             "with ratios",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(
            "bnnprune bench model.bnn --compare runs/a/model.pt",
            "bnnprune bench pruned.bnn --baseline unpruned.bnn --json bench.json",
            "bnnprune bench pruned.bnn --baseline unpruned.bnn --json   # JSON on stdout",
            "bnnprune bench pruned/model.pt --baseline model.pt --device cuda   # PyTorch, GPU",
        ),
    )
    b.add_argument("program", help=".bnn file (packed CPU engine), or model.pt (PyTorch)")
    b.add_argument("--compare", help="model.pt to time in PyTorch float eager on the same inputs")
    b.add_argument("--baseline", help="unpruned .bnn (or model.pt): pruned vs unpruned latency "
                   "and BOPs ratios")
    b.add_argument("--repeats", type=int, default=20)
    b.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="also write the measurements to FILE; without FILE print them as JSON "
                        "on stdout instead of the table")
    g = b.add_argument_group("PyTorch (a model.pt; defaults per device: docs/engine.md)")
    g.add_argument("--device", help="auto (CUDA when present; the default), cpu, cuda[:N]")
    g.add_argument("--dtypes", type=_csv(str), metavar="LIST",
                   help="comma list of float32, bfloat16, float16")
    g.add_argument("--modes", type=_csv(str), metavar="LIST",
                   help="comma list of eager, cudagraph, compile")
    g.add_argument("--batches", type=_csv(int), metavar="LIST", help="comma list of batch sizes")
    b.set_defaults(func=cmd_bench)

    fe = sub.add_parser(
        "fpga-estimate",
        help="FINN dataflow estimate: folding, cycles, LUT/BRAM per layer (not synthesis)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(
            "bnnprune fpga-estimate runs/run/pruned/model.pt --baseline runs/run/model.pt",
            "bnnprune fpga-estimate model.bnn --target-fps 3000 --clock-mhz 250",
            "bnnprune fpga-estimate pruned.pt --baseline model.pt --pe-simd 8,32",
        ),
    )
    fe.add_argument("model", help="model.pt checkpoint or .bnn program")
    fe.add_argument("--baseline", help="unpruned model.pt/.bnn to compare with")
    fe.add_argument("--target-fps", type=float, help="fold every layer for this throughput "
                    "(FINN SetFolding; default 1000)")
    fe.add_argument("--pe-simd", default="auto", help="'auto' (fold for --target-fps) or P,S: "
                    "the same PE/SIMD caps for every layer of both models")
    fe.add_argument("--search", choices=["min-lut", "finn"], default="min-lut",
                    help="folding search: cheapest legal PE/SIMD per layer, or FINN's SetFolding")
    fe.add_argument("--clock-mhz", type=float, default=200.0)
    fe.add_argument("--ram-style", choices=["block", "distributed"], default="block",
                    help="weights in BRAM (FINN default) or LUTRAM")
    fe.add_argument("--fp-bits", type=int, default=8,
                    help="bits assumed for full-precision layers (FINN needs them quantized)")
    fe.add_argument("--estimator", choices=["auto", "finn", "model"], default="auto",
                    help="FINN's own estimates (needs scripts/setup.sh --fpga and a -1 border), "
                         "bnnprune's cost model, or auto: FINN where it runs, else the model")
    fe.add_argument("--json", help="also write the estimate to this JSON file")
    fe.set_defaults(func=cmd_fpga_estimate)
    return p


USER_ERRORS = (
    CliError,
    ConfigError,
    DatasetError,
    CheckpointError,
    TrainingError,
    FolderBusy,
    ValueError,
    OSError,
)


def _fresh_output(args: argparse.Namespace) -> Path | None:
    """The topmost folder that ``-o/--output`` does not have yet (None: nothing to create)."""
    out = getattr(args, "output", None)
    if not out:
        return None
    path, top = Path(out).absolute(), None
    while not path.exists() and path != path.parent:
        path, top = path.parent, path
    return top


def _remove_if_empty(top: Path | None) -> None:
    """Undo folders this command created when it failed before writing any file into them."""
    if top is None or not top.is_dir() or dist.env_rank() != 0:
        return
    if not any(p.is_file() or p.is_symlink() for p in top.rglob("*")):
        shutil.rmtree(top, ignore_errors=True)


def _quiet_setup() -> None:
    """Plots render off-screen (the library never picks a backend); warnings are one line."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    warnings.formatwarning = lambda msg, *a, **k: f"bnnprune: warning: {msg}\n"


def main(argv: list[str] | None = None) -> int:
    fresh: Path | None = None
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(argv)
        args.argv = argv
        _quiet_setup()
        if dist.env_world_size() > 1 and args.command not in ("train", "run"):
            raise CliError(
                f"bnnprune {args.command} runs in one process; start it without torchrun"
            )
        fresh = _fresh_output(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _remove_if_empty(fresh)
        print("bnnprune: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        _remove_if_empty(fresh)
        if os.environ.get("BNNPRUNE_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        rank = dist.env_rank()
        if rank == 0 or not getattr(e, "reported_by_rank0", False):  # torchrun: say it once
            tag = f"[rank {rank}] " if rank else ""
            print(f"bnnprune: error: {tag}{msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
