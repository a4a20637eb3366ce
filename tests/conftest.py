"""Session-wide test settings."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (README's ``-n auto``) the workers share the cores: each gets its
    share of torch threads, and so do the processes the tests start (OMP_NUM_THREADS), since
    PyTorch processes that oversubscribe two cores slow each other several times over."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _latency_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Latency tables built by tests go to a temporary folder, not the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BNNPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
