"""`bnnprune export --format qonnx` and `bnnprune fpga-estimate` from saved checkpoints."""

import json
import os

import numpy as np
import pytest
import torch

from bnnprune.checkpoint import save_checkpoint
from bnnprune.cli import main
from bnnprune.engine import compile_model
from bnnprune.models import build_model
from bnnprune.prune import apply_plan, plan_uniform

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fpga")
    torch.manual_seed(0)
    base = build_model("small", width=0.5).eval()
    pruned = apply_plan(base, plan_uniform(base, SHAPE, 0.4, round_to=8), "magnitude").model
    for name, m in (("base", base), ("pruned", pruned)):
        save_checkpoint(root / f"{name}.pt", {"arch": m.arch, "state_dict": m.state_dict(),
                                              "dataset": {"input_shape": list(SHAPE)}})
    return root, pruned.eval()


def _fails(argv, capsys, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bnnprune: error:"), err
    assert match in err, err


def test_export_qonnx_runs_in_qonnx(checkpoints, capsys):
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    root, pruned = checkpoints
    out = root / "m.onnx"
    assert main(["export", str(root / "pruned.pt"), "--format", "qonnx", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    model = ModelWrapper(str(out))
    assert model.get_nodes_by_op_type("BipolarQuant")
    x = (torch.randint(-16, 17, (1, *SHAPE)) / 8.0).numpy()
    got = execute_onnx(model, {model.graph.input[0].name: x})[model.graph.output[0].name]
    want = compile_model(pruned, SHAPE)(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_fpga_estimate_side_by_side(checkpoints, tmp_path, capsys):
    root, _ = checkpoints
    js = tmp_path / "e.json"
    argv = ["fpga-estimate", str(root / "pruned.pt"), "--baseline", str(root / "base.pt"),
            "--target-fps", "2000", "--json", str(js)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| layer |" in out and "not synthesis" in out and "within the unpruned" in out
    res = json.loads(js.read_text())
    assert res["model"]["fps"] >= 2000 and res["baseline"]["fps"] >= 2000
    assert res["model"]["luts"] < res["baseline"]["luts"]
    assert res["same_luts"]["fps"] > res["baseline"]["fps"]


def test_fpga_estimate_user_errors(checkpoints, capsys):
    root, _ = checkpoints
    model = str(root / "pruned.pt")
    _fails(["fpga-estimate", model, "--pe-simd", "8"], capsys, "--pe-simd")
    _fails(["fpga-estimate", model, "--pe-simd", "4,8", "--target-fps", "10"], capsys, "not both")
    _fails(["fpga-estimate", model, "--target-fps", "0"], capsys, "target fps")
    _fails(["fpga-estimate", str(root / "missing.pt")], capsys, "not found")


def test_fpga_estimate_says_which_estimator(checkpoints, capsys):
    """A +1 border has no FINN form: 'auto' says so and uses the cost model, 'finn' refuses."""
    root, _ = checkpoints
    model = str(root / "pruned.pt")
    assert main(["fpga-estimate", model, "--estimator", "auto"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("estimator: bnnprune's cost model (FINN not used: ")
    assert "| layer |" in out
    _fails(["fpga-estimate", model, "--estimator", "finn"], capsys, "FINN")
    _fails(["fpga-estimate", model, "--estimator", "finn", "--pe-simd", "4,8"], capsys,
           "--estimator finn folds for --target-fps")


def _need_finn() -> None:
    from bnnprune.deploy.finn_run import finn_python

    if finn_python() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run FINN: scripts/setup.sh --fpga makes .venv-finn")
        pytest.skip("FINN is not installed (bash scripts/setup.sh --fpga)")


def test_fpga_estimate_with_finn(tmp_path, capsys):
    _need_finn()
    torch.manual_seed(0)
    base = build_model("small", width=0.25, pad_value=-1.0).eval()
    pruned = apply_plan(base, plan_uniform(base, SHAPE, 0.4, round_to=4), "magnitude").model
    for name, m in (("base", base), ("pruned", pruned)):
        save_checkpoint(tmp_path / f"{name}.pt", {"arch": m.arch, "state_dict": m.state_dict(),
                                                  "dataset": {"input_shape": list(SHAPE)}})
    js = tmp_path / "e.json"
    assert main(["fpga-estimate", str(tmp_path / "pruned.pt"), "--baseline",
                 str(tmp_path / "base.pt"), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "FINN's own estimates: finn-plus" in out and "MVAU" in out
    res = json.loads(js.read_text())
    assert res["estimator"] == "finn"
    luts = {m: sum(layer["LUT"] for layer in res[m]["layers"]) for m in ("unpruned", "pruned")}
    assert luts["pruned"] < luts["unpruned"]
    # no input quantizer from the CLI: the float first conv and the float head stay outside
    assert res["pruned"]["outside"].count("MatMul") == 2


def test_fpga_estimate_with_finn_on_nin(tmp_path, capsys):
    """NIN's average pool between binary layers: FINN's estimates of one dataflow (its window
    sums a VVAU), no fallback to the cost model."""
    _need_finn()
    torch.manual_seed(0)
    m = build_model("nin", width=0.125, in_channels=1, image_size=16, pad_value=-1.0).eval()
    save_checkpoint(tmp_path / "nin.pt", {"arch": m.arch, "state_dict": m.state_dict(),
                                          "dataset": {"input_shape": [1, 16, 16]}})
    js = tmp_path / "e.json"
    assert main(["fpga-estimate", str(tmp_path / "nin.pt"), "--estimator", "finn",
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| model | VVAU_hls_0 |" in out and "between dataflow segments" not in out
    res = json.loads(js.read_text())
    assert res["estimator"] == "finn" and res["model"]["segments"] == 1
    assert "AveragePool" not in res["model"]["outside"]


def test_export_qonnx_in_finn_form_from_the_cli(checkpoints, capsys):
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper

    root, _ = checkpoints
    torch.manual_seed(0)
    m = build_model("small", width=0.5, pad_value=-1.0).eval()  # FINN pads with -1
    save_checkpoint(root / "pad-1.pt", {"arch": m.arch, "state_dict": m.state_dict(),
                                        "dataset": {"input_shape": list(SHAPE)}})
    out = root / "finn.onnx"
    assert main(["export", str(root / "pad-1.pt"), "--format", "qonnx", "--finn", "-o",
                 str(out)]) == 0
    assert ModelWrapper(str(out)).get_metadata_prop("bnnprune.form") == "finn"
    capsys.readouterr()
    _fails(["export", str(root / "pruned.pt"), "--format", "qonnx", "--finn", "-o", str(out)],
           capsys, "this layer pads with +1")
    _fails(["export", str(root / "pruned.pt"), "--format", "qonnx", "--input-scale", "0.125",
            "-o", str(out)], capsys, "quantize the layer before an export with input_scale")
    _fails(["export", str(root / "pruned.pt"), "--format", "c", "--finn", "-o",
            str(root / "c")], capsys, "--finn applies to --format qonnx only")
    _fails(["export", str(root / "pruned.pt"), "--input-scale", "0.5", "-o",
            str(root / "m.bnn")], capsys, "--input-scale applies to --format qonnx only")
