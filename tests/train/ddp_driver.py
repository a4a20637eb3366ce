"""Run `python -m bnnprune ARGS...` under torchrun, recording what each rank did.

Used by test_distributed.py: ``torchrun ... ddp_driver.py DUMP_DIR train ...``. The CLI
path is the real one; the driver only wraps ``train`` (to save each rank's final weights,
flip counts and the number of training samples it saw) and ``atomic_write_bytes`` (to log
which rank wrote which file) before handing over to ``bnnprune.__main__``.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch

import bnnprune.checkpoint as checkpoint
import bnnprune.cli
import bnnprune.train

dump = Path(sys.argv[1])
rank = int(os.environ["RANK"])
real_train, real_write = bnnprune.cli.train, checkpoint.atomic_write_bytes


def logged_write(path, data):
    with open(dump / f"writes-rank{rank}.txt", "a") as f:
        f.write(f"{path}\n")
    real_write(path, data)


def recording_train(model, *args, **kwargs):
    seen = [0]

    def count(_module, inputs):
        if _module.training:
            seen[0] += len(inputs[0])

    hook = model.register_forward_pre_hook(count)
    res = real_train(model, *args, **kwargs)
    hook.remove()
    torch.save(
        {
            "state_dict": model.state_dict(),
            "counts": res.tracker.counts,
            "steps_in_window": res.tracker.steps_in_window,
            "history": res.history,
            "samples_seen": seen[0],
            "world_size": torch.distributed.get_world_size(),
        },
        dump / f"rank{rank}.pt",
    )
    return res


checkpoint.atomic_write_bytes = logged_write
bnnprune.train.atomic_write_bytes = logged_write
bnnprune.cli.train = recording_train
sys.argv = ["bnnprune", *sys.argv[2:]]
runpy.run_module("bnnprune", run_name="__main__")
