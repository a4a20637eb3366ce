"""Sensitivity from flip counts: p_l, channel scores, thresholds and bad flip data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnprune.flips import FlipTracker
from bnnprune.nn import BinaryConv2d, BinaryLinear
from bnnprune.prune import DEFAULT_THRESHOLD, compute_sensitivity, flip_frequencies, flip_table


def tiny() -> nn.Module:
    """conv: 3 filters of 2x1x1 weights; fc: 2 rows of 3 weights."""
    return nn.Sequential(BinaryConv2d(2, 3, 1), nn.Flatten(), BinaryLinear(3, 2))


def hand_counts() -> dict[str, torch.Tensor]:
    return {
        "0": torch.tensor([[0, 0], [1, 3], [4, 0]], dtype=torch.int32).view(3, 2, 1, 1),
        "2": torch.tensor([[0, 0, 0], [2, 2, 1]], dtype=torch.int32),
    }


def test_p_and_channel_scores_on_hand_made_counts() -> None:
    sens = compute_sensitivity(hand_counts(), tiny(), steps=4)
    # threshold 0: a weight is insensitive once it flipped at all
    assert sens.threshold == DEFAULT_THRESHOLD == 0
    assert sens.p == {"0": pytest.approx(3 / 6), "2": pytest.approx(3 / 6)}
    assert sens.insensitive == {"0": 3, "2": 3} and sens.numel == {"0": 6, "2": 6}
    # channel score = mean over the filter of count / steps
    torch.testing.assert_close(
        sens.channel_scores["0"], torch.tensor([0.0, (1 + 3) / 2 / 4, (4 + 0) / 2 / 4]).double()
    )
    torch.testing.assert_close(
        sens.channel_scores["2"], torch.tensor([0.0, (2 + 2 + 1) / 3 / 4]).double()
    )
    assert sens.max_p == pytest.approx(0.5)
    assert sens.to_dict()["layers"]["0"] == {"p": 0.5, "insensitive": 3, "weights": 6}


def test_threshold_counts_only_weights_flipping_more_often() -> None:
    sens = compute_sensitivity(hand_counts(), tiny(), steps=4, threshold=2)
    assert sens.p == {"0": pytest.approx(2 / 6), "2": pytest.approx(0.0)}
    # the score does not depend on the threshold
    assert sens.channel_scores["0"][2].item() == pytest.approx(0.5)


def test_flip_frequencies_are_counts_over_steps() -> None:
    freqs = flip_frequencies(hand_counts(), 4)
    assert freqs["0"].dtype == torch.float64
    assert freqs["0"][1].flatten().tolist() == [0.25, 0.75]


def test_reads_a_tracker_and_its_state_dict() -> None:
    model = tiny()
    tracker = FlipTracker(model)
    tracker.counts = hand_counts()
    tracker.steps_in_window = 4
    from_tracker = compute_sensitivity(tracker, model)
    from_state = compute_sensitivity(tracker.state_dict(), model)
    assert from_tracker.steps == from_state.steps == 4
    assert from_tracker.p == from_state.p == {"0": 0.5, "2": 0.5}


@pytest.mark.parametrize("steps", [0, -1])
def test_no_step_in_window_is_an_error_that_says_how_to_record(steps: int) -> None:
    with pytest.raises(ValueError, match="flip window.*--track-last"):
        compute_sensitivity(hand_counts(), tiny(), steps=steps)


@pytest.mark.parametrize("flips", [{}, {"counts": {}, "steps_in_window": 3}, None])
def test_missing_flip_data_says_how_to_record(flips: object) -> None:
    with pytest.raises(ValueError, match="no flip data.*--track-last"):
        compute_sensitivity(flips, tiny(), steps=3)  # type: ignore[arg-type]


def test_flip_data_of_other_layers_is_rejected() -> None:
    counts = hand_counts()
    counts["extra"] = counts.pop("2")
    with pytest.raises(ValueError, match="does not match the model's binary layers.*track-last"):
        compute_sensitivity(counts, tiny(), steps=4)


def test_flip_data_of_other_shapes_is_rejected() -> None:
    counts = hand_counts()
    counts["2"] = torch.zeros(2, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"layer '2' has shape \(2, 4\)"):
        compute_sensitivity(counts, tiny(), steps=4)


def test_counts_beyond_the_window_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"outside \[0, 3\]"):
        compute_sensitivity(hand_counts(), tiny(), steps=3)


def test_plain_mapping_needs_steps_and_threshold_must_be_whole() -> None:
    with pytest.raises(ValueError, match="steps is required"):
        compute_sensitivity(hand_counts(), tiny())
    with pytest.raises(ValueError, match="threshold"):
        compute_sensitivity(hand_counts(), tiny(), steps=4, threshold=-1)


def test_flip_table_on_hand_made_counts() -> None:
    model = tiny()
    tracker = FlipTracker(model)
    tracker.counts = hand_counts()
    tracker.steps_in_window = 4
    table = flip_table(tracker, model, threshold=2)
    assert table.steps == 4 and table.threshold == 2 and table.window == (1, None)
    conv, fc = table.layers
    assert (conv["layer"], conv["weights"], conv["channels"]) == ("0", 6, 3)
    assert conv["flipped"] == pytest.approx(3 / 6) and conv["p"] == pytest.approx(2 / 6)
    assert conv["mean_wff"] == pytest.approx((1 + 3 + 4) / 6 / 4)
    assert (fc["channels"], fc["p"]) == (2, 0.0)
    assert table.to_dict()["window"] == [1, None] and table.to_dict()["layers"] == table.layers
