"""The engine's latency tables: one-op timing, the per-machine JSON cache (a corrupt file is
rebuilt), predictions from the tables, and plans searched against them. Timing runs only with
one repeat and nothing asserts on speed: synthetic tables stand in where numbers matter."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from bnnprune.engine import compile_model
from bnnprune.engine import latency as L
from bnnprune.engine.bench import program_float_macs
from bnnprune.metrics import summarize
from bnnprune.models import build_model
from bnnprune.prune import apply_plan, compute_sensitivity, make_plan
from bnnprune.prune.latency import check_latency_target, latency_model

SHAPE = (3, 32, 32)


def _nin(width: float = 0.125) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("nin", width=width).eval()


def _synthetic(block: int):
    """A deterministic stand-in for time_op: conv time grows with input and output channels
    in whole blocks of ``block``; other ops in proportion to their channels."""

    def up(c: int) -> int:
        return math.ceil(c / block) * block

    def fake(program, idx, cin, cout, batch, threads, repeats):
        op = program.ops[idx]
        v = program.values[op.output]
        if op.kind in L.CONV_KINDS:
            kh, kw = op.attrs["kernel"]
            return batch * v.h * v.w * up(cin) * kh * kw * up(cout) * 1e-9
        return batch * v.h * v.w * cout * 1e-10

    return fake


def _as_ratios(fake):
    """``time_op_ratios`` from a stand-in for one op's seconds: each count over full width."""

    def ratios(program, idx, counts, batch, threads, repeats):
        full = fake(program, idx, *L.op_channels(program, idx), batch, threads, repeats)
        return [fake(program, idx, *c, batch, threads, repeats) / full for c in counts]

    return ratios


@pytest.fixture(autouse=True)
def _time_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for the timing functions live in this process: tables are built here (the
    fresh-process path has its own test)."""
    monkeypatch.setattr(L, "kernels_compiled_here", lambda: False)


@pytest.fixture
def fake_timing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("BNNPRUNE_CACHE_DIR", str(tmp_path))  # fake times in their own cache

    def use(block: int) -> None:
        fake = _synthetic(block)

        def whole(program, batch, threads, repeats):  # the ops' sum and a fixed cost
            return 1e-5 + sum(fake(program, i, *L.op_channels(program, i), batch, threads, 1)
                              for i in range(len(program.ops)))

        def context(program, batch, threads, repeats):  # inside a run as alone
            return [fake(program, i, *L.op_channels(program, i), batch, threads, 1)
                    for i in range(len(program.ops))]

        monkeypatch.setattr(L, "time_op_ratios", _as_ratios(fake))
        monkeypatch.setattr(L, "time_program", whole)
        monkeypatch.setattr(L, "time_ops_in_context", context)
    return use


def test_corrupt_cache_file_is_rebuilt_and_then_reused(tmp_path: Path, monkeypatch) -> None:
    program = compile_model(_nin(), SHAPE)
    path = tmp_path / "machine.json"
    path.write_bytes(b"{not json\x00\xff")
    with pytest.warns(UserWarning, match="unreadable; rebuilding"):
        model = L.build_cost_model(program, batch=1, threads=1, repeats=1, cache=path)
    data = json.loads(path.read_text())
    assert data["version"] == L.CACHE_VERSION and data["kernels"] == L._kernels_fingerprint()
    # every op inside a run, and the program (at full width an op's ratio is 1: not timed)
    assert len(data["entries"]) == len(program.ops) + 1
    assert len(model.tables) == len(program.ops) and model.measured_s > 0

    def no_timing(*a, **k):
        raise AssertionError("timed again although the cache holds the entry")

    monkeypatch.setattr(L, "time_op_ratios", no_timing)
    monkeypatch.setattr(L, "time_program", no_timing)
    monkeypatch.setattr(L, "time_ops_in_context", no_timing)
    again = L.build_cost_model(program, batch=1, threads=1, repeats=1, cache=path)
    assert again.measured_s == model.measured_s
    # another shape of damage: valid JSON, wrong content
    path.write_text(json.dumps({"version": L.CACHE_VERSION, "entries": {"x": "fast"}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert L.LatencyCache(path).rebuilt and not L.LatencyCache(path).entries


def test_cache_from_other_kernels_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": L.CACHE_VERSION, "kernels": "other",
                                "entries": {"k": 1.0}}))
    cache = L.LatencyCache(path)
    assert cache.rebuilt and cache.entries == {}


def test_cache_file_lives_in_the_cache_folder_under_the_machine_key(monkeypatch,
                                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("BNNPRUNE_CACHE_DIR", str(tmp_path))
    path = L.cache_path()
    assert path.parent == tmp_path / "latency" and path.name == f"{L.machine_key()}.json"
    assert all(c.isalnum() or c in "-." for c in path.stem)


def test_predictions_follow_the_groups_of_a_pruned_copy_exactly(fake_timing) -> None:
    fake_timing(16)
    model = _nin()
    lm = latency_model(model, SHAPE, repeats=1)
    plan = make_plan(model, SHAPE, "uniform", target=0.3)
    keep = [plan.keep[g.planned[0]] for g in lm.space.groups]
    pruned = compile_model(apply_plan(model, plan, "magnitude").model.eval(), SHAPE)
    assert lm.counts(keep) == [L.op_channels(pruned, i) for i in range(len(pruned.ops))]
    assert lm.predict(keep) == pytest.approx(lm.engine.predict(pruned))
    assert lm.predict(lm.full) == pytest.approx(lm.engine.measured_s)  # calibrated to it
    assert lm.engine.overhead_s == pytest.approx(1e-5)


@pytest.mark.parametrize("block", [8, 16])
def test_allowed_counts_are_the_table_plateaus(fake_timing, block: int) -> None:
    fake_timing(block)
    lm = latency_model(_nin(0.25), SHAPE, repeats=1, step=4)  # groups of 48 / 40 / 24 channels
    i = [g.name for g in lm.space.groups].index("bconv4")  # feeds 48 channels into bconv5
    allowed = lm.allowed(i)
    assert all(k % block == 0 for k in allowed) and allowed[-1] == 48
    assert lm.granularity(i) == block


def test_latency_plan_reaches_the_target_on_the_tables(fake_timing) -> None:
    fake_timing(16)
    model = _nin(0.25)
    lm = latency_model(model, SHAPE, repeats=1, step=4)
    torch.manual_seed(1)
    counts = {n: torch.randint(0, 3, m.weight.shape, dtype=torch.int32)
              for n, m in model.named_modules() if hasattr(m, "binarize_input")}
    sens = compute_sensitivity(counts, model, steps=20)
    plan = make_plan(model, SHAPE, "target", sensitivity=sens, target_latency=0.6,
                     latency_model=lm)
    assert plan.reached and plan.latency["ratio"] <= 0.6 + plan.tolerance
    keep = [plan.keep[g.planned[0]] for g in lm.space.groups]
    assert plan.latency["ratio"] == pytest.approx(lm.ratio(keep))
    assert all(plan.keep[g.planned[0]] in lm.allowed(i) for i, g in enumerate(lm.space.groups))
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["latency"]["target"] == 0.6 and d["latency"]["batch"] == 1
    pruned = apply_plan(model, plan, "wff", sens).model
    s = summarize(pruned, SHAPE)
    assert (s.bops, s.float_macs) == (plan.bops_after, plan.float_macs_after)


@pytest.mark.parametrize("bad", [0, 1, -0.5, 1.5, math.nan, math.inf, "fast", None, True])
def test_bad_latency_targets_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        check_latency_target(bad)


def test_one_op_timing_runs_every_op_kind_of_the_zoo() -> None:
    """Every op of two zoo programs builds as a one-op program and times (1 repeat)."""
    for name in ("nin", "reactnet"):
        torch.manual_seed(0)
        program = compile_model(build_model(name, width=0.125).eval(), SHAPE)
        for idx in range(len(program.ops)):
            cin, cout = L.op_channels(program, idx)
            half = [(max(1, cin // 2), max(1, cout // 2))]
            assert L.time_op_ratios(program, idx, half, 1, 1, 1)[0] > 0


@pytest.mark.parametrize("name", ["nin", "alexnet", "small", "birealnet18"])
def test_program_float_macs_follow_the_one_cost_rule(name: str) -> None:
    shape = (1, 28, 28) if name == "small" else SHAPE
    torch.manual_seed(0)
    model = build_model(name, width=0.125, in_channels=shape[0], image_size=shape[1]).eval()
    assert program_float_macs(compile_model(model, shape)) == summarize(model, shape).float_macs


def _halves(program) -> dict[int, tuple[list[int], list[int]]]:
    """Every op's grid: half and full width on each axis."""
    grids = {}
    for i in range(len(program.ops)):
        ci, co = L.op_channels(program, i)
        grids[i] = ([max(1, ci // 2), ci], [max(1, co // 2), co])
    return grids


def test_an_interrupted_table_build_resumes_from_the_cache(tmp_path: Path, monkeypatch) -> None:
    program = compile_model(_nin(), SHAPE)
    path = tmp_path / "m.json"
    ratios = _as_ratios(_synthetic(16))
    calls: list[tuple[int, int]] = []  # (op, counts timed)

    def dies_after_three(program, idx, counts, *args):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append((idx, len(counts)))
        return ratios(program, idx, counts, *args)

    monkeypatch.setattr(L, "SAVE_EVERY_S", 0.0)  # write after every timed chunk
    monkeypatch.setattr(L, "time_op_ratios", dies_after_three)
    monkeypatch.setattr(L, "time_program", lambda *a: 1e-3)
    monkeypatch.setattr(L, "time_ops_in_context", lambda program, *a: [1e-6] * len(program.ops))
    with pytest.raises(KeyboardInterrupt):
        L.build_cost_model(program, _halves(program), batch=1, threads=1, repeats=1, cache=path)
    # the ops inside a run (timed first) and the counts of the three chunks timed so far
    assert len(L.LatencyCache(path).entries) == len(program.ops) + sum(n for _, n in calls)
    timed: list[int] = []
    monkeypatch.setattr(L, "time_op_ratios",
                        lambda program, idx, counts, *a: timed.append(idx) or [1.0] * len(counts))
    L.build_cost_model(program, _halves(program), batch=1, threads=1, repeats=1, cache=path)
    assert timed and not set(timed) & {i for i, _ in calls}


def test_the_whole_run_is_the_best_of_two_timings(tmp_path: Path, monkeypatch) -> None:
    program = compile_model(_nin(), SHAPE)
    runs = iter([5e-3, 2e-3])  # a disturbed first timing does not count
    monkeypatch.setattr(L, "time_program", lambda *a: next(runs))
    monkeypatch.setattr(L, "time_ops_in_context", lambda program, *a: [1e-6] * len(program.ops))
    model = L.build_cost_model(program, batch=1, threads=1, repeats=1, cache=tmp_path / "m.json")
    assert model.measured_s == 2e-3


def test_an_ops_time_inside_a_run_scales_its_ratios(tmp_path: Path, monkeypatch) -> None:
    program = compile_model(_nin(), SHAPE)
    fake = _synthetic(16)
    full = [L.op_channels(program, i) for i in range(len(program.ops))]
    alone = [fake(program, i, *full[i], 1, 1, 1) for i in range(len(program.ops))]
    conv = next(i for i, op in enumerate(program.ops) if op.kind == "bconv")
    ctx = list(alone)
    ctx[conv] *= 2.5  # its weights come from colder caches inside a run
    monkeypatch.setattr(L, "time_op_ratios", _as_ratios(fake))
    monkeypatch.setattr(L, "time_program", lambda *a: sum(ctx) + 1e-5)
    monkeypatch.setattr(L, "time_ops_in_context", lambda *a: ctx)
    ci, co = full[conv]
    model = L.build_cost_model(program, {conv: ([ci], [co // 2, co])}, batch=1, threads=1,
                               repeats=1, cache=tmp_path / "m.json")
    assert [t.full_s for t in model.tables] == ctx
    assert model.overhead_s == pytest.approx(1e-5)
    half = fake(program, conv, ci, co // 2, 1, 1, 1)
    assert model.op_seconds(conv, ci, co // 2) == pytest.approx(2.5 * half)


class _Runner:
    """A stand-in for one op's one-op program: ``seconds`` per run at no load."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self) -> None:
        pass


def test_a_load_that_comes_halfway_through_a_table_changes_no_ratio(monkeypatch) -> None:
    """Counts are timed interleaved with the full width, so a machine that turns 1.5x slower
    in the middle of the timing (another job starting) slows both sides of every ratio."""
    program = compile_model(_nin(), SHAPE)
    conv = next(i for i, op in enumerate(program.ops) if op.kind == "bconv")
    ci, co = L.op_channels(program, conv)
    monkeypatch.setattr(L, "_op_runner",
                        lambda program, idx, cin, cout, *a: _Runner(cin * cout * 1e-9))
    made = iter(range(10**6))

    def elapsed(f: _Runner) -> float:
        return f.seconds * (1.5 if next(made) >= 24 else 1.0)  # slower from the 25th run on

    monkeypatch.setattr(L, "elapsed", elapsed)
    counts = [(ci, co // 2), (ci // 2, co), (ci // 2, co // 2)]
    assert L.time_op_ratios(program, conv, counts, 1, 1, 5) == pytest.approx([0.5, 0.5, 0.25])


def test_an_entry_slower_than_a_larger_count_is_timed_once_more(tmp_path: Path,
                                                                monkeypatch) -> None:
    """A count timed slower than one with more channels on both axes (a disturbed timing) is
    timed again and the smaller ratio kept; a real step survives it, and nothing is re-timed
    on the next build."""
    program = compile_model(_nin(), SHAPE)
    conv = next(i for i, op in enumerate(program.ops) if op.kind == "bconv")
    ci, co = L.op_channels(program, conv)
    fake = _as_ratios(_synthetic(1))
    first = {(ci // 2, co // 2): 0.9, (ci // 4, co): 0.95}  # disturbed; a real step
    timed: list[list[tuple[int, int]]] = []

    def ratios(program, idx, counts, *a):
        timed.append(list(counts))
        out = fake(program, idx, counts, *a)
        return [first.pop(c, r) if c != (ci // 4, co) else 0.95 for c, r in zip(counts, out)]

    monkeypatch.setattr(L, "time_op_ratios", ratios)
    monkeypatch.setattr(L, "time_program", lambda *a: 1e-3)
    monkeypatch.setattr(L, "time_ops_in_context", lambda program, *a: [1e-6] * len(program.ops))
    grid = {conv: ([ci // 4, ci // 2, ci], [co // 2, co])}
    model = L.build_cost_model(program, grid, batch=1, threads=1, repeats=1,
                               cache=tmp_path / "m.json")
    table = model.tables[conv]
    assert timed[-1] == [(ci // 4, co), (ci // 2, co // 2)]  # the two above a larger count
    assert table.ratio(ci // 2, co // 2) == pytest.approx(0.25)  # the retimed ratio
    assert table.ratio(ci // 4, co) == pytest.approx(0.95)  # a step measured twice stays
    timed.clear()
    L.build_cost_model(program, grid, batch=1, threads=1, repeats=1, cache=tmp_path / "m.json")
    assert timed == []


def test_a_process_that_compiled_the_kernels_times_its_tables_in_a_fresh_one(
        tmp_path: Path, monkeypatch) -> None:
    """Kernels compiled in this process can run slower than the cached ones every later
    process loads, so the tables are timed in a fresh process; this one only reads them."""
    program = compile_model(_nin(), SHAPE)
    conv = next(i for i, op in enumerate(program.ops) if op.kind == "bconv")
    ci, co = L.op_channels(program, conv)
    grid = {conv: ([ci // 2, ci], [co // 2, co])}

    def here(*a, **k):
        raise AssertionError("timed in the process that compiled the kernels")

    monkeypatch.setattr(L, "kernels_compiled_here", lambda: True)
    for name in ("time_op_ratios", "time_program", "time_ops_in_context"):
        monkeypatch.setattr(L, name, here)
    path = tmp_path / "m.json"
    notes: list[str] = []
    model = L.build_cost_model(program, grid, batch=1, threads=1, repeats=1, cache=path,
                               progress=notes.append)
    assert "fresh process" in notes[0]
    assert model.measured_s > 0 and model.tables[conv].ratio(ci // 2, co // 2) > 0
    entries = L.LatencyCache(path).entries
    assert len(entries) == len(program.ops) + 1 + 3  # runs, the program, three counts
    # a build with nothing left to time starts no process
    monkeypatch.setattr(L, "_build_in_child", here)
    again = L.build_cost_model(program, grid, batch=1, threads=1, repeats=1, cache=path)
    assert again.measured_s == model.measured_s


@pytest.mark.slow
def test_compiled_here_tells_a_fresh_compile_from_numbas_cache(tmp_path: Path) -> None:
    """The first process on an empty numba cache compiles the kernels it runs (True); the
    next one loads them from that cache (False)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = ("import numpy as np, torch; from bnnprune.engine import compile_model; "
            "from bnnprune.engine.latency import kernels_compiled_here; "
            "from bnnprune.models import build_model; torch.manual_seed(0); "
            "p = compile_model(build_model('small', width=0.125, in_channels=1, "
            "image_size=28).eval(), (1, 28, 28)); p(np.zeros((1, 1, 28, 28), np.float32)); "
            "print(kernels_compiled_here())")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
           "PYTHONPATH": str(root / "src")}
    seen = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=1200, check=True).stdout.split()[-1]
            for _ in range(2)]
    assert seen == ["True", "False"]
