import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.flips import FlipTracker
from bnnprune.nn import BinaryConv2d, BinaryLinear


def _model():
    return nn.Sequential(BinaryConv2d(1, 2, 1), nn.Flatten(), BinaryLinear(2, 1))


def _run(tracker, model, seq):
    """Set latent weights to each row of seq (one optimizer 'step' per row)."""
    for values in seq:
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor(values[:2], dtype=torch.float32).view(2, 1, 1, 1))
            model[2].weight.copy_(torch.tensor(values[2:], dtype=torch.float32).view(1, 2))
        tracker.step()


def test_counts_sign_changes_of_hand_made_sequence():
    model = _model()
    with torch.no_grad():
        model[0].weight.fill_(0.5)  # initial signs: + +
        model[2].weight.fill_(0.5)
    t = FlipTracker(model)
    seq = [
        [0.4, -0.1, 0.0, 0.3],  # step1: w0 +, w1 -, w2 + (0 counts as +), w3 +
        [-0.2, -0.1, -0.1, 0.3],  # step2: w0 -, w1 -, w2 -
        [-0.3, 0.2, -0.1, 0.3],  # step3: w1 +
        [0.1, 0.2, 0.2, 0.3],  # step4: w0 +, w2 +
    ]
    _run(t, model, seq)
    assert t.counts["0"].view(-1).tolist() == [2, 2]
    assert t.counts["2"].view(-1).tolist() == [2, 0]
    assert t.steps_in_window == 4
    hist = t.ratio_history()
    assert hist["0"].tolist() == [0.5, 0.5, 0.5, 0.5]
    assert hist["2"].tolist() == [0.0, 0.5, 0.0, 0.5]
    f = t.frequencies()
    assert f["0"].view(-1).tolist() == [0.5, 0.5]


def test_signs_pp_mm_p_gives_two_flips():
    model = _model()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(1.0)
    t = FlipTracker(model)
    w0 = [1.0, -1.0, -1.0, 1.0]  # after init +: sequence + + - - +
    _run(t, model, [[v, 1, 1, 1] for v in [1.0, *w0[1:]]])
    assert t.counts["0"].view(-1).tolist() == [2, 0]


def test_window_edges_are_inclusive():
    model = _model()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(1.0)
    t = FlipTracker(model, window=(2, 3))
    # w0 flips at every step 1..5
    _run(t, model, [[(-1.0) ** s, 1, 1, 1] for s in range(1, 6)])
    assert t.counts["0"].view(-1).tolist() == [2, 0]
    assert t.steps_in_window == 2
    assert t.ratio_history()["0"].tolist() == [0.5] * 5  # ratios are recorded for every step


def test_epoch_means_and_state_round_trip(tmp_path):
    model = _model()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(1.0)
    t = FlipTracker(model)
    _run(t, model, [[1, 1, 1, 1], [-1, 1, 1, 1]])
    t.end_epoch()
    _run(t, model, [[-1, -1, -1, -1], [-1, -1, -1, -1], [1, 1, -1, -1]])
    t.end_epoch()
    ep = t.epoch_ratios()
    assert np.allclose(ep["0"], [(0 + 0.5) / 2, (0.5 + 0 + 1.0) / 3])
    state = t.state_dict()
    t2 = FlipTracker.from_state(_model(), state)
    assert t2.step_count == 5 and t2.epoch_ends == [2, 5]
    assert torch.equal(t2.counts["0"], t.counts["0"])
    assert np.allclose(t2.epoch_ratios()["0"], ep["0"])
    t.export_npz(tmp_path / "f.npz")
    z = np.load(tmp_path / "f.npz")
    assert z["counts/0"].tolist() == t.counts["0"].tolist()
    assert z["ratios/2"].shape == (5,)


def test_errors():
    with pytest.raises(ValueError, match="no binary layers"):
        FlipTracker(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="window"):
        FlipTracker(_model(), window=(3, 2))
    t = FlipTracker(_model())
    with pytest.raises(ValueError, match="no optimizer step"):
        t.frequencies()
    other = nn.Sequential(BinaryConv2d(1, 3, 1), nn.Flatten(), BinaryLinear(3, 1))
    with pytest.raises(ValueError, match="shape"):
        FlipTracker.from_state(other, t.state_dict())


def test_counts_of_the_last_epochs_of_the_interval() -> None:
    """Per-epoch snapshots give the counts of any suffix of the interval exactly."""
    import torch
    from torch import nn

    from bnnprune.flips import FlipTracker
    from bnnprune.nn import BinaryLinear

    model = nn.Sequential(BinaryLinear(2, 1))
    w = model[0].weight
    # epoch 1 (outside the window): 1 step; epochs 2-4 inside: sign sequences per step
    seq = [[1, 1], [-1, 1], [1, 1], [1, -1], [-1, -1], [-1, 1], [1, 1]]
    epochs = [[0], [1, 2], [3, 4], [5, 6]]
    with torch.no_grad():
        w.copy_(torch.tensor([[1.0, 1.0]]))
    tracker = FlipTracker(model, window=(2, None))
    for steps in epochs:
        for i in steps:
            with torch.no_grad():
                w.copy_(torch.tensor([seq[i]], dtype=torch.float32))
            tracker.step()
        tracker.end_epoch()
    name = next(iter(tracker.counts))
    # flips: w0 at steps 2, 3, 5, 7; w1 at steps 4, 6 (step 1 is outside the window)
    assert tracker.counts[name].tolist() == [[4, 2]]
    last1, s1 = tracker.last_epochs_counts(1)  # epoch 4: steps 6, 7
    last2, s2 = tracker.last_epochs_counts(2)  # epochs 3-4: steps 4-7
    last3, s3 = tracker.last_epochs_counts(3)  # the whole interval
    assert (last1[name].tolist(), s1) == ([[1, 1]], 2)
    assert (last2[name].tolist(), s2) == ([[2, 2]], 4)
    assert (last3[name].tolist(), s3) == ([[4, 2]], 6)
    restored = FlipTracker(model, window=(2, None))
    restored.load_state_dict(tracker.state_dict())
    assert restored.last_epochs_counts(2)[0][name].tolist() == [[2, 2]]
