"""The KV-block gauges a Prometheus scrape shows: real counts from the start, never 0 free."""

from __future__ import annotations

import asyncio
import re

from deploy.inproc import start_inproc
from services.config import HopscopeConfig


def _gauges(text: str, service: str) -> dict[str, float]:
    found = {}
    for name in ("used", "free", "total"):
        match = re.search(rf'hopscope_kv_blocks_{name}{{service="{service}"}} (\S+)', text)
        assert match, f"{service} exports no hopscope_kv_blocks_{name}"
        found[name] = float(match[1])
    return found


def test_an_idle_pipeline_reports_every_kv_block_free() -> None:
    async def scrape() -> tuple[str, str, int]:
        pipeline = await start_inproc(HopscopeConfig.of(port=0, kv_cache_mb=16))
        try:
            return (
                pipeline.worker.metrics.exposition(),
                pipeline.runner.metrics.exposition(),
                pipeline.worker.engine.info.num_blocks,
            )
        finally:
            await pipeline.stop(grace_s=1.0)

    worker_text, scheduler_text, num_blocks = asyncio.run(scrape())
    for service, text in (("worker", worker_text), ("scheduler", scheduler_text)):
        assert _gauges(text, service) == {"used": 0, "free": num_blocks, "total": num_blocks}
