"""bnnprune.deploy: one way to a program (checkpoint, .bnn, model, program) without the
training package, and the deploy targets as one family with one signature."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from bnnprune.checkpoint import CheckpointError, save_checkpoint
from bnnprune.deploy import (
    DEPLOY_TARGETS,
    EXPORT_FORMATS,
    ExportReport,
    export,
    from_checkpoint,
    load_deployable,
    load_program,
)
from bnnprune.engine import BnnFormatError, EngineError, compile_model, load, save
from bnnprune.models import build_model

from .conftest import randomize_bn

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    model = randomize_bn(build_model("small", width=0.25))
    save_checkpoint(root / "model.pt", {"arch": model.arch, "state_dict": model.state_dict(),
                                        "dataset": {"input_shape": list(SHAPE)}})
    save_checkpoint(root / "noshape.pt", {"arch": model.arch, "state_dict": model.state_dict()})
    save(compile_model(model, SHAPE), root / "model.bnn")
    return root, model


def _logits(program, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((4, *SHAPE)).astype(np.float32)
    return program(x)


def test_every_source_gives_the_same_program(files):
    root, model = files
    want = _logits(compile_model(model, SHAPE))
    program = compile_model(model, SHAPE)
    for source, shape in ((root / "model.pt", None), (root / "model.bnn", None),
                          (str(root / "model.pt"), SHAPE), (model, SHAPE), (program, None)):
        got = load_program(source, shape)
        assert got.input_shape == SHAPE
        np.testing.assert_array_equal(_logits(got), want)


def test_a_checkpoint_keeps_its_model_and_compiles_on_first_use(files):
    root, _ = files
    net = from_checkpoint(root / "model.pt")
    assert net.model is not None and net.name == str(root / "model.pt")
    assert net._program is None  # nothing compiled yet (ONNX needs only the model)
    assert net.program is net.program
    assert load_deployable(root / "model.bnn").model is None


def test_bad_sources_raise_one_line_errors(files, tmp_path):
    root, model = files
    with pytest.raises(CheckpointError, match="does not record its input shape"):
        load_program(root / "noshape.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_program(tmp_path / "missing.pt")
    junk = tmp_path / "junk.bnn"
    junk.write_bytes(b"not a program")
    with pytest.raises(BnnFormatError, match="junk.bnn: "):
        load_program(junk)
    with pytest.raises(EngineError, match="input_shape .C, H, W. is needed"):
        load_program(model)
    with pytest.raises(EngineError, match="differs from"):
        load_program(root / "model.bnn", (1, 32, 32))


def test_loading_a_checkpoint_does_not_import_the_training_package(files):
    root, _ = files
    code = ("import sys; from bnnprune.deploy import load_program; "
            f"load_program({str(root / 'model.pt')!r}); "
            "print(sorted(m for m in sys.modules if m.startswith('bnnprune.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_targets_share_one_signature_and_report(files, tmp_path):
    root, _ = files
    net = from_checkpoint(root / "model.pt")
    assert EXPORT_FORMATS == ("bnn", "onnx", "qonnx", "c")
    assert set(DEPLOY_TARGETS) == {*EXPORT_FORMATS, "fpga"}
    outs = {"bnn": tmp_path / "m.bnn", "onnx": tmp_path / "m.onnx", "c": tmp_path / "c"}
    for name, out in outs.items():
        report = export(net, name, out)
        assert isinstance(report, ExportReport) and report.target == name
        assert report.files and all(f.is_file() for f in report.files)
        assert report.lines[0].startswith(f"wrote {out}") and report.error is None
    np.testing.assert_array_equal(_logits(load(outs["bnn"])), _logits(net.program))
    assert export(net, "bnn", tmp_path / "n.bnn").data["bytes"] == outs["bnn"].stat().st_size


def test_c_target_compares_with_its_baseline(files, tmp_path):
    root, _ = files
    net = from_checkpoint(root / "model.pt")
    big = load_deployable(build_model("small", width=0.5).eval(), SHAPE)
    report = export(net, "c", tmp_path / "c", baseline=big)
    fp, base = report.data["footprint"], report.data["baseline_footprint"]
    assert fp["flash_bytes"] < base["flash_bytes"]
    assert [line.split()[0] for line in report.lines[2:5]] == ["unpruned", "pruned", "ratio"]
    other = load_deployable(build_model("small", width=0.25, image_size=32).eval(), (1, 32, 32))
    with pytest.raises(EngineError, match="another input shape"):
        export(net, "c", tmp_path / "d", baseline=other)


def test_target_errors(files, tmp_path):
    root, _ = files
    net = from_checkpoint(root / "model.pt")
    with pytest.raises(EngineError, match="needs the PyTorch model"):
        export(load_deployable(root / "model.bnn"), "onnx", tmp_path / "m.onnx")
    with pytest.raises(EngineError, match="takes no baseline"):
        export(net, "bnn", tmp_path / "m.bnn", baseline=net)
    with pytest.raises(EngineError, match="known: bnn, onnx, qonnx, c, fpga"):
        export(net, "tflite", tmp_path / "m")
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    with pytest.raises(EngineError, match="is not a folder"):
        export(net, "c", a_file)
    assert not list(tmp_path.glob("m*"))


def test_fpga_estimate_writes_its_json(files, tmp_path):
    root, _ = files
    net = from_checkpoint(root / "model.pt")
    out = tmp_path / "fpga.json"
    report = export(net, "fpga", out, estimator="model", target_fps=500.0)
    assert report.files == [out] and report.lines[-1] == f"wrote {out}"
    assert json.loads(out.read_text()) == report.data
    assert report.data["estimator"] == "model" and report.data["model"]["fps"] >= 500
    assert export(net, "fpga", None, estimator="model").files == []
    with pytest.raises(EngineError, match="finn estimator folds for a target fps"):
        export(net, "fpga", None, estimator="finn", pe_simd=(4, 8))
