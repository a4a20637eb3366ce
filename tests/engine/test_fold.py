import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.engine.fold import bn_affine, fold_threshold
from bnnprune.engine.kernels import block_weights, run_bconv, words
from bnnprune.engine.pack import pack_signs, pack_weights, unpack_signs
from bnnprune.nn import BinaryConv2d

from .conftest import randomize_bn


def test_bn_affine_matches_pytorch(rng):
    bn = randomize_bn(nn.Sequential(nn.BatchNorm2d(37)), seed=3)[0]
    x = torch.from_numpy(rng.standard_normal((4, 37, 5, 5)).astype(np.float32) * 10)
    alpha, beta = bn_affine(bn)
    mine = x.numpy().transpose(0, 2, 3, 1) * alpha + beta
    with torch.no_grad():
        ref = bn(x).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(mine, ref, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("scale", [False, True])
def test_threshold_matches_float_bn_sign(scale, rng):
    torch.manual_seed(0)
    cin, cout, k = 37, 45, 3
    conv = BinaryConv2d(cin, cout, k, padding=1, pad_value=-1.0, scale=scale)
    bn = nn.BatchNorm2d(cout)
    randomize_bn(nn.Sequential(bn), seed=1)
    with torch.no_grad():
        nbits = cin * k * k
        # means inside the reachable range so thresholds fall between 0 and K
        bn.running_mean.copy_(torch.randint(-nbits // 3, nbits // 3, (cout,)).float() * 0.37
                              * (conv.weight.abs().mean((1, 2, 3)) if scale else 1))
        bn.weight[:3] = torch.tensor([-1.5, 0.0, 2.0])
        bn.bias[1] = -0.5
    gammas = bn.weight.detach()
    assert (gammas < 0).any() and (gammas == 0).any()
    model = nn.Sequential(conv, bn).eval()
    x = torch.from_numpy(rng.standard_normal((6, cin, 8, 8)).astype(np.float32))
    with torch.no_grad():
        expect = np.where(model(x).numpy() >= 0, 1.0, -1.0)
        mul = (conv.weight.abs().mean((1, 2, 3)) if scale else torch.ones(cout)).numpy()
    thr, flip = fold_threshold(nbits, mul.astype(np.float32), np.zeros(cout, np.float32), bn,
                               spatial=True)
    assert flip[0] == 1 and flip[2] == 0
    assert thr[1] in (-1, nbits)  # zero gamma: constant channel
    xb = pack_signs(x.numpy().transpose(0, 2, 3, 1))
    xp = np.empty((6, 10, 10, words(cin)), np.uint64)
    xp[:] = pack_signs(-np.ones((1, cin), np.float32))[0]  # pad_value = -1
    xp[:, 1:9, 1:9] = xb
    wb = block_weights(pack_weights(conv.weight.detach().numpy()))
    got = run_bconv(np.ascontiguousarray(xp), wb, cout, (1, 1), nbits, (8, 8), thr=thr, flip=flip)
    assert np.array_equal(unpack_signs(got, cout), expect.transpose(0, 2, 3, 1))


def test_threshold_constant_channels():
    bn = nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.0, 0.0, 1.0]))
        bn.bias.copy_(torch.tensor([1.0, -1.0, 0.0]))
    thr, flip = fold_threshold(10, np.ones(3, np.float32), np.zeros(3, np.float32), bn,
                               spatial=False)
    # channel 0 always +1 (never bit), channel 1 always -1 (always bit)
    assert (thr[0], flip[0]) == (10, 0) and (thr[1], flip[1]) == (-1, 0)
    # channel 2: d = 10 - 2p >= 0 iff p <= 5 -> bit iff p > 5
    assert (thr[2], flip[2]) == (5, 0)
