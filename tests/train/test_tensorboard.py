"""`bnnprune train --tensorboard DIR`: the event file holds loss, accuracy, lr and per-layer flip
ratio per step and flip-count histograms per epoch, equal to what the run recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("tensorboard", reason="pip install 'bnnprune[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from bnnprune.cli import main  # noqa: E402
from bnnprune.config import TrainConfig  # noqa: E402
from bnnprune.train import lr_at  # noqa: E402

TINY = ["--dataset", "synthetic", "--model", "small", "--width", "0.25", "--train-subset",
        "256", "--test-subset", "64", "--batch-size", "64", "--schedule", "cosine"]  # fmt: skip
STEPS = 4  # 256 / 64 per epoch


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb")
    argv = ["train", *TINY, "--epochs", "2", "--track-last", "1", "-o", str(tmp / "run"),
            "--tensorboard", str(tmp / "tb")]  # fmt: skip
    assert main(argv) == 0
    acc = EventAccumulator(str(tmp / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    ckpt = torch.load(tmp / "run" / "model.pt", weights_only=False)
    history = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return acc, ckpt, history


def _scalars(acc: EventAccumulator, tag: str) -> tuple[list[int], np.ndarray]:
    ev = acc.Scalars(tag)
    return [e.step for e in ev], np.array([e.value for e in ev], dtype=np.float32)


def test_per_step_scalars(logged) -> None:
    acc, ckpt, history = logged
    layers = list(ckpt["flips"]["counts"])
    tags = set(acc.Tags()["scalars"])
    want = {"train/loss", "train/accuracy", "train/lr", "test/loss", "test/accuracy"}
    assert tags == want | {f"flip_ratio/{n}" for n in layers}
    ratios = ckpt["flips"]["ratios"].numpy().astype(np.float32)  # (steps, layers)
    for i, n in enumerate(layers):
        steps, values = _scalars(acc, f"flip_ratio/{n}")
        assert steps == list(range(1, 2 * STEPS + 1))
        np.testing.assert_array_equal(values, ratios[:, i])
    assert ratios.sum() > 0
    cfg = TrainConfig(**ckpt["train_config"])
    steps, lrs = _scalars(acc, "train/lr")
    np.testing.assert_array_equal(lrs, np.float32([lr_at(cfg, s - 1, STEPS) for s in steps]))
    _, loss = _scalars(acc, "train/loss")
    _, accuracy = _scalars(acc, "train/accuracy")
    for e, rec in enumerate(history):  # equal batches: the epoch means are the step means
        np.testing.assert_allclose(loss[e * STEPS:(e + 1) * STEPS].mean(), rec["train_loss"],
                                   rtol=1e-5)  # fmt: skip
        np.testing.assert_allclose(accuracy[e * STEPS:(e + 1) * STEPS].mean(), rec["train_acc"],
                                   rtol=1e-5)  # fmt: skip


def test_per_epoch_scalars_and_flip_histograms(logged) -> None:
    acc, ckpt, history = logged
    steps, test_acc = _scalars(acc, "test/accuracy")
    assert steps == [1, 2]
    np.testing.assert_array_equal(test_acc, np.float32([h["test_acc"] for h in history]))
    counts = ckpt["flips"]["counts"]
    assert set(acc.Tags()["histograms"]) == {f"flip_counts/{n}" for n in counts}
    for n, c in counts.items():
        (h,) = acc.Histograms(f"flip_counts/{n}")  # only epoch 2 lies in the flip window
        assert h.step == 2
        assert h.histogram_value.num == c.numel()
        assert h.histogram_value.sum == pytest.approx(float(c.sum()))
        assert h.histogram_value.max == pytest.approx(float(c.max()))


def test_missing_tensorboard_is_one_line(monkeypatch, tmp_path, capsys) -> None:
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    code = main(["train", *TINY, "--epochs", "1", "-o", str(tmp_path / "r"),
                 "--tensorboard", str(tmp_path / "tb")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "pip install 'bnnprune[tensorboard]'" in err


def test_run_logs_one_tensorboard_run_per_phase(tmp_path) -> None:
    argv = ["run", *TINY, "--epochs", "1", "--track-last", "1", "--retrain-epochs", "1",
            "--target-bops", "0.4", "--compare", "target+random", "--no-budget-baseline",
            "-o", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")]  # fmt: skip
    assert main(argv) == 0
    phases = sorted(p.name for p in (tmp_path / "tb").iterdir())
    assert phases == ["baseline", "compare-target+random", "pruned"]
    for name in phases:
        acc = EventAccumulator(str(tmp_path / "tb" / name), size_guidance={"scalars": 0})
        acc.Reload()
        assert len(acc.Scalars("train/loss")) == STEPS  # one epoch of steps per phase
        history = json.loads((tmp_path / "run" / name / "metrics.jsonl").read_text()
                             .splitlines()[-1])
        assert acc.Scalars("test/accuracy")[-1].value == pytest.approx(history["test_acc"])
