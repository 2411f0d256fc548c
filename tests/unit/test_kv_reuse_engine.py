"""Prefix caching and KV swap on the real engine: seeded tokens are the same with them as
without, for a batch whose prompts share a long prefix and under preemption."""

from __future__ import annotations

import dataclasses

import pytest

from services.common.types import SamplingParams
from services.config import HopscopeConfig, SchedulerSettings
from services.scheduler.core import Request, Scheduler
from services.worker.engine import Engine

SHARED = [(37 * j) % 3000 + 5 for j in range(70)]  # 4 full blocks of 16 and a partial one


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(HopscopeConfig.of(model="tiny", kv_cache_mb=8, swap_space_mb=8))


def requests(num: int, max_tokens: int) -> list[Request]:
    reqs = []
    for i in range(num):
        sampling = (
            SamplingParams(temperature=0.9, top_p=0.95, seed=i) if i % 2 else SamplingParams()
        )
        prompt = SHARED + [(11 * i + j) % 3000 + 7 for j in range(3 + i)]
        reqs.append(Request(f"r{i}", prompt, max_tokens, sampling, ignore_eos=True, arrival_s=i))
    return reqs


def run(
    engine: Engine, config: SchedulerSettings, num_blocks: int | None = None
) -> tuple[dict[str, list[int]], Scheduler]:
    info = engine.info
    if num_blocks is not None:  # a smaller budget than the engine's: forces preemption
        info = dataclasses.replace(info, num_blocks=num_blocks)
    scheduler = Scheduler(config, info)
    # the first request runs alone, so the others find its prefix computed
    waves = [requests(1, 4), requests(6, 12)[1:]]
    outputs: dict[str, list[int]] = {}
    for wave in waves:
        for req in wave:
            scheduler.add(req)
        while scheduler.has_unfinished:
            batch = scheduler.schedule(0.0)
            assert batch is not None
            out = engine.step(batch.seq_steps, batch.swaps)
            for update in scheduler.on_step(batch, out.sampled, 0.0):
                outputs.setdefault(update.request_id, []).extend(update.token_ids)
        scheduler.block_manager.check()
    return outputs, scheduler


def test_prefix_caching_gives_the_same_seeded_tokens(engine: Engine) -> None:
    off, _ = run(engine, SchedulerSettings(max_num_batched_tokens=512, prefix_caching=False))
    on, scheduler = run(engine, SchedulerSettings(max_num_batched_tokens=512))
    assert on == off
    # every later prompt found the first one's 4 full shared blocks
    assert scheduler.block_manager.num_hit_tokens >= 5 * 64


def test_swap_gives_the_same_seeded_tokens_as_recompute(engine: Engine) -> None:
    base = SchedulerSettings(max_num_seqs=8, max_num_batched_tokens=512, prefix_caching=False)
    recompute, rs = run(engine, base, num_blocks=16)
    swap_config = SchedulerSettings(
        max_num_seqs=8, max_num_batched_tokens=512, prefix_caching=False, preemption="swap"
    )
    swap, ss = run(engine, swap_config, num_blocks=16)
    assert rs.num_preemptions > 0 and ss.num_swapped_out > 0
    assert swap == recompute


def test_a_step_that_swaps_has_a_swap_span_under_its_step_span(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.common import spans
    from services.common.identity import identify
    from services.common.types import BlockSwaps, SeqStep
    from services.worker.servicer import WorkerService

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(spans, "_tracer", provider.get_tracer("test"))
    service = WorkerService(engine, identify("worker", "inproc", ""))
    try:
        step = SeqStep(0, [5, 6, 7], 0, [3], SamplingParams())
        swaps = BlockSwaps(swap_out=[(1, 0), (2, 1)], swap_in=[(0, 4)])
        out = asyncio.run(service.step([step], {}, "inproc", swaps))
    finally:
        service.close()
    assert out.swap_ms > 0
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    swap, step_span = by_name["hopscope.v1.Worker/Swap"], by_name["hopscope.v1.Worker/Step"]
    assert swap.parent is not None and swap.parent.span_id == step_span.context.span_id
    assert swap.attributes is not None and swap.attributes["hopscope.num_swap_out_blocks"] == 2
    assert step_span.attributes is not None and step_span.attributes["hopscope.swap_ms"] > 0
