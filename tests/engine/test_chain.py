"""Consecutive serial kernel calls run as one compiled call: same results, same order."""

import functools

import numpy as np
import pytest
import torch

from bnnprune.engine import compile_model
from bnnprune.engine import kernels as K
from bnnprune.engine.kernels import chain as C
from bnnprune.engine.kernels.act import _add_ser, _prelu_ser
from bnnprune.engine.kernels.bconv import _DRIVERS
from bnnprune.engine.kernels.fconv import _fconv_ser
from bnnprune.engine.kernels.intrinsics import SCHEME_ENV, SCHEMES
from bnnprune.engine.kernels.pad import _pad_par, _pad_ser
from bnnprune.models import build_model

from .conftest import dyadic_fp_weights, dyadic_input, randomize_bn


@pytest.mark.parametrize("name,width,shape", [("nin", 0.25, (3, 32, 32)),
                                              ("nin", 1.0, (3, 32, 32)),
                                              ("small", 0.5, (1, 28, 28)),
                                              ("reactnet", 0.125, (3, 32, 32)),
                                              ("birealnet18", 0.125, (3, 32, 32))])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_serial_plan_is_one_chain_with_the_unchained_results(name, width, shape, scheme,
                                                                monkeypatch):
    monkeypatch.setenv(SCHEME_ENV, scheme)  # the GEMM variant a plan binds
    torch.manual_seed(0)
    model = dyadic_fp_weights(randomize_bn(build_model(name, width=width, in_channels=shape[0],
                                                       image_size=shape[1])))
    program = compile_model(model.eval(), shape)
    plan = program.plan(2, threads=1)
    calls = [c for _, cs in plan.steps for c in cs]
    # every call is a serial driver call the chain knows: the whole run is one chain
    assert [type(c) for c in plan._flat] == [K.Chain]
    chain = plan._flat[0]
    assert chain.calls == calls and len(chain.offs) == len(calls) + 1
    used = {C.KERNELS[int(chain.tab[o])][0] for o in chain.offs[:-1]}
    assert _fconv_ser in used  # float and binary convolutions
    assert used & {_DRIVERS[s][1] for s in SCHEMES}
    if scheme == "csa" and width == 1.0:  # nin's 3x3 192-channel conv: 27-word windows
        assert _DRIVERS["csa"][1] in used
    if name == "reactnet":
        assert used >= {_prelu_ser, _add_ser}  # RPReLU, the residual add
    x = dyadic_input((2, *shape), seed=3).numpy()
    got = plan.run(x).copy()
    plan.bufs[program.output][...] = 0
    plan.load(x)
    for c in calls:  # the same calls one by one from Python
        c()
    np.testing.assert_array_equal(plan.bufs[program.output], got)
    np.testing.assert_array_equal(program(x, batch_size=2, threads=1).reshape(got.shape), got)


def _pads(dtype, rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    if dtype == np.uint64:
        x = x.view(np.uint32).astype(np.uint64) << np.uint64(7)
    out = np.full((2, 5, 8, 5), 9, dtype)
    return x, out


def test_chain_calls_merges_runs_in_order_and_leaves_other_calls(rng):
    (xb, ob), (xf, of), (x3, o3) = (_pads(d, rng) for d in (np.uint64, np.float32, np.uint64))
    order = []
    calls = [K.pad_call(xb, (1, 2), ob, threads=1), K.pad_call(xf, (1, 2), of, threads=1),
             lambda: order.append("py"),
             K.pad_call(x3, (1, 2), o3, threads=1)]
    assert all(c.func is _pad_ser for c in calls if isinstance(c, functools.partial))
    merged = K.chain_calls(calls)
    assert [type(c) for c in merged] == [K.Chain, type(calls[2]), functools.partial]
    assert merged[0].calls == calls[:2] and merged[2] is calls[3]
    for c in merged:
        c()
    assert order == ["py"]
    for x, o, d in ((xb, ob, np.uint64), (xf, of, np.float32), (x3, o3, np.uint64)):
        expect = np.full(o.shape, 9, d)
        expect[:, 1:-1, 2:-2] = x
        np.testing.assert_array_equal(o, expect)
    # the bits and the float32 pad are the pad driver's two layouts, two kernel ids
    ids = [int(merged[0].tab[o]) for o in merged[0].offs[:-1]]
    assert ids == [3, 4] and [C.KERNELS[k][0] for k in ids] == [_pad_ser, _pad_ser]


def test_every_kernel_id_calls_its_drivers_row_function():
    # run_chain's branch for id k calls the row function of the driver listed at k
    src = C.run_chain.py_func.__code__.co_names
    for kid, (driver, _) in enumerate(C.KERNELS):
        rows = driver.py_func.__globals__["ROWS"]
        assert rows.__name__ in src, (kid, rows.__name__)


def test_encode_call_refuses_what_its_kernel_spec_does_not_describe(rng):
    x, out = _pads(np.uint64, rng)
    assert C.encode_call(functools.partial(_pad_ser, 2, 1, x, 1, 2, out)) is not None
    assert C.encode_call(functools.partial(_pad_ser, 2, 1, x, 1, 2, out[:, ::2])) is None
    assert C.encode_call(functools.partial(_pad_ser, 2, 1, x, 1.0, 2, out)) is None  # float
    assert C.encode_call(functools.partial(_pad_ser, 2, 1, x, True, 2, out)) is None  # bool
    assert C.encode_call(functools.partial(_pad_ser, 2, 1, x, 1, 2)) is None  # arity
    assert C.encode_call(functools.partial(_pad_ser, 2, 1, x.astype(np.int64), 1, 2,
                                           out.astype(np.int64))) is None  # no int64 variant
    assert C.encode_call(functools.partial(_pad_par, 2, 2, x, 1, 2, out)) is None  # parallel
    assert C.encode_call(lambda: None) is None
    assert K.chain_calls([]) == []
