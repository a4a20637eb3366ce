"""How much CPU time does `bnnprune run`'s engine section add? Measured on the default config's
model, untrained (the cost depends on the channel counts, not on the weights).

    python benchmarks/run_speed_cost.py                          # numba's cache as it is
    NUMBA_CACHE_DIR=$(mktemp -d) python benchmarks/run_speed_cost.py   # a fresh install

Builds the default model for the default dataset's shape and as many pruned copies as the
default run times (the chosen method and every compared one, cut uniformly to the default
BOPs reduction with the default channel rounding), then runs :func:`bnnprune.speed.
measure_models` twice on 512 random images: the first call includes numba's compilation of
the engine's kernels when its cache is cold, the second is what every later run pays. Prints
process CPU time (all threads; robust to other jobs on a shared machine, unlike wall time)
and wall time of each call.
"""

from __future__ import annotations

import time

import numpy as np

from bnnprune.config import RunConfig
from bnnprune.data import dataset_shape
from bnnprune.machine import cpu_name, isa_flags, isa_label
from bnnprune.models import build_model
from bnnprune.prune import apply_plan, make_plan
from bnnprune.speed import CHECK_IMAGES, measure_models


def main() -> None:
    cfg = RunConfig()
    c, h, w, classes = dataset_shape(cfg.data.name)
    shape = (c, h, w)
    base = build_model(cfg.model.name, width=cfg.model.width, in_channels=c,
                       num_classes=classes, image_size=h)
    plan = make_plan(base, shape, "uniform", target=cfg.prune.target, **cfg.prune.plan_options)
    pruned = apply_plan(base, plan, "magnitude").model
    models = [("baseline", base)] + [(f"pruned {i}", pruned)
                                     for i in range(1 + len(cfg.prune.compare_methods))]
    x = np.random.default_rng(0).standard_normal((CHECK_IMAGES, *shape)).astype(np.float32)
    print(f"{cpu_name()} ({isa_label(isa_flags())}); default model {cfg.model.name} width "
          f"{cfg.model.width} on {shape}, {len(models)} models")
    for call in ("first call", "second call"):
        wall = time.perf_counter()
        _, speed = measure_models(models, shape, x)
        print(f"{call}: {speed['cpu_seconds']:.1f} s CPU, {time.perf_counter() - wall:.1f} s wall")


if __name__ == "__main__":
    main()
