"""The scheduler's KV-reuse metrics (prefix caching, preemption, swap), registered next to the
service's own in its Prometheus registry. Cumulative counts are exported as they stand, so a
scrape at the start and end of a run gives that run's hit rate: Δhit_tokens / Δqueried_tokens."""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Gauge

from services.common.metrics import ServiceMetrics
from services.scheduler.core import Scheduler

_GAUGES = {
    "prefix_cache_hit_rate": "Prompt tokens found in the prefix cache / prompt tokens looked up",
    "prefix_cache_queried_tokens": "Prompt tokens looked up in the prefix cache (cumulative)",
    "prefix_cache_hit_tokens": "Prompt tokens found in the prefix cache (cumulative)",
    "prefix_cache_blocks": "KV blocks named by a prefix hash (in use or evictable)",
    "preemptions": "Sequences preempted for KV space (cumulative)",
    "swapped_out": "Preemptions whose KV was swapped to host memory (cumulative)",
    "swapped_seqs": "Waiting sequences whose KV is in host memory",
}


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Gauge]] = (
    weakref.WeakKeyDictionary()
)


class CacheMetrics:
    """One set of gauges per registry (replicas share the scheduler's), a `replica` label each."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._service = metrics.service_name
        gauges = _BY_REGISTRY.get(metrics.registry)
        if gauges is None:
            gauges = {
                name: Gauge(
                    f"hopscope_{name}", doc, ("service", "replica"), registry=metrics.registry
                )
                for name, doc in _GAUGES.items()
            }
            _BY_REGISTRY[metrics.registry] = gauges
        self._gauges = gauges

    def record(self, core: Scheduler, replica: str = "0") -> None:
        blocks = core.block_manager
        values = {
            "prefix_cache_hit_rate": blocks.hit_rate,
            "prefix_cache_queried_tokens": blocks.num_queried_tokens,
            "prefix_cache_hit_tokens": blocks.num_hit_tokens,
            "prefix_cache_blocks": blocks.num_cached_blocks,
            "preemptions": core.num_preemptions,
            "swapped_out": core.num_swapped_out,
            "swapped_seqs": core.num_swapped,
        }
        for name, value in values.items():
            self._gauges[name].labels(self._service, replica).set(value)
