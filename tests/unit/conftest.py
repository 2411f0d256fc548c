"""Fixtures several unit-test modules share."""

from __future__ import annotations

import pytest

from services.common.identity import identify
from services.worker.config import WorkerConfig
from services.worker.servicer import WorkerService


@pytest.fixture(scope="module")
def service() -> WorkerService:
    """The tiny model's engine behind its WorkerService, in this process (8 MiB of KV)."""
    return WorkerService.load(
        WorkerConfig(model="tiny", kv_cache_bytes=8 * 2**20), identify("worker", "inproc")
    )
