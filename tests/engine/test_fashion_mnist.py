"""Identical predictions on 1000 real test images (Fashion-MNIST t10k, read directly)."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnprune.engine import compile_model
from bnnprune.models import build_model

from .conftest import randomize_bn

ROOT = Path("/usr/share/datasets/fashion-mnist")


def _images(n: int) -> np.ndarray:
    with gzip.open(ROOT / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    data = np.frombuffer(raw, np.uint8, count=count * rows * cols, offset=16)
    return data.reshape(count, 1, rows, cols)[:n].astype(np.float32) / 255.0


@pytest.mark.skipif(not (ROOT / "t10k-images-idx3-ubyte.gz").exists(), reason="no Fashion-MNIST")
def test_identical_predictions_on_1000_images():
    torch.manual_seed(0)
    model = randomize_bn(build_model("small"), seed=11)
    x = torch.from_numpy((_images(1000) - 0.2860) / 0.3530)
    program = compile_model(model, (1, 28, 28))
    got = program(x, batch_size=250)
    with torch.no_grad():
        ref = model(x).numpy()
    assert len(np.unique(ref.argmax(1))) > 1  # the random model is not constant
    assert (got.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-2)
