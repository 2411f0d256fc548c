"""The engine computes what transformers computes, on the same checkpoints, in float32."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig
from services.worker.engine import Engine
from tests.checkpoints import CHECKPOINT_KINDS, BlockPool, generate, write_tiny_checkpoint

transformers = pytest.importorskip("transformers")

PROMPTS = [
    [0, 1523, 87, 912, 33, 2048, 7, 301, 3999, 12, 640],
    [0, 5, 6],
    [
        0,
        400,
        401,
        402,
        403,
        404,
        405,
        406,
        407,
        408,
        409,
        410,
        411,
        412,
        413,
        414,
        415,
        416,
        417,
        418,
        419,
        420,
        421,
        422,
        423,
        424,
        425,
        426,
        427,
        428,
        429,
        430,
        431,
        432,
        433,
    ],
    [0],  # a one-token prompt takes the decode path from its first step
]
LONG_PROMPT = PROMPTS[2]
NUM_NEW_TOKENS = 12


@pytest.fixture(scope="module", params=CHECKPOINT_KINDS)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def expected(reference: Any) -> list[list[int]]:
    """transformers' greedy continuation of each prompt, generated alone, eos ignored."""
    outputs = []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        out = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=NUM_NEW_TOKENS,
            min_new_tokens=NUM_NEW_TOKENS,
            pad_token_id=0,
        )
        outputs.append(out[0, len(prompt) :].tolist())
    return outputs


@pytest.fixture(scope="module", params=["native", "torch"])
def engine(checkpoint: Path, request: pytest.FixtureRequest) -> Engine:
    # Both op sets: native (the CPU default) and torch (what CUDA runs).
    config = HopscopeConfig.of(model=str(checkpoint), kv_cache_mb=4, kernels=request.param)
    engine = Engine(config)
    assert engine.kernels == request.param
    return engine


def shuffled_pool(engine: Engine, seed: int = 0) -> BlockPool:
    # Scattered, non-contiguous block tables, as a real scheduler produces after a while.
    blocks = list(range(engine.info.num_blocks))
    random.Random(seed).shuffle(blocks)
    return BlockPool(blocks)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def test_logits_match_transformers_for_prefill_chunks_and_decodes(
    engine: Engine, reference: Any
) -> None:
    tokens = LONG_PROMPT
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    pool = shuffled_pool(engine)
    table = pool.allocate(-(-len(tokens) // engine.info.block_size))
    greedy = SamplingParams()
    # A 10-token prefill, a 6-token chunk on top of the cache, then one token at a time.
    spans = [(0, 10), (10, 16)] + [(i, i + 1) for i in range(16, len(tokens))]
    for start, end in spans:
        logits = engine.logits([SeqStep(7, tokens[start:end], start, table, greedy)])[7]
        assert relative_error(logits, expected[end - 1]) < 1e-4, f"position {end - 1}"
    pool.release(table)


def test_greedy_tokens_match_transformers_alone(engine: Engine, expected: list[list[int]]) -> None:
    pool = shuffled_pool(engine)
    for prompt, want in zip(PROMPTS, expected, strict=True):
        assert generate(engine, [prompt], NUM_NEW_TOKENS, pool) == [want]


def test_greedy_tokens_match_when_prompts_of_different_lengths_are_batched(
    engine: Engine, expected: list[list[int]]
) -> None:
    assert generate(engine, PROMPTS, NUM_NEW_TOKENS, shuffled_pool(engine)) == expected


def test_greedy_tokens_match_with_chunked_prefill_mixed_with_decodes(
    engine: Engine, expected: list[list[int]]
) -> None:
    # With 4-token chunks the short prompt decodes while the long ones are still prefilling.
    got = generate(engine, PROMPTS, NUM_NEW_TOKENS, shuffled_pool(engine), chunk_size=4)
    assert got == expected


def test_greedy_tokens_match_after_blocks_were_freed_and_reused(
    engine: Engine, expected: list[list[int]]
) -> None:
    pool = BlockPool(list(range(engine.info.num_blocks)))
    others = [[0] + [(37 * i + j) % 4000 + 2 for j in range(40)] for i in range(4)]
    generate(engine, others, 8, pool)  # fills blocks with other sequences' KV, then frees them
    assert generate(engine, PROMPTS, NUM_NEW_TOKENS, pool) == expected


def test_engine_reports_the_checkpoint(engine: Engine, checkpoint: Path) -> None:
    info = engine.info
    assert info.vocab_size == 4096
    assert info.max_context == 512
    assert info.eos_token_ids == [1]
    assert info.num_blocks * info.block_size >= info.max_context
    assert info.dtype == "float32" and info.device == "cpu"
