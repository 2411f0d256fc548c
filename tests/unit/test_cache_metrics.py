from services.common.metrics import ServiceMetrics
from services.config import SchedulerSettings
from services.scheduler.cache_metrics import CacheMetrics
from services.scheduler.core import Request, Scheduler
from tests.fakes import FakeWorker, make_request, run_until_idle


def test_prefix_cache_hit_rate_and_preemptions_are_exported() -> None:
    worker = FakeWorker(num_blocks=16, block_size=4)
    scheduler = Scheduler(SchedulerSettings(), worker.info)
    first = make_request(0, 9, 2)
    scheduler.add(first)
    run_until_idle(scheduler, worker)
    scheduler.add(Request("r1", list(first.prompt_token_ids), 2))
    run_until_idle(scheduler, worker)
    metrics = ServiceMetrics("scheduler")
    CacheMetrics(metrics).record(scheduler)
    text = metrics.exposition()
    assert (
        'hopscope_prefix_cache_hit_rate{replica="0",service="scheduler"} 0.444' in text
    )  # 8 of 18
    assert 'hopscope_prefix_cache_hit_tokens{replica="0",service="scheduler"} 8.0' in text
    assert 'hopscope_preemptions{replica="0",service="scheduler"} 0.0' in text
