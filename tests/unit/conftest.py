"""Fixtures several unit-test modules share."""

from __future__ import annotations

import pytest

from services.common.identity import identify
from services.config import HopscopeConfig
from services.worker.servicer import WorkerService


@pytest.fixture(scope="module")
def service() -> WorkerService:
    """The tiny model's engine behind its WorkerService, in this process (8 MiB of KV)."""
    return WorkerService.load(
        HopscopeConfig.of(model="tiny", kv_cache_mb=8), identify("worker", "inproc")
    )
