import inspect

import pytest
import torch
from torch import nn

from bnnprune.models import MODELS, ZOO, build_model, model_from_arch
from bnnprune.nn import binary_layers, is_binary_layer


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_every_model_adapts_to_input_and_keeps_first_and_last_layers_full_precision(name, shape):
    c, s = shape
    m = build_model(name, width=0.25, in_channels=c, num_classes=7, image_size=s).eval()
    assert m(torch.randn(2, c, s, s)).shape == (2, 7)
    weighted = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert not is_binary_layer(weighted[0]) and not is_binary_layer(weighted[-1])
    assert len(binary_layers(m)) >= 3
    assert m.arch == {
        "name": name,
        "kwargs": {"width": 0.25, "in_channels": c, "num_classes": 7, "image_size": s},
    }


def test_width_scales_channels():
    full = binary_layers(build_model("nin"))
    quarter = binary_layers(build_model("nin", width=0.25))
    assert [m.out_channels for m in full.values()] == [160, 96, 192, 192, 192, 192, 192]
    assert [m.out_channels for m in quarter.values()] == [40, 24, 48, 48, 48, 48, 48]


def test_resnet18_has_real_valued_shortcuts_with_downsampling():
    m = build_model("resnet18", width=0.25)
    sc = m.layer2[0].shortcut
    assert isinstance(sc[1], nn.Conv2d) and not is_binary_layer(sc[1])
    assert isinstance(m.layer1[0].shortcut, nn.Identity)


def test_rebuild_resized_model_from_spec_and_state_dict():
    m = build_model("small", width=0.5)
    sd = m.state_dict()
    # shrink bconv2's outputs to 5 channels (and everything that depends on them)
    sd["bconv2.weight"] = sd["bconv2.weight"][:5]
    for k in ("weight", "bias", "running_mean", "running_var"):
        sd[f"bn2.{k}"] = sd[f"bn2.{k}"][:5]
    sd["bconv3.weight"] = sd["bconv3.weight"][:, :5]
    rebuilt = model_from_arch(m.arch, sd)
    assert rebuilt.bconv2.out_channels == 5 and rebuilt.bconv3.in_channels == 5
    assert rebuilt.bn2.num_features == 5
    assert rebuilt.eval()(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "width"),
        ({"num_classes": 1}, "num_classes"),
        ({"depth": 3}, "takes no argument"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("small", **kwargs)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("lenet")


@pytest.mark.parametrize("zoo", ZOO, ids=lambda z: z.name)
def test_zoo_entry_builds_for_its_default_input_and_says_so_in_its_signature(zoo):
    assert MODELS[zoo.name] is zoo
    params = inspect.signature(MODELS[zoo.name]).parameters
    assert list(params) == ["width", "in_channels", "num_classes", "image_size", "pad_value",
                            "scale"]
    assert (params["in_channels"].default, params["image_size"].default) == (
        zoo.in_channels, zoo.image_size)
    m = build_model(zoo.name, width=0.25).eval()
    assert m(torch.randn(2, zoo.in_channels, zoo.image_size, zoo.image_size)).shape == (2, 10)
