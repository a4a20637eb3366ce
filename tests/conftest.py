"""Session-wide test settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _latency_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Latency tables built by tests go to a temporary folder, not the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BNNPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
