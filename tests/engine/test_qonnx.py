"""QONNX export executed by qonnx itself: bit-identical to the engine, BIPOLAR datatypes."""

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.deploy.qonnx_export import export_qonnx
from bnnprune.engine import EngineError, compile_model
from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d, clip_latent_weights

from .conftest import dyadic_fp_weights, dyadic_input, randomize_bn
from .test_exact import OddNet, ResidualNet

try:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("qonnx is not installed (pip install 'bnnprune[fpga]')", allow_module_level=True)


def _run(ex, x: np.ndarray) -> dict[str, np.ndarray]:
    return execute_onnx(ex.model, {ex.input_name: np.ascontiguousarray(x, np.float32)},
                        return_full_exec_context=True)


def _compare(program, ex, x: np.ndarray) -> int:
    """Every engine value equals its graph tensor (bits exactly); returns #bit values compared."""
    ctx = _run(ex, x)
    inter = program.intermediates(x)
    bits = 0
    for key, name in ex.values.items():
        want, got = inter[key], ex.decode(key, ctx[name])
        assert got.shape == want.shape, key
        if key.endswith(":bits"):
            mismatch = int((got != want).sum())
            assert mismatch == 0, f"{key}: {mismatch} of {want.size} bits differ"
            assert name in ex.one_bit, f"{key}: qonnx did not type {name} as one bit"
            bits += 1
        else:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=key)
    logits = ctx[ex.output_name]
    ref = program(x)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-3)
    assert (logits.argmax(1) == ref.argmax(1)).all()
    return bits


def _check_graph(program, ex) -> None:
    """BipolarQuant per binary layer (typed BIPOLAR), no float sign emulation left."""
    model = ex.model
    ops = [n.op_type for n in model.graph.node]
    n_bin = sum(op.kind == "bconv" for op in program.ops)
    quants = model.get_nodes_by_op_type("BipolarQuant")
    assert len(quants) == n_bin > 0
    for q in quants:
        assert model.get_tensor_datatype(q.output[0]).name == "BIPOLAR"
        w = model.get_initializer(q.input[0])
        assert set(np.unique(w)) <= {-1.0, 1.0}
    n_bits = sum(v.kind == "bits" for v in program.values)
    thresholds = model.get_nodes_by_op_type("MultiThreshold")
    assert 0 < len(thresholds) <= n_bits
    for t in thresholds:
        assert model.get_tensor_datatype(t.output[0]).name == ("BINARY" if ex.finn else "BIPOLAR")
    assert not {"Sign", "Where", "BatchNormalization"} & set(ops)
    if ex.finn:  # the -1 border is the Conv's zero padding, FINN's FMPadding
        assert "Pad" not in ops
        assert any(a.name == "pads" and any(a.ints) for n in model.get_nodes_by_op_type("Conv")
                   for a in n.attribute)


def _prepare(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return dyadic_fp_weights(randomize_bn(model, seed=seed), seed=seed).eval()


@pytest.mark.parametrize("net,shape", [(OddNet, (3, 19, 19)), (ResidualNet, (1, 15, 15))])
def test_random_models_bit_exact(net, shape):
    """Odd channels, stride 2, k 1/3/5, ±1 padding, zero/negative gammas, residual adds."""
    model = _prepare(net())
    program = compile_model(model, shape)
    ex = export_qonnx(program, batch_size=4)
    _check_graph(program, ex)
    x = dyadic_input((4, *shape), seed=3).numpy()
    assert _compare(program, ex, x) >= 3
    with torch.no_grad():
        assert (program(x).argmax(1) == model(torch.from_numpy(x)).numpy().argmax(1)).all()


def test_zoo_binary_fc_head_and_flips(tmp_path):
    """BinaryLinear layers on a flattened image (MatMul), XNOR scales, saved file reloads."""
    model = _prepare(build_model("binarynet", width=0.125, scale=True, pad_value=-1.0), seed=5)
    program = compile_model(model, (3, 32, 32))
    flips = sum(int(op.arrays["flip"].sum()) for op in program.ops
                if op.kind == "bconv" and op.attrs["mode"] == "bits")
    assert flips > 0  # negative gammas reach the export
    path = tmp_path / "m.onnx"
    ex = export_qonnx(model, (3, 32, 32), path, batch_size=2)
    assert {"MatMul", "Conv", "Pad", "MaxPool"} <= {n.op_type for n in ex.model.graph.node}
    _check_graph(program, ex)
    x = dyadic_input((2, 3, 32, 32), seed=1).numpy()
    assert _compare(program, ex, x) >= 6
    again = ModelWrapper(str(path))
    out = execute_onnx(again, {again.graph.input[0].name: x})[again.graph.output[0].name]
    np.testing.assert_array_equal(out, _run(ex, x)[ex.output_name])


@pytest.mark.parametrize("name,shape,scale", [("small", (1, 28, 28), False),
                                              ("binarynet", (3, 32, 32), True)])
def test_finn_form_bit_exact(name, shape, scale):
    """FINN's form (0/1 activations, -1 border as zero padding) computes the engine's values."""
    model = _prepare(build_model(name, width=0.125, scale=scale, pad_value=-1.0), seed=7)
    program = compile_model(model, shape)
    ex = export_qonnx(program, batch_size=3, finn=True)
    _check_graph(program, ex)
    assert ex.model.get_metadata_prop("bnnprune.form") == "finn"
    x = dyadic_input((3, *shape), seed=2).numpy()
    assert _compare(program, ex, x) >= 3


@pytest.mark.parametrize("finn", [False, True])
def test_input_scale_puts_8_bit_quantizers_on_the_first_layer(finn):
    """Quant on the input (scale 1/32) and on the first layer's weights (1/16 grid -> scale
    1/16): identities on such values, so every engine value still matches."""
    model = _prepare(build_model("small", width=0.125, pad_value=-1.0), seed=3)
    program = compile_model(model, (1, 28, 28))
    ex = export_qonnx(program, batch_size=2, finn=finn, input_scale=1 / 32)
    quants = ex.model.get_nodes_by_op_type("Quant")
    assert [q.input[0] for q in quants][0] == ex.input_name and len(quants) == 2
    scales = [float(ex.model.get_initializer(q.input[1])) for q in quants]
    assert scales == [1 / 32, 1 / 16]
    w = ex.model.get_initializer(quants[1].input[0])
    assert np.all(w * 16 == np.round(w * 16)) and np.abs(w * 16).max() <= 127
    x = dyadic_input((2, 1, 28, 28), seed=4).numpy()  # 1/8 grid in [-2, 2]: 8-bit at 1/32
    assert _compare(program, ex, x) >= 3


def test_input_scale_needs_8_bit_first_layer_weights():
    torch.manual_seed(0)
    program = compile_model(build_model("small", width=0.125).eval(), (1, 28, 28))
    with pytest.raises(EngineError, match="conv1: weights are not 8-bit integers"):
        export_qonnx(program, input_scale=1 / 128)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(EngineError, match="input_scale"):
            export_qonnx(program, input_scale=bad)


def test_finn_form_refuses_a_plus_one_border():
    program = compile_model(_prepare(build_model("small", width=0.125)), (1, 28, 28))
    with pytest.raises(EngineError, match="bconv2: FINN pads binary streams with 0"):
        export_qonnx(program, finn=True)


def _check_sum_pools(program, ex) -> None:
    """FINN's form of a binary layer's average pool before a sign: no AveragePool, a depthwise
    Conv of ones (2-bit Quant weights) on the layer's integer code, as many as such pools."""
    ops = [n.op_type for n in ex.model.graph.node]
    n_pool = sum(op.kind == "avgpool" for op in program.ops)
    assert "AveragePool" not in ops and n_pool > 0
    dw = [n for n in ex.model.get_nodes_by_op_type("Conv")
          if next(a.i for a in n.attribute if a.name == "group") > 1]
    assert len(dw) == n_pool
    for n in dw:
        w = ex.model.find_producer(n.input[1])
        assert w.op_type == "Quant"
        assert np.all(ex.model.get_initializer(w.input[0]) == 1)
        assert ex.model.get_tensor_datatype(n.input[1]).name == "INT2"


@pytest.mark.parametrize("pool,hw", [
    (nn.AvgPool2d(3, 2, 1), 8),  # NIN's: windows of 4, 6 and 9 pixels
    (nn.AvgPool2d(3, 2, 1), 7),  # odd size: the last window is whole
    (nn.AvgPool2d(3, 1, 1, count_include_pad=False), 6),
    (nn.AvgPool2d(5, 2, 2), 9),
    (nn.AvgPool2d(2), 8),  # no padding: one window size
])
def test_finn_form_sums_an_average_pool_before_a_sign_in_integers(pool, hw):
    """sign(avgpool(BatchNorm(binary conv))) as the layer's integer code, zero-padded window
    sums and a threshold at 0 (FINN's form): every engine value still matches, for window
    sizes that vary with the position, zero and negative gammas, and both pool divisors."""
    torch.manual_seed(11)
    feats = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
        BinaryConv2d(8, 16, 3, padding=1, pad_value=-1.0), nn.BatchNorm2d(16), pool,
        BinaryConv2d(16, 8, 1, pad_value=-1.0), nn.BatchNorm2d(8))
    n = feats(torch.zeros(1, 2, hw, hw)).numel()
    model = _prepare(nn.Sequential(*feats, nn.Flatten(), nn.Linear(n, 3)), seed=11)
    program = compile_model(model, (2, hw, hw))
    layer = next(op for op in program.ops if op.kind == "bconv" and op.attrs["mode"] == "float")
    slope = layer.arrays["m1"] * layer.arrays["m2"]  # A: negated filters and constant signs
    assert (slope < 0).any() and (slope == 0).any() and (slope > 0).any()
    ex = export_qonnx(program, batch_size=16, finn=True)
    _check_graph(program, ex)
    _check_sum_pools(program, ex)
    x = dyadic_input((16, 2, hw, hw), seed=5).numpy()
    pooled = next(program.values[op.output] for op in program.ops if op.kind == "avgpool")
    assert f"{pooled.source}:bits" in ex.values  # the pool's signs are compared too
    assert _compare(program, ex, x) == sum(v.kind == "bits" for v in program.values) == 2
    plain = export_qonnx(program, batch_size=16)  # the default form keeps the float pool
    assert "AveragePool" in {n.op_type for n in plain.model.graph.node}


def test_finn_form_of_nin_on_real_images():
    """The zoo NIN (width 0.25, 1x28x28, -1 border) in FINN's form with the 8-bit input
    quantizer: its AvgPool2d(3, 2, 1) between binary layers as integer window sums, every
    engine value equal on 100 Fashion-MNIST test images."""
    model = _prepare(build_model("nin", width=0.25, in_channels=1, image_size=28,
                                 pad_value=-1.0), seed=1)
    program = compile_model(model, (1, 28, 28))
    ex = export_qonnx(program, batch_size=100, finn=True, input_scale=1 / 128)
    _check_sum_pools(program, ex)
    x = _dyadic(_fashion("test", 100)[0])
    assert _compare(program, ex, x) == sum(v.kind == "bits" for v in program.values)


def _fashion(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    from bnnprune.data import load_dataset

    ds = load_dataset("fashion-mnist", **{f"{split}_subset": n})
    x = ds.train_x if split == "train" else ds.test_x
    y = ds.train_y if split == "train" else ds.test_y
    return x.numpy(), y.numpy()


def _dyadic(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> (p - 128) / 128: exact in float32, so any summation order agrees."""
    return (images.astype(np.float32) - 128.0) / 128.0


@pytest.fixture(scope="module")
def trained_small() -> nn.Module:
    """The default small model, width 0.25, trained 150 Adam steps on Fashion-MNIST."""
    try:
        x, y = _fashion("train", 4800)
    except Exception as e:  # noqa: BLE001 - DatasetError and friends
        pytest.skip(f"Fashion-MNIST is not available: {e}")
    torch.manual_seed(0)
    model = build_model("small", width=0.25)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(_dyadic(x)), torch.from_numpy(y)
    model.train()
    for step in range(150):
        idx = torch.arange(step * 32, step * 32 + 32) % len(xt)
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        clip_latent_weights(model)
    with torch.no_grad():  # full-precision weights on a 1/256 grid: float sums exact
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and not isinstance(m, BinaryConv2d):
                m.weight.copy_(torch.round(m.weight * 256) / 256)
                if m.bias is not None:
                    m.bias.copy_(torch.round(m.bias * 256) / 256)
    return model.eval()


def test_trained_small_model_on_real_images(trained_small):
    x, y = _fashion("test", 200)
    x = _dyadic(x)
    program = compile_model(trained_small, (1, 28, 28))
    ex = export_qonnx(program, batch_size=len(x))
    _check_graph(program, ex)
    assert _compare(program, ex, x) >= 4  # every binary activation of 200 images
    with torch.no_grad():
        ref = trained_small(torch.from_numpy(x)).numpy().argmax(1)
    got = _run(ex, x)[ex.output_name].argmax(1)
    assert (got == ref).all()
    assert (got == y).mean() > 0.6  # a trained model, not a constant one


class _CeilPool(nn.Module):
    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.c = BinaryConv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = pool
        self.fc = nn.Linear(3 * 3 * 3 if isinstance(pool, nn.MaxPool2d) else 3 * 2 * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.bn(self.c(x))), 1))


@pytest.mark.parametrize("pool,match", [
    (nn.MaxPool2d(2, 2, 1, ceil_mode=True), "ceil_mode pooling"),
    (nn.AdaptiveAvgPool2d(2), "adaptive average pooling"),
])
def test_inexpressible_ops_are_named(pool, match):
    model = _CeilPool(pool).eval()
    program = compile_model(model, (1, 5, 5))  # the engine runs it ...
    with pytest.raises(EngineError, match=match):  # ... ONNX pooling cannot express it
        export_qonnx(program)


def test_bad_arguments_and_missing_qonnx(monkeypatch):
    program = compile_model(_prepare(OddNet()), (3, 19, 19))
    with pytest.raises(EngineError, match="batch_size"):
        export_qonnx(program, batch_size=0)
    with pytest.raises(EngineError, match="differs"):
        export_qonnx(program, (3, 20, 20))
    with pytest.raises(EngineError, match="input_shape"):
        export_qonnx(OddNet())
    monkeypatch.setitem(sys.modules, "qonnx", None)
    with pytest.raises(EngineError, match=r"bnnprune\[fpga\]"):
        export_qonnx(program)
