"""FlipTrackingCallback: a tiny LightningModule trained 2 epochs on CPU; flips counted over the
last epoch, stored in checkpoints and a file, restored on resume, and used to prune."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch", reason="pip install 'bnnprune[lightning]'")

from bnnprune.integrations.lightning import CHECKPOINT_KEY, FlipTrackingCallback  # noqa: E402
from bnnprune.nn import BinaryConv2d, BinaryLinear  # noqa: E402
from bnnprune.prune import apply_plan, compute_sensitivity, plan_target  # noqa: E402

SHAPE = (1, 8, 8)
STEPS_PER_EPOCH = 6  # 96 samples / batch 16


class Lit(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8),
            BinaryConv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.MaxPool2d(2),
            BinaryConv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.MaxPool2d(2),
            nn.Flatten(), BinaryLinear(64, 24), nn.BatchNorm1d(24), nn.Linear(24, 4),
        )  # fmt: skip

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class Snapshots(pl.Callback):
    """Independent record: binary weights before training and after every batch."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def _grab(self, m: Lit) -> None:
        self.seen.append({n: m.net.get_submodule(n).weight.detach().clone()
                          for n in ("2", "5", "9")})  # fmt: skip

    def on_train_start(self, trainer, pl_module) -> None:
        self._grab(pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self._grab(pl_module)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (96,), generator=g)
    x = torch.randn(96, *SHAPE, generator=g) + y.view(-1, 1, 1, 1).float()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def _fit(tmp_path, cb, epochs=2, ckpt_path=None, extra=()):
    pl.seed_everything(0, verbose=False)
    module = Lit()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[cb, *extra, pl.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_top_k=-1,
                                                            every_n_epochs=1)],
    )  # fmt: skip
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lit")
    cb = FlipTrackingCallback(last_epochs=1, path=tmp / "flips.pt", submodule="net")
    snaps = Snapshots()
    module = _fit(tmp, cb, extra=[snaps])
    return tmp, cb, snaps, module


def test_counts_flips_of_the_last_epoch_exactly(run) -> None:
    _, cb, snaps, _ = run
    t = cb.tracker
    assert t.step_count == 2 * STEPS_PER_EPOCH and t.steps_in_window == STEPS_PER_EPOCH
    assert t.epoch_ends == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert len(snaps.seen) == 2 * STEPS_PER_EPOCH + 1
    for n in ("2", "5", "9"):
        neg = torch.stack([s[n] < 0 for s in snaps.seen])
        want = (neg[1:] != neg[:-1])[STEPS_PER_EPOCH:].sum(0).int()
        assert torch.equal(t.counts[n], want), n
    assert sum(int(c.sum()) for c in t.counts.values()) > 0
    for s in snaps.seen[1:]:  # clipping by the callback's hook
        assert all(float(w.abs().max()) <= 1.0 for w in s.values())


def test_flip_data_goes_to_the_file_and_every_checkpoint(run) -> None:
    tmp, cb, _, _ = run
    saved = torch.load(tmp / "flips.pt", weights_only=False)
    for n, c in cb.tracker.counts.items():
        assert torch.equal(saved["counts"][n], c)
    first = torch.load(tmp / "ckpt" / "epoch=0-step=6.ckpt", weights_only=False)
    last = torch.load(tmp / "ckpt" / "epoch=1-step=12.ckpt", weights_only=False)
    assert first[CHECKPOINT_KEY]["step_count"] == STEPS_PER_EPOCH
    assert first[CHECKPOINT_KEY]["steps_in_window"] == 0
    assert all(int(c.sum()) == 0 for c in first[CHECKPOINT_KEY]["counts"].values())
    for n, c in cb.tracker.counts.items():
        assert torch.equal(last[CHECKPOINT_KEY]["counts"][n], c)
    cb.save(tmp / "flips.npz")
    npz = np.load(tmp / "flips.npz")
    np.testing.assert_array_equal(npz["counts/5"], cb.tracker.counts["5"].numpy())


def test_resume_from_a_checkpoint_continues_the_same_counts(run, tmp_path) -> None:
    tmp, cb, _, _ = run
    again = FlipTrackingCallback(last_epochs=1, submodule="net")
    _fit(tmp_path, again, ckpt_path=tmp / "ckpt" / "epoch=0-step=6.ckpt")
    assert again.tracker.step_count == 2 * STEPS_PER_EPOCH
    for n, c in cb.tracker.counts.items():
        assert torch.equal(again.tracker.counts[n], c), n


def test_prune_from_the_callbacks_flip_data(run) -> None:
    tmp, _, _, module = run
    net = module.net.eval()
    sens = compute_sensitivity(torch.load(tmp / "flips.pt", weights_only=False), net)
    plan = plan_target(net, SHAPE, sens, 0.4)
    result = apply_plan(net, plan, "wff", sens)
    widths = {n: result.model.get_submodule(n).weight.shape[0] for n in plan.keep}
    assert widths == plan.keep and any(plan.keep[n] < plan.channels[n] for n in plan.keep)
    assert result.model(torch.randn(2, *SHAPE)).shape == (2, 4)


def test_callback_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="last_epochs must be >= 1"):
        FlipTrackingCallback(last_epochs=0)


def test_core_package_never_imports_integrations() -> None:
    code = (
        "import sys, bnnprune.cli, bnnprune.prune, bnnprune.train, bnnprune.flips, "
        "bnnprune.engine, bnnprune.pipeline, bnnprune.sweep; "
        "bad = [m for m in sys.modules if m.startswith(('bnnprune.integrations', 'lightning', "
        "'pytorch_lightning', 'tensorboard'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
