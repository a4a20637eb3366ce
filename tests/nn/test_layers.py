import pytest
import torch
import torch.nn.functional as F

from bnnprune.nn import BinaryConv2d, BinaryLinear, binarize, clip_latent_weights, sign


def test_sign_maps_zero_to_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-9, -1e-9, 3.0])
    assert sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sign_keeps_dtype_and_makes_two_full_size_passes(dtype):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.sizes.append(out.numel())
            return out

    x = torch.randn(3, 4, 5, 6).to(dtype)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, float("nan")])
    with Ops() as ops:
        y = sign(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x)))
    assert y[0, 0, 0, :3].tolist() == [1.0, 1.0, -1.0]
    assert sum(n == x.numel() for n in ops.sizes) == 2  # compare and select, nothing else


def test_ste_gradient_passes_only_inside_unit_interval():
    x = torch.tensor([-1.5, -1.0, -0.3, 0.0, 0.7, 1.0, 1.2], requires_grad=True)
    y = binarize(x)
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]))
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]


@pytest.mark.parametrize("pad_value", [1.0, -1.0])
def test_binary_conv_equals_float_conv_on_pm1_tensors(pad_value):
    torch.manual_seed(0)
    conv = BinaryConv2d(5, 7, 3, stride=2, padding=1, pad_value=pad_value)
    x = sign(torch.randn(2, 5, 9, 9))
    wb = sign(conv.weight.detach())
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), value=pad_value), wb, stride=2)
    out = conv(x)
    assert torch.equal(out, ref)
    # every output is an integer of the right parity: a sum of 5*9 (±1) products
    assert torch.all((out + 45) % 2 == 0)
    # the padding value matters: a corner output differs between +1 and -1 padding
    other = F.conv2d(F.pad(x, (1, 1, 1, 1), value=-pad_value), wb, stride=2)
    assert not torch.equal(out[..., 0, 0], other[..., 0, 0])


def test_binary_conv_binarizes_real_inputs():
    torch.manual_seed(1)
    conv = BinaryConv2d(3, 4, 1)
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(conv(x), conv(sign(x)))
    conv_real = BinaryConv2d(3, 4, 1, binarize_input=False)
    conv_real.weight.data.copy_(conv.weight.data)
    assert torch.allclose(conv_real(x), F.conv2d(x, sign(conv.weight.detach())))


def test_scale_multiplies_each_channel_by_mean_abs_weight():
    torch.manual_seed(2)
    lin = BinaryLinear(6, 3, scale=True)
    x = sign(torch.randn(4, 6))
    alpha = lin.weight.detach().abs().mean(1)
    ref = F.linear(x, sign(lin.weight.detach())) * alpha
    assert torch.allclose(lin(x), ref)


def test_bad_pad_value_is_refused():
    with pytest.raises(ValueError, match="pad_value"):
        BinaryConv2d(1, 1, 3, padding=1, pad_value=0.0)


def test_clip_latent_weights_only_touches_binary_layers():
    model = torch.nn.Sequential(BinaryConv2d(2, 2, 1), torch.nn.Conv2d(2, 2, 1))
    for p in model.parameters():
        p.data.fill_(3.0)
    clip_latent_weights(model)
    assert model[0].weight.max().item() == 1.0
    assert model[1].weight.max().item() == 3.0
