import pytest
import torch
from torch import nn

from bnnprune.engine import EngineError, compile_model
from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d


class WithGelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = BinaryConv2d(3, 8, 3, padding=1)
        self.weird = nn.GELU()

    def forward(self, x):
        return self.weird(self.conv(x)).flatten(1)


class WithSigmoid(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x).flatten(1)


def test_unknown_module_is_named():
    with pytest.raises(EngineError, match="weird.*GELU"):
        compile_model(WithGelu(), (3, 8, 8))


def test_unknown_function_is_named():
    with pytest.raises(EngineError, match="sigmoid"):
        compile_model(WithSigmoid(), (3, 8, 8))


def test_wrong_input_shape_is_rejected():
    program = compile_model(build_model("small", width=0.25).eval(), (1, 28, 28))
    with pytest.raises(EngineError, match=r"\(N, 1, 28, 28\)"):
        program(torch.zeros(2, 3, 28, 28))


def test_compile_restores_training_mode():
    model = build_model("small", width=0.25).train()
    compile_model(model, (1, 28, 28))
    assert model.training
