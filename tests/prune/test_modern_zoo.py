"""Bi-Real Net and ReActNet through flip tracking, channel surgery (RSign/RPReLU parameters
sliced with their channels) and the packed engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.engine import compile_model
from bnnprune.flips import FlipTracker
from bnnprune.models import build_model
from bnnprune.nn import RPReLU, RSign, binary_layers, clip_latent_weights
from bnnprune.prune import analyze, apply_plan, compute_sensitivity, plan_manual

SHAPE = (3, 16, 16)

# width 0.125: group (named after its first binary layer) -> (channels, binary layers)
GROUPS = {
    "birealnet18": {"layer1.0.conv": (8, 4), "layer2.0.conv": (16, 4),
                    "layer3.0.conv": (32, 4), "layer4.0.conv": (64, 4)},
    "reactnet": {"block1.conv3x3": (4, 1), "block1.conv1x1": (8, 2), "block2.conv1x1": (16, 4),
                 "block4.conv1x1": (32, 4), "block6.conv1x1": (64, 12),
                 "block12.conv1x1": (128, 3)},
}
KEEP = {
    "birealnet18": {"layer1.0.conv": 5, "layer2.0.conv": 11, "layer3.0.conv": 19,
                    "layer4.0.conv": 40},
    "reactnet": {"block1.conv3x3": 3, "block1.conv1x1": 5, "block2.conv1x1": 13,
                 "block4.conv1x1": 17, "block6.conv1x1": 41, "block12.conv1x1": 100},
}


def _track_flips(model: nn.Module, steps: int = 3) -> FlipTracker:
    """A few SGD steps on random data with the flip tracker attached."""
    torch.manual_seed(0)
    tracker = FlipTracker(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        clip_latent_weights(model)
        tracker.step()
    return tracker


def _widths(model: nn.Module, types: tuple[type, ...]) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, types):
            p = next(m.parameters())
            out[name] = int(p.shape[0])
    return out


@pytest.mark.parametrize("name", ["birealnet18", "reactnet"])
def test_track_prune_and_run_modern_zoo_model(name):
    model = build_model(name, width=0.125, image_size=SHAPE[1])
    tracker = _track_flips(model)
    assert sum(int(c.sum()) for c in tracker.counts.values()) > 0  # weights did flip
    space = analyze(model, SHAPE)
    assert {g.name: (g.channels, len(g.binary)) for g in space.groups} == GROUPS[name]
    assert not space.fixed
    plan = plan_manual(model, SHAPE, KEEP[name])
    result = apply_plan(model, plan, "wff", compute_sensitivity(tracker, model))
    pruned = result.model
    group_of = space.group_of()
    keep = {layer: KEEP[name][group_of[layer].name] for layer in group_of}
    # every conv (binary, stem, shortcut) that belongs to a group has the planned width
    convs = {n: int(m.out_channels) for n, m in pruned.named_modules()
             if isinstance(m, nn.Conv2d) and n in keep}
    assert convs == {n: keep[n] for n in convs} and set(binary_layers(pruned)) <= set(convs)
    # each BN, RSign and RPReLU lost the channels of the tensor it acts on (the groups'
    # widths all differ, so a module's old width names its group)
    to_width = {g.channels: KEEP[name][g.name] for g in space.groups}
    before = _widths(model, (RSign, RPReLU, nn.BatchNorm2d))
    assert _widths(pruned, (RSign, RPReLU, nn.BatchNorm2d)) == {
        n: to_width[c] for n, c in before.items()}
    assert sum(isinstance(m, RSign | RPReLU) for m in pruned.modules()) == (
        52 if name == "reactnet" else 0)
    assert pruned.fc.in_features == KEEP[name][list(GROUPS[name])[-1]]
    # the pruned model runs on the packed engine with PyTorch's predictions
    pruned.eval()
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, *SHAPE)
    program = compile_model(pruned, SHAPE)
    with torch.no_grad():
        ref = pruned(x).numpy()
    got = program(x)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * (np.abs(ref).max() + 1))
    assert (got.argmax(1) == ref.argmax(1)).all()
