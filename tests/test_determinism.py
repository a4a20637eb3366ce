"""Same config and seed, two folders: identical results.json (wall-clock fields and engine
latencies aside) and bit-identical trained weights on CPU."""

import json

import pytest
import torch

from bnnprune.cli import main

RUN = (
    "run --dataset synthetic --model small --width 0.25 --train-subset 256 --test-subset 64"
    " --batch-size 64 --epochs 2 --track-last 1 --retrain-epochs 1 --target-bops 0.4"
    " --compare random --no-budget-baseline --device cpu --seed 7"
).split()
# the engine latencies ("speed") are wall-clock too; the engine section (C flash and RAM,
# agreement with PyTorch) is compared with the rest
WALL_CLOCK = {"phase_seconds", "wall_seconds", "speed"}


@pytest.fixture
def one_thread():
    """One intra-op thread: results depend on the thread count, and on a busy machine one
    thread is also many times faster than an oversubscribed pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow  # the whole main job, twice
def test_same_config_twice_gives_identical_results(tmp_path, capsys, one_thread):
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        assert main([*RUN, "-o", str(out)]) == 0
    printed = capsys.readouterr().out  # the speed table is printed next to the accuracy table
    assert printed.index("| test acc |") < printed.index("engine speed and C footprint")
    a, b = (json.loads((out / "results.json").read_text()) for out in runs)
    assert WALL_CLOCK <= set(a)
    for key in WALL_CLOCK:
        del a[key], b[key]
    assert a == b
    assert 0 < a["bops_reduction"] < 1 and a["compared"]
    assert [m["label"] for m in a["engine"]["models"]] == [
        "baseline (unpruned)", a["method"], "target+random"]
    for phase in ("baseline", "pruned", "compare-target+random"):
        sa, sb = (
            torch.load(out / phase / "model.pt", weights_only=True)["state_dict"] for out in runs
        )
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{phase}: {k}"
