"""How long will a recipe take here? Train its model for real epochs and count its epochs.

    python benchmarks/recipe_time.py experiments/nin_cifar10.toml [--data-dir ~/data/cifar10]

Trains the recipe's model with its batch size, optimizer and flip tracking for ``--epochs``
whole epochs (default 2; the first includes warm-up) on the recipe's data, or, without the
data, on synthetic images of the same shape and count (the speed does not depend on pixel
values). Prints the measured seconds per epoch and the recipe's epoch count: the baseline,
plus for every pruning round the pruned model's retraining, each compared method's and the
equal-budget unpruned model's (an upper bound: the paper policy may stop before max_rounds;
pruned models train faster than the full one, so the estimate errs long).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from bnnprune.config import RunConfig, load_config
from bnnprune.data import DatasetError, dataset_shape, load_dataset, load_from_config
from bnnprune.models import build_from_config
from bnnprune.prune.resolve import resolve_run
from bnnprune.train import resolve_device, train

SIZES = {"cifar10": (50000, 10000), "mnist": (60000, 10000), "fashion-mnist": (60000, 10000)}


def recipe_epochs(cfg: RunConfig) -> dict[str, int]:
    p, setup = cfg.prune, resolve_run(cfg)
    retrain = p.retrain_epochs * setup.rounds
    return {"baseline": cfg.train.epochs, "pruned": retrain,
            "compared": retrain * len(setup.compare),
            "budget": retrain if p.budget_baseline else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--data-dir")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--synthetic-train", type=int,
                    help="training images of the synthetic stand-in (default: the real count)")
    args = ap.parse_args()
    cfg = load_config(args.config, RunConfig)
    resolve_run(cfg)
    device = resolve_device(cfg.train.device)
    try:
        ds = load_from_config(cfg.data, 0) if args.data_dir is None else load_dataset(
            cfg.data.name, root=args.data_dir)
        source = ds.source
    except DatasetError:
        c, h, _, k = dataset_shape(cfg.data.name)
        n_train, n_test = SIZES.get(cfg.data.name, (50000, 10000))
        n_train = args.synthetic_train or n_train
        ds = load_dataset("synthetic", n_train=n_train, n_test=n_test, channels=c,
                          image_size=h, num_classes=k)
        source = f"synthetic stand-in for {cfg.data.name} ({n_train} train / {n_test} test)"
    model = build_from_config(cfg.model, ds, 0)
    tcfg = dataclasses.replace(cfg.train, epochs=args.epochs, track_last=args.epochs)
    per_epoch: list[float] = []
    t0 = time.perf_counter()
    train(model, ds, tcfg, on_epoch=lambda r: per_epoch.append(r["seconds"]))
    wall = time.perf_counter() - t0
    epoch_s = min(per_epoch)  # the first epoch carries warm-up (cuDNN autotuning, caches)
    parts = recipe_epochs(cfg)
    total = sum(parts.values())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"recipe {args.config}: model {cfg.model.name} width {cfg.model.width}, "
          f"batch {cfg.train.batch_size}, data: {source}")
    print(f"device {device} ({name}), torch {torch.__version__}")
    print("epoch seconds (train + test, flip tracking on): "
          + ", ".join(f"{s:.1f}" for s in per_epoch) + f"; wall {wall:.1f} s")
    print(f"recipe epochs (upper bound): {parts} = {total}")
    print(f"estimated recipe time: {total} x {epoch_s:.1f} s = {total * epoch_s / 3600:.2f} h")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "device": name, "epoch_seconds": per_epoch,
                       "recipe_epochs": parts, "estimated_hours": total * epoch_s / 3600}, f)


if __name__ == "__main__":
    main()
