"""`torchrun --nproc_per_node=2 -m bnnprune train` on CPU (gloo): sharded batches, ranks in
lockstep (identical weights and flip counts), and only rank 0 writes or prints."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnnprune.train import dist

DRIVER = Path(__file__).with_name("ddp_driver.py")
TRAIN, EPOCHS, BATCH, TRACK = 256, 2, 32, 1


@pytest.mark.parametrize(("n", "world"), [(10, 3), (7, 2), (4, 4), (1, 2)])
def test_shards_partition_the_batch(n, world):
    bounds = [dist.shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_single_process_helpers_are_no_ops():
    assert not dist.is_distributed() and dist.is_main() and dist.world_size() == 1
    assert dist.all_reduce_sum([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0]
    assert dist.main_decides(lambda: 3) == 3 and dist.main_first(lambda: 4) == 4


@pytest.mark.slow  # two real torchrun processes
def test_torchrun_two_processes_gloo(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(DRIVER),
        str(dump),
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "small",
        "--width",
        "0.25",
        "--train-subset",
        str(TRAIN),
        "--test-subset",
        "64",
        "--batch-size",
        str(BATCH),
        "--epochs",
        str(EPOCHS),
        "--track-last",
        str(TRACK),
        "--device",
        "cpu",
        "-o",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    ranks = [torch.load(dump / f"rank{i}.pt", weights_only=True) for i in range(2)]
    assert [rk["world_size"] for rk in ranks] == [2, 2]

    # each rank trained on its half of every global batch
    steps = EPOCHS * (TRAIN // BATCH)
    assert [rk["samples_seen"] for rk in ranks] == [steps * BATCH // 2] * 2

    # the ranks stayed in lockstep: same weights, BN statistics and flip counts
    a, b = ranks
    assert a["counts"].keys() == b["counts"].keys()
    for name in a["counts"]:
        assert torch.equal(a["counts"][name], b["counts"][name]), name
    assert sum(int(c.sum()) for c in a["counts"].values()) > 0
    assert a["steps_in_window"] == b["steps_in_window"] == TRACK * (TRAIN // BATCH)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key

    def no_time(h):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in h]

    assert no_time(a["history"]) == no_time(b["history"])

    # only rank 0 wrote files, and only rank 0 printed
    assert not (dump / "writes-rank1.txt").exists()
    written = {Path(p).name for p in (dump / "writes-rank0.txt").read_text().split()}
    assert written == {"checkpoint.pt", "metrics.jsonl", "model.pt", "flips.npz"}
    assert sorted(p.name for p in out.iterdir()) == sorted(written)
    assert r.stdout.count("epoch   1 ") == 1 and r.stdout.count("wrote ") == 1
    saved = torch.load(out / "model.pt", weights_only=True)
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, a["state_dict"][key]), key
    for name, counts in saved["flips"]["counts"].items():
        assert torch.equal(counts, a["counts"][name]), name
