"""`bnnprune bench MODEL.pt --baseline UNPRUNED.pt`: PyTorch timing of a pruned checkpoint
against its unpruned one (fields and errors are checked, never the speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bnnprune.checkpoint import save_checkpoint
from bnnprune.cli import main
from bnnprune.metrics import summarize
from bnnprune.models import build_model
from bnnprune.prune import apply_plan, plan_uniform

SHAPE = (1, 28, 28)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bnnprune: error:"), err
    assert match in err, err


def _save(path: Path, model: torch.nn.Module, shape: tuple[int, ...] = SHAPE) -> Path:
    save_checkpoint(path, {"arch": model.arch, "state_dict": model.state_dict(),
                           "dataset": {"input_shape": list(shape)}})
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    torch.manual_seed(0)
    model = build_model("small", width=0.25).eval()
    plan = plan_uniform(model, SHAPE, 0.4, round_to=4)
    pruned = apply_plan(model, plan, "magnitude").model.eval()
    d = tmp_path_factory.mktemp("torchbench")
    return _save(d / "pruned.pt", pruned), _save(d / "base.pt", model), {
        "pruned": summarize(pruned, SHAPE), "unpruned": summarize(model, SHAPE)}


def test_bench_checkpoint_on_cpu_prints_json(ckpts, capsys: pytest.CaptureFixture[str]) -> None:
    pruned, base, s = ckpts
    assert main(["bench", str(pruned), "--baseline", str(base), "--device", "cpu",
                 "--dtypes", "float32,float16", "--batches", "1,3", "--repeats", "2",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)  # nothing but JSON on stdout
    assert res["device"]["device"] == "cpu" and res["input_shape"] == list(SHAPE)
    assert res["work"]["bops"]["pruned"] == s["pruned"].bops
    assert res["work"]["bops"]["unpruned"] == s["unpruned"].bops
    assert [(f["dtype"], f["mode"]) for f in res["forms"]] == [("float32", "eager"),
                                                              ("float16", "eager")]
    for f in res["forms"]:
        assert set(f["batches"]) == {"1", "3"}
        for key in ("pruned", "unpruned"):
            c = f["check"][key]
            assert 0.0 <= c["argmax_agreement"] <= 1.0 and c["max_rel_error"] >= 0.0
            if f["dtype"] == "float32":  # the same arithmetic as eager, BatchNorms folded
                assert c["argmax_agreement"] == 1.0 and c["max_rel_error"] <= 1e-5, c
        for e in f["batches"].values():
            assert e["ratio"] == pytest.approx(e["pruned_s"] / e["unpruned_s"])
    assert set(res["best"]) == {"1", "3"}


def test_bench_checkpoint_table_and_json_file(ckpts, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    pruned, base, _ = ckpts
    out = tmp_path / "gpu.json"
    assert main(["bench", str(pruned), "--baseline", str(base), "--device", "cpu",
                 "--dtypes", "float32", "--batches", "2", "--repeats", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "float32/eager" in text and "fastest form per batch" in text
    assert f"wrote {out}" in text
    assert json.loads(out.read_text())["forms"][0]["dtype"] == "float32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_fails_before_loading(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "none.pt")  # never read: the device is refused first
    _fails(["bench", missing, "--baseline", missing, "--device", "cuda"], capsys,
           "CUDA is not available")


@pytest.mark.parametrize("extra, match", [
    (["--device", "cpu", "--modes", "cudagraph"], "cudagraph needs a CUDA device"),
    (["--device", "cpu", "--dtypes", "int8"], "unknown dtype 'int8'"),
    (["--device", "cpu", "--batches", "0"], "batch sizes must be"),
    (["--device", "cpu", "--batches", "one"], "comma-separated list"),
    (["--device", "tpu"], "unknown device"),
])
def test_bad_requests_fail_before_loading(extra: list[str], match: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "none.pt")
    _fails(["bench", missing, "--baseline", missing, *extra], capsys, match)


def test_checkpoint_pairs_that_cannot_be_compared(ckpts, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pruned, base, _ = ckpts
    _fails(["bench", str(pruned), "--device", "cpu"], capsys, "give --baseline UNPRUNED.pt")
    _fails(["bench", str(pruned), "--compare", str(base), "--device", "cpu"], capsys,
           "--compare times a .bnn program")
    other = _save(tmp_path / "nin.pt", build_model("nin", width=0.125), (3, 32, 32))
    _fails(["bench", str(pruned), "--baseline", str(other), "--device", "cpu"], capsys,
           "same input shape")
    wide = _save(tmp_path / "wide.pt", build_model("binarynet", width=0.125, in_channels=1,
                                                   image_size=28))
    _fails(["bench", str(pruned), "--baseline", str(wide), "--device", "cpu"], capsys,
           "is not a pruned copy of")
    _fails(["bench", str(tmp_path / "m.bnn"), "--device", "cpu"], capsys,
           "is a .bnn program")
