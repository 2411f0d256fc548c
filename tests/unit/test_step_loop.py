"""The GPU step-loop switches give the tokens the plain engine gives (issue 14 part 5), on CPU:
the fixed-shape decode path the CUDA graphs capture (run here without capture) and --compile.
Graph capture and replay themselves, float16 and bfloat16: tests/gpu/test_step_loop_gpu.py."""

from __future__ import annotations

import pytest
import torch

from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig
from services.worker.engine import Engine
from services.worker.static_decode import StaticDecode, block_buckets, graph_batch_sizes
from tests.checkpoints import BlockPool, generate

# Five sequences; the 300-token one needs 19 blocks (the 32-block bucket) and prefills in five
# chunks, while the others decode beside it (mixed steps: eager), then all five decode (padded to
# 8 rows), then it alone. A first run of two short ones decodes in the 8-block bucket.
PROMPTS = [[0] + [(97 * i + 13 * j) % 4000 + 2 for j in range(4 + 9 * i)] for i in range(4)]
PROMPTS.append([0] + [(7 * j) % 4000 + 2 for j in range(299)])
SAMPLING = [SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=i) for i in range(4)]
SAMPLING.append(SamplingParams())  # greedy
NUM_NEW_TOKENS = 10


def run(engine: Engine, prompts: list[list[int]] = PROMPTS) -> list[list[int]]:
    # Freed blocks are reused (stale KV inside), as under a real scheduler.
    pool = BlockPool(list(range(engine.info.num_blocks)))
    first = generate(engine, prompts[:2], 3, pool, SAMPLING[:2], chunk_size=16)
    rest = generate(engine, prompts, NUM_NEW_TOKENS, pool, SAMPLING[: len(prompts)], chunk_size=64)
    return first + rest


def test_shapes_are_powers_of_two_up_to_the_caps() -> None:
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert graph_batch_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert graph_batch_sizes(1) == [1]
    assert block_buckets(128) == [8, 16, 32, 64, 128]
    assert block_buckets(100) == [8, 16, 32, 64, 100]
    assert block_buckets(4) == [4]


def test_fixed_shape_decode_gives_the_plain_engines_seeded_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = run(Engine(HopscopeConfig.of(kernels="torch")))
    engine = Engine(HopscopeConfig.of(kernels="torch", cuda_graph_max_batch=8), static_decode=True)
    assert engine.static_decode is not None and not engine.static_decode.graphs  # no capture
    # the scratch block is extra: the scheduler's blocks are all still there
    assert engine.kv_cache.scratch_block == engine.info.num_blocks
    shapes: list[tuple[int, int]] = []
    forward = StaticDecode.forward

    def recording(self: StaticDecode, seqs: list[SeqStep]) -> torch.Tensor:
        shapes.append(self.shape_of(seqs))
        return forward(self, seqs)

    monkeypatch.setattr(StaticDecode, "forward", recording)
    assert run(engine) == plain
    # the decode-only steps went through it: padded batches and both block buckets
    assert set(shapes) == {(2, 8), (8, 32), (1, 32)}


def test_fixed_shape_logits_match_the_plain_path_and_padding_touches_no_sequence() -> None:
    plain = Engine(HopscopeConfig.of(kernels="torch"))
    static = Engine(HopscopeConfig.of(kernels="torch"), static_decode=True)
    greedy = SamplingParams()
    tables = [[3], [5, 6]]
    prompts = [PROMPTS[0][:5], PROMPTS[2][:18]]
    for engine in (plain, static):
        engine.step([SeqStep(i, p, 0, tables[i], greedy) for i, p in enumerate(prompts)])
    before = static.kv_cache.data.clone()
    decodes = [SeqStep(i, [7 + i], len(p), tables[i], greedy) for i, p in enumerate(prompts)]
    want, got = plain.logits(decodes), static.logits(decodes)
    for seq_id in want:
        torch.testing.assert_close(got[seq_id], want[seq_id], rtol=1e-5, atol=1e-5)
    # The step wrote each sequence's new slot, and otherwise only the scratch block.
    changed = (static.kv_cache.data != before).any(dim=(0, 1, 2, 4)).nonzero().flatten()
    block_size = static.info.block_size
    written = {
        t[len(p) // block_size] * block_size + len(p) % block_size
        for t, p in zip(tables, prompts, strict=True)
    }
    scratch = range(static.info.num_blocks * block_size, (static.info.num_blocks + 1) * block_size)
    assert written <= set(changed.tolist()) <= written | set(scratch)


def test_batches_past_the_largest_shape_and_prefills_run_eagerly() -> None:
    engine = Engine(HopscopeConfig.of(kernels="torch", cuda_graph_max_batch=4), static_decode=True)
    assert engine.static_decode is not None
    greedy = SamplingParams()
    decodes = [SeqStep(i, [5], 3, [i], greedy) for i in range(5)]
    assert not engine.static_decode.fits(decodes)
    assert engine.static_decode.fits(decodes[:4])
    assert not engine.static_decode.fits([SeqStep(0, [5, 6], 3, [0], greedy)])
    assert not engine.static_decode.fits([SeqStep(0, [5], 3, [0], None)])


def test_compile_gives_the_plain_engines_seeded_tokens() -> None:
    """torch.compile (inductor's C++ on CPU) of the torch op set, against the same op set
    eagerly: fused float32 reductions may differ in the last bits, not in tokens here."""
    engine = Engine(HopscopeConfig.of(compile=True))
    assert (engine.kernels, engine.gemm) == ("torch", "torch")
    prompts = PROMPTS[:3]
    plain = Engine(HopscopeConfig.of(kernels="torch"))
    assert run(engine, prompts) == run(plain, prompts)
    decode = [SeqStep(0, [9], 4, [0], SamplingParams())]
    for e in (engine, plain):
        e.step([SeqStep(0, PROMPTS[0][:4], 0, [0], SamplingParams())])
    torch.testing.assert_close(
        engine.logits(decode)[0], plain.logits(decode)[0], rtol=1e-4, atol=1e-4
    )
