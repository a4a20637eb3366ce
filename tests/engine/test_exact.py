"""Engine vs PyTorch: binary activations bit-exact, logits close, identical argmax."""

import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.engine import compile_model
from bnnprune.models import build_model, resize_to_state_dict
from bnnprune.nn import BinaryConv2d, BinaryLinear

from .conftest import assert_engine_matches, dyadic_fp_weights, dyadic_input, randomize_bn


def _prepare(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return dyadic_fp_weights(randomize_bn(model, seed=seed), seed=seed).eval()


class OddNet(nn.Module):
    """Odd channel counts, strides 1/2, kernels 1/3/5, ±1 padding, max/avg pools, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 37, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(37)
        self.c1 = BinaryConv2d(37, 65, 5, stride=2, padding=2, pad_value=-1.0)
        self.bn1 = nn.BatchNorm2d(65)
        self.pool1 = nn.MaxPool2d(3, 2, 1)
        self.c2 = BinaryConv2d(65, 130, 3, padding=1, pad_value=1.0, scale=True)
        self.bn2 = nn.BatchNorm2d(130)
        self.act = nn.Hardtanh()
        self.c3 = BinaryConv2d(130, 1, 1, bias=True)
        self.bn3 = nn.BatchNorm2d(1)
        self.c4 = BinaryConv2d(1, 29, 3, padding=1, pad_value=-1.0)
        self.bn4 = nn.BatchNorm2d(29)
        self.pool4 = nn.AvgPool2d(3, 2, 1)
        self.fc1 = BinaryLinear(29 * 3 * 3, 67, scale=True)
        self.bnf = nn.BatchNorm1d(67)
        self.fc2 = BinaryLinear(67, 7, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.stem(x))
        x = self.pool1(self.bn1(self.c1(x)))
        x = self.act(self.bn2(self.c2(x)))
        x = self.bn4(self.c4(self.bn3(self.c3(x))))
        x = torch.flatten(self.pool4(x), 1)
        return self.fc2(self.bnf(self.fc1(x)))


class ResidualNet(nn.Module):
    """A user model with an identity residual add and a real-valued downsampling shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 23, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(23)
        self.a1 = BinaryConv2d(23, 23, 3, padding=1, pad_value=-1.0)
        self.abn1 = nn.BatchNorm2d(23)
        self.a2 = BinaryConv2d(23, 23, 3, padding=1)
        self.abn2 = nn.BatchNorm2d(23)
        self.b1 = BinaryConv2d(23, 41, 3, stride=2, padding=1)
        self.bbn1 = nn.BatchNorm2d(41)
        self.short = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
                                   nn.Conv2d(23, 41, 1, bias=False), nn.BatchNorm2d(41))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(41, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.stem(x))
        x = self.abn2(self.a2(self.abn1(self.a1(x)))) + x
        x = self.bbn1(self.b1(x)) + self.short(x)
        return self.fc(self.pool(x).flatten(1))


@pytest.mark.parametrize("net,shape", [(OddNet, (3, 19, 19)), (ResidualNet, (1, 15, 15))])
def test_random_models_exact(net, shape):
    model = _prepare(net())
    program = compile_model(model, shape)
    assert assert_engine_matches(model, program, dyadic_input((5, *shape))) >= 2


ZOO = [
    ("nin", (3, 32, 32)),
    ("small", (1, 28, 28)),
    ("resnet18", (3, 32, 32)),
    ("binarynet", (3, 32, 32)),
    ("vgg_small", (3, 32, 32)),
    ("alexnet", (3, 32, 32)),
]


@pytest.mark.parametrize("name,shape", ZOO)
def test_zoo_models_exact(name, shape):
    model = _prepare(build_model(name, width=0.25, in_channels=shape[0], image_size=shape[1]))
    program = compile_model(model, shape)
    assert assert_engine_matches(model, program, dyadic_input((3, *shape), seed=7)) >= 2


def test_pruned_like_model_exact():
    """A zoo model rebuilt with odd channel counts, as after channel pruning."""
    base = build_model("nin", width=0.25)
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    binary = [n for n, m in base.named_modules() if isinstance(m, BinaryConv2d)]
    names = [n for n, _ in base.named_modules()]
    mods = dict(base.named_modules())
    for n in binary[:-1]:
        keep = int(mods[n].out_channels * 0.61) | 1  # odd
        sd[f"{n}.weight"] = sd[f"{n}.weight"][:keep]
        i = names.index(n)
        bn = names[i + 1]
        for key in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{bn}.{key}"] = sd[f"{bn}.{key}"][:keep]
        nxt = next(f for f in names[i + 1:] if isinstance(mods[f], nn.Conv2d))
        sd[f"{nxt}.weight"] = sd[f"{nxt}.weight"][:, :keep]
    pruned = build_model("nin", width=0.25)
    resize_to_state_dict(pruned, sd)
    pruned.load_state_dict(sd)
    channels = [m.out_channels for m in pruned.modules() if isinstance(m, BinaryConv2d)]
    assert any(c % 2 == 1 for c in channels) and channels != [
        m.out_channels for m in base.modules() if isinstance(m, BinaryConv2d)]
    model = _prepare(pruned, seed=3)
    program = compile_model(model, (3, 32, 32))
    assert assert_engine_matches(model, program, dyadic_input((4, 3, 32, 32), seed=2)) >= 5


def test_torch_and_numpy_inputs_and_batches():
    model = _prepare(build_model("small", width=0.25))
    program = compile_model(model, (1, 28, 28))
    x = dyadic_input((5, 1, 28, 28))
    out_t = program(x)
    out_n = program(x.numpy(), batch_size=2)
    assert out_t.shape == (5, 10) and out_t.dtype == np.float32
    np.testing.assert_allclose(out_t, out_n, rtol=1e-5, atol=1e-4)
    assert (out_t.argmax(1) == out_n.argmax(1)).all()
