"""The engine on CUDA: parity with transformers in float32, seeded sampling and timing in bf16.

Skipped without a CUDA device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig
from services.worker.engine import Engine
from tests.checkpoints import CHECKPOINT_KINDS, BlockPool, generate, write_tiny_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
PROMPTS = [[0, 1523, 87, 912, 33, 2048, 7, 301, 3999, 12, 640], [0, 5, 6]]
NUM_NEW_TOKENS = 8


@pytest.fixture(autouse=True)
def exact_float32_matmuls() -> None:
    # TF32 would make both sides approximate, differently.
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_float32_greedy_tokens_match_transformers_on_cuda(tmp_path: Path, kind: str) -> None:
    transformers = pytest.importorskip("transformers")
    directory = write_tiny_checkpoint(tmp_path / kind, kind)
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    reference = reference.to("cuda").eval()
    engine = Engine(HopscopeConfig.of(model=str(directory), device="cuda", dtype="float32"))
    pool = BlockPool(list(range(engine.info.num_blocks)))
    got = generate(engine, PROMPTS, NUM_NEW_TOKENS, pool, chunk_size=4)
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        ids = torch.tensor([prompt], device="cuda")
        want = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=NUM_NEW_TOKENS,
            min_new_tokens=NUM_NEW_TOKENS,
            pad_token_id=0,
        )
        assert tokens == want[0, len(prompt) :].tolist()


def test_bfloat16_seeded_sampling_is_batch_invariant_and_device_time_is_measured() -> None:
    engine = Engine(HopscopeConfig.of(model="tiny", device="cuda"))
    assert engine.info.dtype == "bfloat16" and engine.info.device == "cuda"
    seeded = SamplingParams(temperature=0.8, top_p=0.9, top_k=100, seed=7)
    pool = BlockPool(list(range(engine.info.num_blocks)))
    alone = generate(engine, [PROMPTS[0]], NUM_NEW_TOKENS, pool, [seeded])[0]
    others = [SamplingParams(temperature=1.0, seed=i) for i in range(16)]
    batched = generate(
        engine, [PROMPTS[1]] * 16 + [PROMPTS[0]], NUM_NEW_TOKENS, pool, others + [seeded]
    )
    assert batched[-1] == alone
    out = engine.step([SeqStep(99, PROMPTS[0], 0, pool.allocate(1), seeded)])
    assert out.device_ms > 0 and out.step_ms >= out.device_ms * 0.5
