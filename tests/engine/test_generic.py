"""Generic compilation: concatenation, functional pooling, PReLU/RSign/RPReLU, Bi-Real and
ReActNet blocks against PyTorch (every node's value, bits exact), and ops refused by name."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from bnnprune.deploy import export_onnx
from bnnprune.engine import EngineError, compile_model, load, save
from bnnprune.engine import kernels as K
from bnnprune.engine.compile import _Tracer
from bnnprune.engine.fileformat import required_version
from bnnprune.engine.pack import pack_signs, unpack_signs
from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d, BinaryLinear, RPReLU, RSign

from .conftest import dyadic_fp_weights, dyadic_input
from .test_fashion_mnist import ROOT, _images


def calibrate(model: nn.Module, x: torch.Tensor, seed: int = 0,
              negative_slopes: bool = True) -> nn.Module:
    """BN statistics of a real batch, random gammas (some < 0, some 0) and betas, random
    RSign shifts and RPReLU/PReLU parameters (slopes >= 0 unless ``negative_slopes``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 1.0
            elif isinstance(m, RSign):
                m.shift.copy_(torch.randn(m.shift.shape, generator=g) * 0.3)
            elif isinstance(m, RPReLU | nn.PReLU):
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
                slope = m.slope if isinstance(m, RPReLU) else m.weight
                if not negative_slopes:
                    slope.abs_()
        model.train()(x)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                gamma = torch.randn(n, generator=g)
                gamma[torch.randint(0, n, (max(1, n // 8),), generator=g)] = 0.0
                m.weight.copy_(gamma)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model.eval()


def node_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """PyTorch's value of every traced node, named as the engine names its values."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph)
    outs: dict[str, torch.Tensor] = {}

    class Rec(fx.Interpreter):
        def run_node(self, n: fx.Node):  # noqa: ANN202
            r = super().run_node(n)
            if isinstance(r, torch.Tensor):
                outs[str(n.target) if n.op == "call_module" else n.name] = r
            return r

    with torch.no_grad():
        Rec(gm).run(x)
    return outs


def check_exact(model: nn.Module, program, x: torch.Tensor) -> int:
    """Every engine value against PyTorch: bits equal sign(), floats close; same argmax.

    Returns the number of binary values compared.
    """
    ref = node_outputs(model.eval(), x)
    bits = 0
    for key, val in program.intermediates(x).items():
        source, kind = key.rsplit(":", 1)
        if source == "input":
            continue
        t = ref[source].numpy().reshape(val.shape)
        if kind == "bits":
            wrong = int((val != np.where(t >= 0, 1.0, -1.0)).sum())
            assert wrong == 0, f"{source}: {wrong} of {val.size} bits differ"
            bits += 1
        else:
            scale = float(np.abs(t).max()) + 1.0
            np.testing.assert_allclose(val, t, rtol=1e-4, atol=1e-5 * scale, err_msg=source)
    logits = program(x)
    with torch.no_grad():
        expect = model(x).numpy()
    np.testing.assert_allclose(logits, expect, rtol=1e-4, atol=1e-5 * (np.abs(expect).max() + 1))
    assert (logits.argmax(1) == expect.argmax(1)).all()
    return bits


def prepared(model: nn.Module, shape: tuple[int, int, int], **kw) -> nn.Module:
    torch.manual_seed(0)
    return calibrate(dyadic_fp_weights(model), dyadic_input((16, *shape), seed=5), **kw)


def kinds(program) -> Counter:
    return Counter(op.kind for op in program.ops)


# --------------------------------------------------------------------------- user models


class CatNet(nn.Module):
    """Concatenation of packed bits (partial words: 13 + 70 channels), of floats, of 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 20, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(20)
        self.a = BinaryConv2d(20, 13, 3, padding=1)
        self.abn = nn.BatchNorm2d(13)
        self.b = BinaryConv2d(20, 70, 1)
        self.bbn = nn.BatchNorm2d(70)
        self.c = BinaryConv2d(83, 24, 3, padding=1, pad_value=-1.0)
        self.cbn = nn.BatchNorm2d(24)
        self.d = BinaryConv2d(24, 9, 1)
        self.dbn = nn.BatchNorm2d(9)
        self.e = BinaryConv2d(24 + 9, 17, 3, padding=1)
        self.ebn = nn.BatchNorm2d(17)
        self.fc = nn.Linear(24 + 9 + 17 + 17, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.stem(x))
        y = torch.cat([self.abn(self.a(x)), self.bbn(self.b(x))], 1)  # only signs used: bits
        y = self.cbn(self.c(y))
        z = torch.cat((y, self.dbn(self.d(y))), dim=-3)  # used as numbers and as signs
        e = self.ebn(self.e(z))
        p = F.adaptive_avg_pool2d(torch.cat([z, e, e], 1), 1).flatten(1)
        return self.fc(p)


class PoolNet(nn.Module):
    """Functional and module forms of max/avg/adaptive pooling, on bits and on floats."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.a = BinaryConv2d(16, 21, 3, padding=1)
        self.abn = nn.BatchNorm2d(21)
        self.b = BinaryConv2d(21, 21, 3, padding=1)
        self.bbn = nn.BatchNorm2d(21)
        self.amax = nn.AdaptiveMaxPool2d((3, 3))
        self.c = BinaryConv2d(21, 21, 1)
        self.cbn = nn.BatchNorm2d(21)
        self.drop = nn.Dropout(0.3)
        self.head = BinaryLinear(21, 6, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.stem(x))
        x = F.max_pool2d(self.abn(self.a(x)), 2)  # bits
        x = F.avg_pool2d(self.bbn(self.b(x)), 3, stride=2, padding=1, ceil_mode=True,
                         count_include_pad=False)  # floats: pooled as numbers and as signs
        y = torch.max_pool2d(x, kernel_size=2, stride=2)  # float max
        x = self.amax(F.adaptive_max_pool2d(x, (6, 6)))  # bits
        x = F.dropout(self.cbn(self.c(x)), 0.5, training=self.training) + y
        return self.head(self.drop(F.adaptive_max_pool2d(x, 1).flatten(1)))


class ActNet(nn.Module):
    """RSign folded into a binary layer's thresholds and on a residual sum; RPReLU / PReLU
    folded (slopes >= 0) or on real-valued paths; ReLU / Hardtanh / ReLU6 / F.hardtanh."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(24)
        self.s0 = RSign(24)
        self.a = BinaryConv2d(24, 24, 3, padding=1)
        self.abn = nn.BatchNorm2d(24)
        self.aact = RPReLU(24)  # real-valued path
        self.s1 = RSign(24)
        self.b = BinaryConv2d(24, 40, 3, stride=2, padding=1)
        self.bbn = nn.BatchNorm2d(40)
        self.bs = RSign(40)  # folded: bconv -> BN -> RSign
        self.c = BinaryConv2d(40, 40, 1)
        self.cbn = nn.BatchNorm2d(40)
        self.cact = nn.PReLU(40)
        self.d = BinaryConv2d(40, 33, 3, padding=1)
        self.dbn = nn.BatchNorm2d(33)
        self.dact = nn.PReLU()
        self.relu = nn.ReLU()
        self.ht = nn.Hardtanh(-0.5, 2.0)
        self.fc = BinaryLinear(33 * 4 + 33 * 4, 7, scale=True)
        self.fbn = nn.BatchNorm1d(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.stem(x))
        x = self.aact(self.abn(self.a(self.s0(x))) + x)
        x = self.bs(self.bbn(self.b(self.s1(x))))
        x = self.cact(self.cbn(self.c(x)))
        x = self.dact(self.dbn(self.d(x)))
        r = F.relu6(self.relu(x)) + F.hardtanh(self.ht(x), -1.0, 1.5)
        x = torch.cat([F.avg_pool2d(r, 2), F.max_pool2d(x, 2)], 1)
        return self.fbn(self.fc(torch.flatten(x, 1)))


@pytest.mark.parametrize("net,shape,expect", [
    (CatNet, (3, 9, 9), {"concat_bits": 1, "concat": 2, "sign": 1}),
    (PoolNet, (1, 20, 20), {"maxpool_bits": 4, "avgpool": 1, "maxpool": 1}),
    (ActNet, (3, 10, 10), {"prelu": 3}),
])
def test_user_models_exact(net, shape, expect):
    model = prepared(net(), shape)
    program = compile_model(model, shape)
    got = kinds(program)
    assert all(got[k] >= v for k, v in expect.items()), got
    assert check_exact(model, program, dyadic_input((4, *shape), seed=1)) >= 3


def test_rsign_and_rprelu_fold_into_thresholds():
    """bconv -> BN -> RPReLU (slopes >= 0) -> RSign -> bconv is one threshold op."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16),
                          BinaryConv2d(16, 29, 3, padding=1), nn.BatchNorm2d(29), RPReLU(29),
                          RSign(29), BinaryConv2d(29, 8, 3), nn.BatchNorm2d(8), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4))
    shape = (3, 10, 10)
    model = prepared(model, shape, negative_slopes=False)
    program = compile_model(model, shape)
    assert kinds(program)["bconv"] == 2 and not {"prelu", "affine", "sign"} & set(kinds(program))
    assert program.ops[1].attrs["mode"] == "bits"
    assert check_exact(model, program, dyadic_input((6, *shape), seed=2)) >= 1
    # with a negative slope the activation is not monotone: float path, then RSign's affine
    model[4].slope.data[3] = -0.5
    program = compile_model(model, shape)
    assert kinds(program)["prelu"] == 1 and kinds(program)["affine"] == 1
    assert check_exact(model, program, dyadic_input((6, *shape), seed=2)) >= 1


# --------------------------------------------------------------------------- zoo models


@pytest.mark.parametrize("name,width,expect", [
    ("birealnet18", 0.125, {"bconv": 16, "add": 16, "avgpool": 3}),
    ("reactnet", 0.125, {"bconv": 26, "prelu": 26, "affine": 26}),
])
def test_modern_zoo_models_exact(name, width, expect, tmp_path):
    shape = (3, 32, 32)
    model = prepared(build_model(name, width=width), shape)
    program = compile_model(model, shape)
    got = kinds(program)
    assert all(got[k] == v for k, v in expect.items()), got
    x = dyadic_input((2, *shape), seed=7)
    assert check_exact(model, program, x) >= 16
    path = tmp_path / f"{name}.bnn"
    save(program, path)
    np.testing.assert_array_equal(load(path)(x), program(x))


@pytest.mark.skipif(not (ROOT / "t10k-images-idx3-ubyte.gz").exists(), reason="no Fashion-MNIST")
@pytest.mark.parametrize("name", ["birealnet18", "reactnet"])
def test_modern_zoo_identical_predictions_on_real_images(name):
    x = torch.from_numpy((_images(400) - 0.2860) / 0.3530)
    torch.manual_seed(1)
    model = calibrate(build_model(name, width=0.125, in_channels=1, image_size=28), x[:64])
    program = compile_model(model, (1, 28, 28))
    got = program(x[64:], batch_size=112)
    with torch.no_grad():
        ref = model(x[64:]).numpy()
    assert len(np.unique(ref.argmax(1))) > 1  # the random model is not constant
    assert (got.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * (np.abs(ref).max() + 1))


@pytest.mark.parametrize("name", ["birealnet18", "reactnet"])
def test_modern_zoo_onnx_export(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    shape = (3, 32, 32)
    model = prepared(build_model(name, width=0.125, pad_value=-1.0), shape)
    export_onnx(model, tmp_path / "m.onnx", shape)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = dyadic_input((3, *shape), seed=4)
    got = sess.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * (np.abs(ref).max() + 1))
    assert (got.argmax(1) == ref.argmax(1)).all()


# --------------------------------------------------------------------------- file format


def test_new_op_kinds_need_format_2_and_old_programs_stay_version_1(tmp_path):
    old = compile_model(build_model("small", width=0.25).eval(), (1, 28, 28))
    new = compile_model(prepared(CatNet(), (3, 9, 9)), (3, 9, 9))
    assert required_version(old) == 1 and required_version(new) == 2
    for prog, version in ((old, 1), (new, 2)):
        path = tmp_path / f"v{version}.bnn"
        save(prog, path)
        assert int.from_bytes(path.read_bytes()[8:12], "little") == version
        x = dyadic_input((2, *prog.input_shape))
        np.testing.assert_array_equal(load(path)(x), prog(x))


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("channels", [(13, 70), (64, 5, 1), (3, 61, 128, 7)])
def test_concat_bits_kernel(channels, rng):
    xs = [np.sign(rng.standard_normal((2, 3, 4, c))).astype(np.float32) for c in channels]
    packed = [pack_signs(x) for x in xs]
    total = sum(channels)
    for threads in (1, None):
        out = np.full((2, 3, 4, K.words(total)), np.uint64(2**64 - 1))
        K.concat_bits_call(packed, list(channels), out, threads=threads)()
        np.testing.assert_array_equal(unpack_signs(out, total), np.concatenate(xs, -1))
        assert not np.any(out != pack_signs(np.concatenate(xs, -1)))  # high bits stay 0
    with pytest.raises(EngineError, match="words"):
        K.concat_bits_call(packed, [c + 64 for c in channels], out)


def test_prelu_kernel(rng):
    x = rng.standard_normal((3, 5, 5, 11)).astype(np.float32)
    shift, slope, bias = (rng.standard_normal(11).astype(np.float32) for _ in range(3))
    out = np.empty_like(x)
    K.prelu_call(x, shift, slope, bias, out)()
    ref = F.prelu(torch.from_numpy(x + shift).permute(0, 3, 1, 2), torch.from_numpy(slope))
    np.testing.assert_array_equal(out, (ref.permute(0, 2, 3, 1) + torch.from_numpy(bias)).numpy())


@pytest.mark.parametrize("threads", [1, 2])
def test_affine_and_add_kernels_round_as_torch(rng, threads):
    x, b = (rng.standard_normal((40, 6, 5, 13)).astype(np.float32) * 3 for _ in range(2))
    alpha, beta = (rng.standard_normal(13).astype(np.float32) for _ in range(2))
    out = np.empty_like(x)
    K.affine_call(x, alpha, beta, out, threads=threads)()
    tx = torch.from_numpy(x)
    # two roundings (multiply, then add), never one fused multiply-add
    np.testing.assert_array_equal(out, (tx * torch.from_numpy(alpha)
                                        + torch.from_numpy(beta)).numpy())
    K.add_call(x, b, out, threads=threads)()
    np.testing.assert_array_equal(out, (tx + torch.from_numpy(b)).numpy())
    K.add_call(x, b, b, threads=threads)()  # in place
    np.testing.assert_array_equal(b, out)
    with pytest.raises(EngineError, match="same shapes"):
        K.add_call(x, b[:1], out)
    with pytest.raises(EngineError, match="per-channel"):
        K.affine_call(x, alpha[:3], beta, out)


# --------------------------------------------------------------------------- refusals


class Inner(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


class Outer(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.conv = BinaryConv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Identity(), inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv(x)).flatten(1)


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class FunctionalPReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((8,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight)


class RSignAsNumber(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sign = RSign(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sign(x) + x


@pytest.mark.parametrize("inner,match", [
    (Inner(), r"'sigmoid'.*module 'block\.1' \(Inner\)"),
    (Lambda(lambda x: torch.cat([x, x], 2)), r"cat.*module 'block\.1'.*channels"),
    (Lambda(lambda x: F.max_pool2d(x, 2, dilation=2)), r"max_pool2d.*'block\.1'.*dilation"),
    (Lambda(lambda x: F.adaptive_max_pool2d(x, 3)), r"adaptive_maxpool.*'block\.1'.*uneven"),
    (Lambda(lambda x: F.dropout(x, 0.5, training=True)), r"dropout.*'block\.1'.*training"),
    (Lambda(lambda x: torch.tanh(x)), r"'tanh'.*module 'block\.1' \(Lambda\)"),
    (FunctionalPReLU(), r"weight.*'block\.1' \(FunctionalPReLU\)"),
    (nn.Sequential(RSignAsNumber()), r"rsign 'block\.1\.0\.sign'.*real value"),
    (nn.GELU(), r"'block\.1'.*GELU"),
])
def test_refused_ops_name_the_op_and_module_path(inner, match):
    with pytest.raises(EngineError, match=match):
        compile_model(Outer(inner), (3, 8, 8))
