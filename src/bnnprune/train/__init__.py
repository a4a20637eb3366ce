"""BNN training: Adam + cosine/step schedule, flip tracking, atomic resumable checkpoints."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bnnprune.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from bnnprune.config import TrainConfig
from bnnprune.data import Dataset, augment, batches, normalize
from bnnprune.flips import FlipTracker
from bnnprune.killpoint import armed, kill_point
from bnnprune.nn import attach_clipping, binary_layers
from bnnprune.seeding import seed_everything
from bnnprune.train import dist

__all__ = [
    "CheckpointError",
    "TrainResult",
    "TrainingError",
    "dataset_info",
    "evaluate",
    "fine_tune_config",
    "load_checkpoint",
    "load_model",
    "resolve_device",
    "seed_everything",
    "train",
]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible resume state)."""


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    tracker: FlipTracker | None
    seconds: float
    checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def test_acc(self) -> float:
        return float(self.history[-1]["test_acc"])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    return dev


def fine_tune_config(train_config: dict[str, Any] | None, epochs: int, lr: float,
                     track_last: int) -> TrainConfig:
    """The training config a model was trained with (a checkpoint's ``train_config``; None:
    the defaults) for ``epochs`` of fine-tuning at ``lr``, recording flips over the last
    ``track_last`` of them at most."""
    return TrainConfig(**{**(train_config or {}), "epochs": epochs, "lr": lr,
                          "track_last": min(track_last, epochs)})


def dataset_info(ds: Dataset) -> dict[str, Any]:
    """What a checkpoint must know about its data to evaluate and compile the model."""
    return {
        "name": ds.name,
        "input_shape": list(ds.input_shape),
        "num_classes": ds.num_classes,
        "mean": list(ds.mean),
        "std": list(ds.std),
    }


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    latent = {id(m.weight) for m in binary_layers(model).values()}
    binary = [p for p in model.parameters() if id(p) in latent]
    other = [p for p in model.parameters() if id(p) not in latent]
    return [
        {"params": binary, "weight_decay": cfg.binary_weight_decay},
        {"params": other, "weight_decay": cfg.weight_decay},
    ]


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for 0-based optimizer step ``step`` (set per step, so resume is exact).

    With ``plateau_epochs = K > 0`` the last K epochs hold ``lr * plateau_lr`` and the
    schedule runs over the epochs before them (cosine then decays to that value, not to 0).
    """
    main_steps = (cfg.epochs - cfg.plateau_epochs) * steps_per_epoch
    floor = cfg.lr * cfg.plateau_lr if cfg.plateau_epochs else 0.0
    if step >= main_steps:
        return floor
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * step / main_steps))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: Any,
    std: Any,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on uint8 images ``x``."""
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty split")
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for xb, yb in batches(x, y, batch_size, shuffle=False, generator=None):
            xb = normalize(xb.to(device), mean, std)
            yb = yb.to(device)
            out = model(xb)
            loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return loss_sum / len(x), correct / len(x)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Per-epoch RNG for shuffling and augmentation, derived from the seed (no state to resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(h) + "\n" for h in history).encode())


def _shard(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's contiguous share of a batch (the whole batch with one process)."""
    if not dist.is_distributed():
        return x, y
    lo, hi = dist.shard_bounds(len(y), dist.rank(), dist.world_size())
    return x[lo:hi], y[lo:hi]


def _evaluate_sharded(model: nn.Module, ds: Dataset, device: torch.device,
                      split: str = "test") -> tuple[float, float]:
    """:func:`evaluate` on the test (or ``"val"``) split, each process on its share, summed
    over processes."""
    xs, ys = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
    if not dist.is_distributed():
        return evaluate(model, xs, ys, ds.mean, ds.std, device=device)
    x, y = _shard(xs, ys)
    loss, acc = evaluate(model, x, y, ds.mean, ds.std, device=device) if len(y) else (0.0, 0.0)
    loss_sum, correct, n = dist.all_reduce_sum([loss * len(y), acc * len(y), len(y)], device)
    return loss_sum / n, round(correct) / n


def _load_resume_state(
    ckpt_path: Path | None, payload_base: dict[str, Any], arch: Any
) -> dict[str, Any]:
    if ckpt_path is None or not ckpt_path.is_file():
        raise CheckpointError(f"nothing to resume: {ckpt_path} does not exist")
    ck = load_checkpoint(ckpt_path)
    if ck.get("train_config") != payload_base["train_config"] or ck.get("arch") != arch:
        raise CheckpointError(
            f"{ckpt_path} was written by another model or training config; "
            "resume with the same settings or use a new output folder"
        )
    for key in ("optimizer", "history", "epoch"):
        if key not in ck:
            raise CheckpointError(f"{ckpt_path} lacks {key!r}: not a training checkpoint")
    return ck


def train(
    model: nn.Module,
    ds: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    meta: dict[str, Any] | None = None,
    desc: str = "train",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    augment_data: bool = True,
    tensorboard: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` on ``ds``; track flips over the last ``cfg.track_last`` epochs.

    With ``out_dir``: a checkpoint is written atomically after every epoch
    (``checkpoint.pt``), the metrics log to ``metrics.jsonl``, and at the end ``flips.npz``
    and then ``model.pt`` (weights, architecture, flip data; written last, so its presence
    means every file of the run is complete). ``resume=True`` continues from
    ``checkpoint.pt`` and ends with the same weights as an uninterrupted run (CPU, same seed).
    ``meta`` is stored in every checkpoint (e.g. the experiment config). ``tensorboard``: a
    folder for TensorBoard event files (see :mod:`bnnprune.train.tensorboard`; rank 0 only).

    Inside a ``torch.distributed`` process group of N > 1 processes (see
    :mod:`bnnprune.train.dist`), the model is wrapped in DistributedDataParallel and every
    process trains on its share of each globally shuffled batch (the global batch size and
    the number of steps stay those of ``cfg``); BatchNorm statistics are averaged at the
    end of every epoch, so flip counts and weights are identical on every rank. Only rank 0
    writes files; ``on_epoch`` is called on every rank with the same (reduced) metrics.
    """
    cfg.validate()
    device = dist.local_device(resolve_device(cfg.device))
    n = len(ds.train_x)
    if n == 0:
        raise ValueError("the training split is empty")
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs  # drop the last partial batch: BatchNorm needs > 1 sample
    world = dist.world_size()
    if bs // world < 2:
        raise TrainingError(
            f"batch size {bs} is too small for {world} processes: "
            "each needs at least 2 samples per batch"
        )
    main = dist.is_main()
    model.to(device)
    opt = torch.optim.Adam(_param_groups(model, cfg), lr=cfg.lr)
    tracker = None
    if cfg.track_last > 0 and binary_layers(model):
        start = (cfg.epochs - cfg.track_last) * steps_per_epoch + 1
        tracker = FlipTracker(model, window=(start, cfg.epochs * steps_per_epoch))
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / "checkpoint.pt" if out else None
    history: list[dict[str, Any]] = []
    first_epoch = 0
    arch = getattr(model, "arch", None)
    payload_base = {
        "arch": arch,
        "dataset": dataset_info(ds),
        "train_config": dataclasses.asdict(cfg),
        "meta": meta or {},
    }

    if resume:
        ck = dist.main_decides(lambda: _load_resume_state(ckpt_path, payload_base, arch))
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        if tracker is not None and ck.get("flips") is not None:
            tracker.load_state_dict(ck["flips"])
        history = list(ck["history"])
        first_epoch = int(ck["epoch"])

    net = dist.wrap_ddp(model, device)
    tb = None
    if tensorboard is not None and main:
        from bnnprune.train.tensorboard import TensorBoardLog

        tb = TensorBoardLog(tensorboard)
    # after every opt.step(): clip the latent weights, then count flips (hooks, in this order)
    clipping = attach_clipping(model, opt) if binary_layers(model) else None
    if tracker is not None:
        tracker.attach(opt)

    kill_steps = armed()  # crash tests only: no per-step work otherwise
    t0 = time.perf_counter()
    step = first_epoch * steps_per_epoch
    for epoch in range(first_epoch, cfg.epochs):
        model.train()
        g = _epoch_generator(cfg.seed, epoch)
        te = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}",
            disable=not (progress and main),
            leave=False,
            dynamic_ncols=True,
        )
        for i, (xb, yb) in enumerate(
            batches(ds.train_x, ds.train_y, bs, shuffle=True, generator=g)
        ):
            if i >= steps_per_epoch:
                break
            if kill_steps:
                kill_point(f"{desc}:epoch{epoch + 1}:step{i}")
            if augment_data:  # the whole global batch, so every rank draws the same numbers
                xb = augment(xb, g, ds.crop_pad, ds.hflip)
            n_global = len(yb)
            xb, yb = _shard(xb, yb)
            xb = normalize(xb.to(device), ds.mean, ds.std)
            yb = yb.to(device)
            lr = lr_at(cfg, step, steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            if world > 1:
                batch_loss, batch_correct, _ = dist.all_reduce_sum(
                    [loss.item() * len(yb), int((logits.argmax(1) == yb).sum()), len(yb)],
                    device,
                )
                # DDP averages gradients over ranks: weight each rank by its share
                backward_loss = loss * (len(yb) * world / n_global)
            else:  # one host sync per step for the loss check and the running metrics
                batch_loss, batch_correct = torch.stack(
                    [loss.detach() * len(yb), (logits.argmax(1) == yb).sum().to(loss.dtype)]
                ).tolist()
                backward_loss = loss
            finite = math.isfinite(batch_loss)
            shown = batch_loss / n_global
            if not finite:
                raise TrainingError(
                    f"non-finite loss ({shown}) at step {step + 1} (epoch {epoch + 1}); "
                    + (
                        f"last good checkpoint: {ckpt_path}"
                        if ckpt_path and ckpt_path.exists()
                        else "no checkpoint written yet"
                    )
                )
            opt.zero_grad(set_to_none=True)
            backward_loss.backward()
            opt.step()
            step += 1
            if tb is not None:
                tb.step(step, batch_loss / n_global, batch_correct / n_global, lr, tracker)
            loss_sum += batch_loss
            correct += round(batch_correct)
            seen += n_global
            if i % 10 == 0 or i == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            bar.update(1)
        bar.close()
        if tracker is not None:
            tracker.end_epoch()
        dist.average_float_buffers(model)
        test_loss, test_acc = _evaluate_sharded(model, ds, device)
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "seconds": time.perf_counter() - te,
        }
        if ds.val_x is not None:  # the split that plateau checks and choices read
            rec["val_loss"], rec["val_acc"] = _evaluate_sharded(model, ds, device, "val")
        if tracker is not None:
            rec["flip_ratio"] = {k: float(v[-1]) for k, v in tracker.epoch_ratios().items()}
        history.append(rec)
        if tb is not None:
            tb.epoch(epoch + 1, rec, tracker)
        if out is not None and main:
            save_checkpoint(
                ckpt_path,
                {
                    **payload_base,
                    "state_dict": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "flips": tracker.state_dict() if tracker is not None else None,
                },
            )
            _write_log(out / "metrics.jsonl", history)
        if on_epoch is not None:
            on_epoch(rec)

    seconds = time.perf_counter() - t0
    if clipping is not None:
        clipping.detach()
    if tracker is not None:
        tracker.detach()
    if tb is not None:
        tb.close()
    final = None
    if out is not None:
        final = out / "model.pt"
        if main:
            kill_point(f"{desc}:trained")
            if tracker is not None:  # before model.pt, which marks the phase finished
                buf = io.BytesIO()
                tracker.export_npz(buf)
                atomic_write_bytes(out / "flips.npz", buf.getvalue())
            save_checkpoint(
                final,
                {
                    **payload_base,
                    "state_dict": model.state_dict(),
                    "epoch": cfg.epochs,
                    "history": history,
                    "flips": tracker.state_dict() if tracker is not None else None,
                },
            )
    del net
    dist.barrier()  # every rank returns once rank 0's files are complete
    return TrainResult(history=history, tracker=tracker, seconds=seconds, checkpoint=final)
