import json

import pytest
import torch

from bnnprune.config import TrainConfig
from bnnprune.data import load_dataset
from bnnprune.models import build_model
from bnnprune.train import TrainingError, load_model, seed_everything, train


def _data(n_train=512, n_test=256):
    return load_dataset(
        "synthetic",
        n_train=n_train,
        n_test=n_test,
        channels=1,
        image_size=12,
        num_classes=4,
        seed=0,
    )


def _model(ds, width=0.25):
    seed_everything(0)
    return build_model(
        "small",
        width=width,
        in_channels=ds.in_channels,
        num_classes=ds.num_classes,
        image_size=ds.image_size,
    )


def _cfg(**kw):
    base = dict(epochs=2, batch_size=64, lr=5e-3, track_last=1, seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_training_on_synthetic_data_beats_chance_clearly(tmp_path):
    ds = _data()
    res = train(_model(ds), ds, _cfg(epochs=3), out_dir=tmp_path)
    assert res.test_acc > 0.6  # chance is 0.25
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    model, ckpt = load_model(tmp_path / "model.pt")
    assert ckpt["flips"]["steps_in_window"] == 512 // 64
    assert ckpt["dataset"]["input_shape"] == [1, 12, 12]
    # the rebuilt model reproduces the trained one exactly
    x = torch.randn(3, 1, 12, 12)
    res_model = _model(ds)
    res_model.load_state_dict(ckpt["state_dict"])
    assert torch.equal(model.eval()(x), res_model.eval()(x))


def test_two_epochs_equal_one_plus_resume_one(tmp_path):
    ds = _data(n_train=256, n_test=64)
    full = train(_model(ds), ds, _cfg(), out_dir=tmp_path / "full")
    # interrupted run: same config, stopped after epoch 1 (simulated by cutting the history)
    part_dir = tmp_path / "part"
    cfg = _cfg()
    model = _model(ds)
    calls = []

    def stop_after_first(rec):
        calls.append(rec)
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, ds, cfg, out_dir=part_dir, on_epoch=stop_after_first)
    resumed = train(_model(ds), ds, cfg, out_dir=part_dir, resume=True)
    a, _ = load_model(tmp_path / "full" / "model.pt")
    b, ckb = load_model(part_dir / "model.pt")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    for name in full.tracker.counts:
        assert torch.equal(full.tracker.counts[name], resumed.tracker.counts[name])
    assert [h["test_acc"] for h in full.history] == [h["test_acc"] for h in resumed.history]


def test_resume_refuses_other_config(tmp_path):
    ds = _data(n_train=128, n_test=32)
    train(_model(ds), ds, _cfg(epochs=1, track_last=0), out_dir=tmp_path)
    with pytest.raises(ValueError, match="another model or training config"):
        train(_model(ds), ds, _cfg(epochs=1, track_last=0, lr=1e-2), out_dir=tmp_path, resume=True)


def test_non_finite_loss_stops_with_step(tmp_path):
    ds = _data(n_train=128, n_test=32)
    model = _model(ds)
    with torch.no_grad():
        model.fc1.weight.fill_(float("nan"))  # sign() would absorb an earlier NaN
    with pytest.raises(TrainingError, match="non-finite loss .* step 1"):
        train(model, ds, _cfg(epochs=1), out_dir=tmp_path)


def test_a_pruned_copy_saved_with_its_source_loads_back(tmp_path):
    from bnnprune.checkpoint import save_pruned
    from bnnprune.prune import parse_method, prune_once
    from bnnprune.train import fine_tune_config

    model = build_model("small", width=0.25)
    source = {"dataset": {"name": "synthetic", "input_shape": [1, 28, 28], "num_classes": 10},
              "train_config": {"epochs": 9, "lr": 0.5, "track_last": 3, "batch_size": 32}}
    _, pruned = prune_once(model, parse_method("uniform+magnitude"), (1, 28, 28), target=0.5)
    save_pruned(tmp_path / "model.pt", pruned, source, {"why": "test"})
    back, ckpt = load_model(tmp_path / "model.pt")
    assert (ckpt["dataset"], ckpt["train_config"]) == (source["dataset"], source["train_config"])
    assert ckpt["flips"] is None and ckpt["meta"] == {"why": "test"}
    for key, value in pruned.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    cfg = fine_tune_config(source["train_config"], epochs=2, lr=1e-3, track_last=5)
    assert (cfg.epochs, cfg.lr, cfg.track_last, cfg.batch_size) == (2, 1e-3, 2, 32)
    assert fine_tune_config(None, 4, 0.1, 1) == TrainConfig(epochs=4, lr=0.1, track_last=1)
