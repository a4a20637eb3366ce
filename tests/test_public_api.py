"""The public API of ``import bnnprune``: cheap to import, each name its home module's object,
and the Python example of the package docstring (the README's) runs end to end."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import bnnprune as bp


def test_import_bnnprune_loads_neither_torch_nor_numpy_nor_numba() -> None:
    code = ("import sys, bnnprune; heavy = {'torch', 'numpy', 'numba', 'matplotlib'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_is_its_home_modules_object() -> None:
    assert bp.__all__ == sorted(bp._API)
    for name, (module, attr) in bp._API.items():
        assert getattr(bp, name) is getattr(importlib.import_module(module), attr), name
    assert set(bp.__all__) <= set(dir(bp))
    assert bp.train_model is importlib.import_module("bnnprune.train").train
    for sub in bp._SUBMODULES:  # subpackages on first use, like `import bnnprune.engine`
        assert getattr(bp, sub) is importlib.import_module(f"bnnprune.{sub}")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bp.nope  # noqa: B018


def test_docstring_example_trains_prunes_and_compiles(tmp_path) -> None:
    torch.manual_seed(0)  # fixed weights and inputs: the comparison below cannot drift
    # fashion-mnist's shape (1x28x28, 10 classes), made up: no download
    ds = bp.load_dataset("synthetic", channels=1, image_size=28, n_train=256, n_test=64)
    model = bp.build_model("small", width=0.25)
    result = bp.train_model(model, ds, bp.TrainConfig(epochs=2, batch_size=64, track_last=1))
    plan, pruned = bp.prune_trained(model, result.tracker, bp.parse_method("target+wff"),
                                    ds.input_shape, target=0.4)
    assert plan.reduction == pytest.approx(0.4, abs=0.1)
    assert bp.summarize(pruned, ds.input_shape).bops < bp.summarize(model, ds.input_shape).bops
    program = bp.compile_model(pruned, ds.input_shape)
    x = torch.randn(8, *ds.input_shape)
    with torch.no_grad():
        want = pruned.eval()(x).numpy()
    np.testing.assert_allclose(program(x), want, rtol=1e-4, atol=1e-3)
    bp.engine.save(program, tmp_path / "model.bnn")
    np.testing.assert_array_equal(bp.engine.load(tmp_path / "model.bnn")(x), program(x))
