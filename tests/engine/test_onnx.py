import numpy as np
import pytest
import torch

from bnnprune.deploy import export_onnx
from bnnprune.models import build_model

from .conftest import randomize_bn

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name,shape", [("nin", (3, 32, 32)), ("resnet18", (3, 32, 32)),
                                        ("binarynet", (3, 32, 32))])
def test_onnx_matches_pytorch(tmp_path, name, shape):
    torch.manual_seed(0)
    model = randomize_bn(build_model(name, width=0.25, pad_value=-1.0, scale=True), seed=2)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, shape)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, *shape)
    got = sess.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)
    assert (got.argmax(1) == ref.argmax(1)).all()
