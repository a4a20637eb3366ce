"""The per-layer summary and count_bops, checked against hand arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bnnprune.metrics import (
    LayerSummary,
    ModelSummary,
    binary_channels,
    count_bops,
    format_bytes,
    format_count,
    summarize,
)
from bnnprune.models import MODELS, build_model
from bnnprune.nn import BinaryConv2d, BinaryLinear

SHAPE = (1, 8, 8)


def hand_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # fp, with bias
        nn.BatchNorm2d(4),
        BinaryConv2d(4, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.MaxPool2d(2),
        nn.Flatten(),
        BinaryLinear(8 * 4 * 4, 16),
        nn.BatchNorm1d(16),
        nn.Linear(16, 10),
    )


def test_hand_counted_totals() -> None:
    s = summarize(hand_model(), SHAPE)
    bops = 8 * 8 * 8 * (4 * 9) + 16 * (8 * 4 * 4)  # binary conv + binary linear
    float_macs = 4 * 8 * 8 * (1 * 9) + 10 * 16  # fp conv + fp linear
    binary_params = 8 * 4 * 9 + 16 * 128
    float_params = (4 * 9 + 4) + 2 * 4 + 2 * 8 + 2 * 16 + (16 * 10 + 10)
    buffers = 2 * 4 + 2 * 8 + 2 * 16  # BN running mean + var
    assert (bops, float_macs, binary_params, float_params, buffers) == (
        20480, 2464, 2336, 266, 56)
    assert s.bops == bops
    assert s.float_macs == float_macs
    assert s.binary_params == binary_params
    assert s.float_params == float_params
    assert s.total_params == binary_params + float_params == 2602
    assert s.float_buffers == buffers
    assert s.memory_bytes == binary_params / 8 + (float_params + buffers) * 4 == 1580
    assert s.float32_memory_bytes == (binary_params + float_params + buffers) * 4 == 10632
    assert s.compression_ratio == pytest.approx(10632 / 1580)
    assert s.binary_mac_fraction == pytest.approx(20480 / (20480 + 2464))
    assert count_bops(hand_model(), SHAPE) == bops


def test_hand_counted_rows() -> None:
    s = summarize(hand_model(), SHAPE)
    rows = {la.name: la for la in s.layers}
    assert [la.name for la in s.layers] == ["0", "1", "2", "3", "4", "6", "7", "8"]  # no Flatten
    assert rows["0"] == LayerSummary("0", "Conv2d", 32, 32, (4, 8, 8), 0, 40, 0, 160.0, 0, 2304)
    assert rows["1"] == LayerSummary("1", "BatchNorm2d", 32, 32, (4, 8, 8), 0, 8, 8, 64.0, 0, 0)
    assert rows["2"] == LayerSummary(
        "2", "BinaryConv2d", 1, 1, (8, 8, 8), 288, 0, 0, 288 / 8, 18432, 0)
    assert rows["4"] == LayerSummary("4", "MaxPool2d", 32, None, (8, 4, 4), 0, 0, 0, 0.0, 0, 0)
    assert rows["6"] == LayerSummary(
        "6", "BinaryLinear", 1, 1, (16,), 2048, 0, 0, 2048 / 8, 2048, 0)
    assert rows["8"] == LayerSummary("8", "Linear", 32, 32, (10,), 0, 170, 0, 170 * 4, 0, 160)
    assert sum(la.memory_bytes for la in s.layers) == s.memory_bytes


def test_scale_bias_and_float_input_binary_layers() -> None:
    """scale adds no params; a binary bias is a float param; float input means float MACs."""
    m = nn.Sequential(
        BinaryConv2d(2, 3, 3, padding=1, scale=True, bias=True),
        BinaryConv2d(3, 5, 1, binarize_input=False),
    )
    s = summarize(m, (2, 4, 4))
    a, b = s.layers
    assert (a.input_bits, a.weight_bits, a.binary_params, a.float_params) == (1, 1, 3 * 2 * 9, 3)
    assert a.bops == 3 * 4 * 4 * (2 * 9) and a.float_macs == 0
    assert (b.input_bits, b.weight_bits, b.binary_params) == (32, 1, 5 * 3)
    assert b.bops == 0 and b.float_macs == 5 * 4 * 4 * 3
    assert count_bops(m, (2, 4, 4)) == s.bops == 3 * 4 * 4 * (2 * 9)


def test_grouped_conv_and_shared_and_unused_modules() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False)
            self.shared = nn.Conv2d(8, 8, 1, bias=False)
            self.unused = nn.Linear(3, 2)
            self.gain = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shared(self.shared(self.g(x))) * self.gain

    s = summarize(Net(), (4, 5, 5))
    names = [la.name for la in s.layers]
    assert names == ["g", "shared", "shared (call 2)", "(root)", "unused"]
    g, sh1, sh2, root, unused = s.layers
    assert g.float_macs == 8 * 5 * 5 * (4 // 2 * 9)
    assert sh1.float_macs == sh2.float_macs == 8 * 5 * 5 * 8
    assert (sh1.float_params, sh2.float_params) == (64, 0)  # shared weights count once
    assert root.float_params == 1 and root.output_shape == (8, 5, 5)
    assert unused.output_shape is None and unused.float_params == 3 * 2 + 2
    assert s.total_params == sum(p.numel() for p in Net().parameters())


def test_zoo_counts_agree_with_count_bops_and_parameters() -> None:
    for name in sorted(MODELS):
        model = build_model(name, width=0.25, in_channels=3, image_size=32)
        s = summarize(model, (3, 32, 32))
        assert s.bops == count_bops(model, (3, 32, 32)) > 0, name
        assert s.float_macs > 0, name
        assert s.total_params == sum(p.numel() for p in model.parameters()), name
        binary = sum(m.weight.numel() for m in model.modules()
                     if isinstance(m, (BinaryConv2d, BinaryLinear)))
        assert s.binary_params == binary, name
        assert s.memory_bytes < s.float32_memory_bytes, name
        text = s.to_text()
        for layer in s.layers:
            assert layer.name in text, (name, layer.name)


def test_to_text_has_every_layer_and_the_totals() -> None:
    text = summarize(hand_model(), SHAPE).to_text()
    lines = text.splitlines()
    assert lines[0] == "Model summary for input (C, H, W) = (1, 8, 8)"
    for name, typ in [("0", "Conv2d"), ("2", "BinaryConv2d"), ("6", "BinaryLinear"),
                      ("8", "Linear")]:
        assert any(ln.split()[:2] == [name, typ] for ln in lines), name
    for total in ["20,480", "2,464", "2,602", "2,336", "1,580 B", "10,632 B", "6.73x"]:
        assert total in text, total
    table = lines[1:lines.index("")]
    widths = {len(ln) for ln in table if not ln.startswith("Total")}
    assert len(widths) == 1  # right-aligned numeric columns: every row ends at one column


def test_to_dict_is_json_and_matches() -> None:
    s = summarize(hand_model(), SHAPE)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["bops"] == 20480 and d["input_shape"] == [1, 8, 8]
    assert d["layers"][2]["output_shape"] == [8, 8, 8]
    assert d["layers"][4]["weight_bits"] is None
    assert len(d["layers"]) == len(s.layers)
    assert ModelSummary.from_layers(s.input_shape, s.layers) == s


def test_modes_restored_per_module() -> None:
    m = hand_model().train()
    m[1].eval()
    summarize(m, SHAPE)
    count_bops(m, SHAPE)
    assert m.training and not m[1].training and m[3].training
    assert all(not h for mod in m.modules() for h in mod._forward_hooks.values())


def test_binary_channels() -> None:
    assert binary_channels(hand_model()) == {"2": 8, "6": 16}
    model = build_model("resnet18", width=0.25)
    ch = binary_channels(model)
    assert ch["layer1.0.conv1"] == 16 and ch["layer4.1.conv2"] == 128 and len(ch) == 16


@pytest.mark.parametrize("bad", [(8, 8), (1, 8, 8, 1), (0, 8, 8), (1, -8, 8), (1.0, 8, 8),
                                 (True, 8, 8), "1,8,8", None])
def test_bad_input_shape(bad: object) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        summarize(hand_model(), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_shape"):
        count_bops(hand_model(), bad)  # type: ignore[arg-type]


def test_model_that_rejects_the_shape() -> None:
    m = hand_model().train()
    msg = r"does not accept input \(C, H, W\) = \(3, 8, 8\)"
    for fn in (summarize, count_bops):
        with pytest.raises(ValueError, match=msg) as e:
            fn(m, (3, 8, 8))
        assert "\n" not in str(e.value)
    assert m.training
    assert all(not h for mod in m.modules() for h in mod._forward_hooks.values())


def test_units() -> None:
    assert format_count(950) == "950"
    assert format_count(1234) == "1.23 K"
    assert format_count(1_230_000) == "1.23 M"
    assert format_count(45_600_000_000) == "45.6 G"
    assert format_bytes(292) == "292 B"
    assert format_bytes(1.125) == "1.12 B"
    assert format_bytes(45.6 * 1024) == "45.6 KiB"
    assert format_bytes(3 * 1024 * 1024) == "3.00 MiB"
