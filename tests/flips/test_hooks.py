"""Hooks instead of chores: FlipTracker.attach(optimizer) and attach_clipping, with SGD, Adam
and AdamW; a hooked tracker counts exactly as one stepped by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.flips import FlipTracker
from bnnprune.nn import BinaryConv2d, BinaryLinear, attach_clipping

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.1),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(BinaryConv2d(2, 3, 3, clip=None), nn.Flatten(), BinaryLinear(3, 4))


def _sign_changes(history: list[dict[str, torch.Tensor]], window: tuple[int, int]) -> dict:
    """Per layer: how often each weight's sign (w < 0) changed in steps window[0]..window[1]."""
    out = {}
    for name in history[0]:
        neg = np.stack([(h[name] < 0).numpy() for h in history])  # observations 0..T
        changed = neg[1:] != neg[:-1]  # step s = row s-1
        out[name] = changed[window[0] - 1 : window[1]].sum(axis=0)
    return out


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {"0": model[0].weight.detach().clone(), "2": model[2].weight.detach().clone()}


def test_hooked_tracker_counts_a_hand_made_sign_sequence_exactly() -> None:
    """SGD with lr=1 and grad = w_old - w_new walks through hand-made weights exactly."""
    model = _model()
    g = torch.Generator().manual_seed(1)
    seq = [{n: torch.randint(-4, 4, w.shape, generator=g).float() / 8 for n, w in
            _weights(model).items()} for _ in range(7)]  # fmt: skip
    with torch.no_grad():
        model[0].weight.copy_(seq[0]["0"])
        model[2].weight.copy_(seq[0]["2"])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    tracker = FlipTracker(model, window=(2, 5)).attach(opt)
    for t in range(1, len(seq)):
        model[0].weight.grad = seq[t - 1]["0"] - seq[t]["0"]
        model[2].weight.grad = seq[t - 1]["2"] - seq[t]["2"]
        opt.step()
        assert torch.equal(model[0].weight, seq[t]["0"])
    want = _sign_changes(seq, (2, 5))
    assert tracker.step_count == 6 and tracker.steps_in_window == 4
    for n in ("0", "2"):
        np.testing.assert_array_equal(tracker.counts[n].numpy(), want[n])
    assert sum(int(v.sum()) for v in want.values()) > 0  # the sequence does flip signs


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_attached_tracker_equals_a_tracker_stepped_by_hand(opt_name: str) -> None:
    model = _model()
    shadow = copy.deepcopy(model)  # follows model's weights; its tracker is stepped by hand
    opt = OPTIMIZERS[opt_name](model.parameters())
    hooked = FlipTracker(model, window=(3, 9)).attach(opt)
    by_hand = FlipTracker(shadow, window=(3, 9))
    history = [_weights(model)]
    g = torch.Generator().manual_seed(2)
    for step in range(12):
        x = torch.randn(5, 2, 3, 3, generator=g)
        target = torch.randn(5, 4, generator=g)  # a new direction every step: signs flip
        opt.zero_grad()
        (model(x) * target).sum().backward()
        opt.step()
        shadow.load_state_dict(model.state_dict())
        by_hand.step()
        history.append(_weights(model))
        if step % 4 == 3:
            hooked.end_epoch()
            by_hand.end_epoch()
    assert hooked.step_count == 12
    a, b = hooked.state_dict(), by_hand.state_dict()
    for n in a["counts"]:
        assert torch.equal(a["counts"][n], b["counts"][n])
        np.testing.assert_array_equal(a["counts"][n].numpy(), _sign_changes(history, (3, 9))[n])
    torch.testing.assert_close(a["ratios"], b["ratios"], rtol=0, atol=0)
    assert a["epoch_ends"] == b["epoch_ends"] == [4, 8, 12]
    assert int(sum(c.sum() for c in a["counts"].values())) > 0


def test_detach_stops_counting_and_reattaching_works() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = FlipTracker(model).attach(opt)
    with pytest.raises(ValueError, match="attached to an optimizer already"):
        tracker.attach(opt)
    model(torch.randn(2, 2, 3, 3)).sum().backward()
    opt.step()
    tracker.detach()
    opt.step()
    assert tracker.step_count == 1
    tracker.attach(opt)
    opt.step()
    assert tracker.step_count == 2


def test_attach_refuses_an_optimizer_without_the_tracked_weights() -> None:
    model = _model()
    other = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(ValueError, match="does not update any binary layer"):
        FlipTracker(model).attach(other)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_clipping_hook_clips_after_every_step_until_detached(opt_name: str) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(BinaryConv2d(2, 3, 3, clip=0.5), nn.Flatten(),
                          BinaryLinear(3, 4, clip=None))  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.45 * torch.sign(torch.randn(p.shape)))
    opt = OPTIMIZERS[opt_name](model.parameters())
    hook = attach_clipping(model, opt)

    def step() -> None:  # gradients that push every |w| up
        for p in model.parameters():
            p.grad = -torch.sign(p.detach())
        opt.step()

    for _ in range(3):
        step()
        torch.testing.assert_close(model[0].weight.abs(), torch.full((3, 2, 3, 3), 0.5))
    assert float(model[2].weight.detach().abs().min()) > 0.5  # clip=None: left alone
    hook.detach()
    step()
    assert float(model[0].weight.detach().abs().min()) > 0.5


def test_clipping_refuses_a_model_without_binary_layers() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="no binary layers"):
        attach_clipping(model, torch.optim.SGD(model.parameters(), lr=0.1))
