"""Seeded sampling: reproducible whatever else runs in the batch, after recompute or restart."""

from __future__ import annotations

import math

import pytest
import torch

from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig
from services.worker.engine import Engine
from services.worker.sampling import SamplingTensors, sample
from tests.checkpoints import BlockPool, generate

PROMPT = [0, 812, 99, 1400, 7, 2222, 31]
NUM_NEW_TOKENS = 10
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, top_k=200, seed=1234)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(HopscopeConfig.of(model="tiny", kv_cache_mb=32))


def pool_of(engine: Engine) -> BlockPool:
    return BlockPool(list(range(engine.info.num_blocks)))


def noisy_neighbours(count: int) -> tuple[list[list[int]], list[SamplingParams]]:
    prompts = [[0] + [(53 * i + 11 * j) % 4000 + 2 for j in range(3 + 2 * i)] for i in range(count)]
    params = [
        SamplingParams(temperature=1.0 + i / 10, top_p=0.8, top_k=i, seed=i) for i in range(count)
    ]
    return prompts, params


def test_same_seed_gives_same_tokens_alone_and_in_a_batch_of_16_others(engine: Engine) -> None:
    alone = generate(engine, [PROMPT], NUM_NEW_TOKENS, pool_of(engine), [SEEDED])[0]
    prompts, params = noisy_neighbours(16)
    batched = generate(
        engine, prompts + [PROMPT], NUM_NEW_TOKENS, pool_of(engine), params + [SEEDED], chunk_size=5
    )
    assert batched[-1] == alone
    other_seed = SamplingParams(temperature=0.9, top_p=0.95, top_k=200, seed=4321)
    assert generate(engine, [PROMPT], NUM_NEW_TOKENS, pool_of(engine), [other_seed])[0] != alone


def test_seeded_tokens_survive_preemption_with_recompute(engine: Engine) -> None:
    full = generate(engine, [PROMPT], NUM_NEW_TOKENS, pool_of(engine), [SEEDED])[0]
    # Preempted after 4 tokens: the prompt and those tokens are prefilled again, then it goes on.
    head = full[:4]
    tail = generate(engine, [PROMPT + head], NUM_NEW_TOKENS - 4, pool_of(engine), [SEEDED])[0]
    assert head + tail == full


def test_seeded_tokens_survive_a_worker_restart(engine: Engine) -> None:
    first = generate(engine, [PROMPT], NUM_NEW_TOKENS, pool_of(engine), [SEEDED])[0]
    restarted = Engine(HopscopeConfig.of(model="tiny", kv_cache_mb=32))
    assert generate(restarted, [PROMPT], NUM_NEW_TOKENS, pool_of(restarted), [SEEDED])[0] == first


def test_non_final_prefill_chunk_samples_nothing(engine: Engine) -> None:
    pool = pool_of(engine)
    out = engine.step([SeqStep(3, PROMPT[:4], 0, pool.allocate(1), None)])
    assert out.sampled == {}


def sample_many(logits_row: list[float], params: SamplingParams, num_draws: int) -> list[int]:
    logits = torch.tensor([logits_row] * num_draws)
    # Distinct positions give independent draws from one seed.
    tensors = SamplingTensors([params] * num_draws, list(range(num_draws)), torch.device("cpu"))
    return sample(logits, tensors).tolist()


def test_temperature_sampling_follows_the_softmax() -> None:
    logits_row = [2.0, 1.0, 0.0, -1.0]
    draws = sample_many(logits_row, SamplingParams(temperature=1.0, seed=5), 20000)
    weights = [math.exp(x) for x in logits_row]
    for token, weight in enumerate(weights):
        assert abs(draws.count(token) / len(draws) - weight / sum(weights)) < 0.015


def test_top_k_and_top_p_never_pick_outside_the_allowed_set() -> None:
    logits_row = [3.0, 2.9, 2.8, 0.0, -1.0, -2.0]
    top_k = sample_many(logits_row, SamplingParams(temperature=2.0, top_k=2, seed=1), 3000)
    assert set(top_k) == {0, 1}
    # Probabilities ~ .35/.32/.29/.02/...: top_p=0.6 keeps the first two only.
    top_p = sample_many(logits_row, SamplingParams(temperature=1.0, top_p=0.6, seed=1), 3000)
    assert set(top_p) == {0, 1}


def test_greedy_rows_take_the_argmax_inside_a_sampled_batch() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.9], [0.0, 5.0, 4.9]])
    params = [SamplingParams(), SamplingParams(temperature=50.0, seed=3)]
    tensors = SamplingTensors(params, [10, 10], torch.device("cpu"))
    draws = [
        sample(logits, SamplingTensors(params, [p, p], torch.device("cpu"))).tolist()
        for p in range(200)
    ]
    assert all(d[0] == 1 for d in draws)
    assert {d[1] for d in draws} == {0, 1, 2}
    assert sample(logits, tensors).tolist()[0] == 1
