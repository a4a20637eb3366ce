"""The premise check: which weights get chosen, and that exactly their signs flip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnprune.nn import BinaryConv2d, BinaryLinear
from bnnprune.prune.premise import CHOICES, choose_weights, flip_signs, premise_curve


def tiny() -> nn.Module:
    """conv: 4 filters of 2x1x1 weights (8 weights); fc: 2 rows of 4 weights (8 weights)."""
    m = nn.Sequential(BinaryConv2d(2, 4, 1), nn.Flatten(), BinaryLinear(4, 2))
    with torch.no_grad():
        w0 = torch.tensor([0.5, -0.1, 0.0, 0.9, -0.7, 0.2, -0.05, 0.3])
        m[0].weight.copy_(w0.view(4, 2, 1, 1))
        m[2].weight.copy_(torch.tensor([[0.4, -0.8, 0.01, 0.6], [-0.3, 0.7, -0.2, 0.9]]))
    return m


def counts() -> dict[str, torch.Tensor]:
    return {
        "0": torch.tensor([5, 0, 3, 0, 0, 1, 0, 7], dtype=torch.int32).view(4, 2, 1, 1),
        "2": torch.tensor([[0, 2, 0, 0], [9, 0, 0, 4]], dtype=torch.int32),
    }


def _picked(mask: torch.Tensor) -> set[int]:
    return set(torch.nonzero(mask.flatten()).flatten().tolist())


def test_highest_wff_picks_the_most_flipped_weights_of_every_layer() -> None:
    masks = choose_weights(tiny(), counts(), 0.25, "highest_wff")  # 2 of 8 in each layer
    assert _picked(masks["0"]) == {7, 0}  # counts 7 and 5
    assert _picked(masks["2"]) == {4, 7}  # counts 9 and 4
    masks = choose_weights(tiny(), counts(), 0.5, "highest_wff")  # 4 of 8
    assert _picked(masks["0"]) == {7, 0, 2, 5}


def test_lowest_wff_picks_never_flipped_weights_and_breaks_ties_by_seed() -> None:
    zeros0 = {1, 3, 4, 6}
    seen = set()
    for seed in range(6):
        picked = _picked(choose_weights(tiny(), counts(), 0.25, "lowest_wff", seed)["0"])
        assert len(picked) == 2 and picked <= zeros0
        seen |= picked
    assert len(seen) > 2  # ties are broken differently by different seeds
    a = choose_weights(tiny(), counts(), 0.25, "lowest_wff", seed=3)
    b = choose_weights(tiny(), counts(), 0.25, "lowest_wff", seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_smallest_magnitude_and_random_choices() -> None:
    masks = choose_weights(tiny(), counts(), 0.25, "smallest_magnitude")
    assert _picked(masks["0"]) == {2, 6}  # |0.0| and |-0.05|
    assert _picked(masks["2"]) == {2, 6}  # |0.01| and |-0.2|
    r = choose_weights(tiny(), counts(), 0.375, "random", seed=1)
    assert all(int(m.sum()) == 3 for m in r.values())


def test_flip_signs_flips_exactly_the_chosen_signs_and_keeps_the_original() -> None:
    model = tiny()
    before = {n: torch.where(p >= 0, 1.0, -1.0) for n, p in model.state_dict().items()}
    masks = choose_weights(model, counts(), 0.5, "smallest_magnitude")  # includes w == 0
    flipped = flip_signs(model, masks)
    for name, layer in (("0", flipped[0]), ("2", flipped[2])):
        sign = torch.where(layer.weight >= 0, 1.0, -1.0)
        expect = torch.where(masks[name], -before[f"{name}.weight"], before[f"{name}.weight"])
        assert torch.equal(sign, expect)
    assert torch.equal(torch.where(model[0].weight >= 0, 1.0, -1.0), before["0.weight"])
    # a flipped weight's binary value really changes in the forward pass
    x = torch.randn(3, 2, 1, 1)
    assert not torch.allclose(model(x), flipped(x))


def test_premise_curve_evaluates_every_choice_and_fraction() -> None:
    seen = []

    def evaluate(m: nn.Module) -> float:
        changed = sum(int((torch.sign(a) != torch.sign(b)).sum())
                      for a, b in zip(m.parameters(), tiny().parameters(), strict=True))
        seen.append(changed)
        return 1.0 - changed / 16

    curves = premise_curve(tiny(), counts(), [0.0, 0.25, 0.5], evaluate)
    assert set(curves) == set(CHOICES)
    assert all(v == [1.0, 0.75, 0.5] for v in curves.values())  # 0, 4, 8 of 16 weights
    assert len(seen) == 3 * len(CHOICES)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="fraction"):
        choose_weights(tiny(), counts(), 1.5, "random")
    with pytest.raises(ValueError, match="choice"):
        choose_weights(tiny(), counts(), 0.1, "largest")
    with pytest.raises(ValueError, match="flip data"):
        choose_weights(tiny(), {"0": counts()["0"]}, 0.1, "random")
