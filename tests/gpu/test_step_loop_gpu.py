"""The GPU step-loop switches on CUDA (issue 14 part 5): decode steps replayed from captured CUDA
graphs, torch.compile (Triton), in float32 / bfloat16 / float16. Skipped without a CUDA device
(benchmarks/gpu_check.sh runs them).

What holds exactly and what within rounding:
- a replayed graph runs the very kernels of the same fixed-shape step run uncaptured: seeded
  tokens identical in every dtype;
- graphs on vs off (and --compile vs eager) change GEMM shapes (padded rows and block tables:
  cuBLAS picks kernels, and so reduction orders, by shape) and, compiled, which intermediates are
  rounded: seeded tokens identical in float32 (TF32 off); in bfloat16 / float16 the tiny preset's
  logits are flat enough (top two often one bf16 step apart) that a last-bit difference may flip a
  token, so there the logits are compared, within a tolerance well under what a wrong context or
  position gives (calibrated on CPU: bfloat16 vs float32 differs by <= 0.012, a position off by
  one by 0.09 max / 0.009 mean)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig
from services.worker.engine import Engine
from services.worker.static_decode import StaticDecode
from tests.checkpoints import BlockPool, generate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
# Decode batches of 6 (padded to 8) and, once the short ones end, fewer; the 300-token prompt
# puts its batches in the 32-block bucket.
PROMPTS = [[0] + [(97 * i + 13 * j) % 4000 + 2 for j in range(3 + 5 * i)] for i in range(5)]
PROMPTS.append([0] + [(7 * j) % 4000 + 2 for j in range(299)])
SAMPLING = [SamplingParams(temperature=0.9, top_p=0.95, top_k=64, seed=11 + i) for i in range(5)]
SAMPLING.append(SamplingParams())  # greedy
NUM_NEW_TOKENS = 12
MAX_GRAPH_BATCH = 8  # 4 batch sizes x 5 block buckets: quick to capture
HALF_ATOL, HALF_MEAN_ABS = 0.03, 0.004


@pytest.fixture(autouse=True)
def exact_float32_matmuls() -> Iterator[None]:
    # TF32 would make float32 approximate, and differently for different GEMM shapes.
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def run(engine: Engine) -> list[list[int]]:
    pool = BlockPool(list(range(engine.info.num_blocks)))
    short = generate(engine, PROMPTS[:2], 4, pool, SAMPLING[:2])  # freed blocks reused below
    return short + generate(engine, PROMPTS, NUM_NEW_TOKENS, pool, SAMPLING, chunk_size=128)


def engine(
    dtype: str, cuda_graphs: bool = False, compile: bool = False, uncaptured: bool = False
) -> Engine:
    """`uncaptured`: the graphs' fixed-shape decode path, run eagerly."""
    config = HopscopeConfig.of(
        model="tiny",
        device="cuda",
        dtype=dtype,
        cuda_graphs=cuda_graphs,
        cuda_graph_max_batch=MAX_GRAPH_BATCH,
        compile=compile,
        gpu_memory_fraction=0.2,  # several engines live at once in a test
    )
    return Engine(config, static_decode=True if uncaptured else None)


def decode_logits(engine: Engine) -> torch.Tensor:
    """Logits of one decode step of all six prompts (a batch padded from 6 to 8 rows)."""
    tables = [[20 * i + k for k in range(20)] for i in range(len(PROMPTS))]
    greedy = SamplingParams()
    engine.step([SeqStep(i, p, 0, tables[i], greedy) for i, p in enumerate(PROMPTS)])
    step = [SeqStep(i, [5 + i], len(p), tables[i], greedy) for i, p in enumerate(PROMPTS)]
    logits = engine.logits(step)
    return torch.stack([logits[i] for i in range(len(PROMPTS))])


def assert_close_in_half_precision(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=HALF_ATOL, rtol=0.02)
    assert float((got - want).abs().mean()) < HALF_MEAN_ABS


@pytest.fixture
def replayed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Shapes of the steps served by a captured graph."""
    shapes: list[tuple[int, int]] = []
    forward = StaticDecode.forward

    def recording(self: StaticDecode, seqs: list[SeqStep]) -> torch.Tensor:
        if self.shape_of(seqs) in self.graphs:
            shapes.append(self.shape_of(seqs))
        return forward(self, seqs)

    monkeypatch.setattr(StaticDecode, "forward", recording)
    return shapes


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_replayed_graphs_give_the_uncaptured_steps_seeded_tokens(
    dtype: str, replayed: list[tuple[int, int]]
) -> None:
    uncaptured = run(engine(dtype, uncaptured=True))
    assert not replayed
    graphs = engine(dtype, cuda_graphs=True)
    assert graphs.static_decode is not None
    assert len(graphs.static_decode.graphs) == 4 * 5  # batch 1, 2, 4, 8 x 8..128 blocks
    assert run(graphs) == uncaptured
    assert {(2, 8), (8, 32)} <= set(replayed)  # padded rows, two block buckets, replayed


def test_cuda_graphs_give_the_eager_engines_seeded_tokens_in_float32(
    replayed: list[tuple[int, int]],
) -> None:
    eager = run(engine("float32"))
    assert run(engine("float32", cuda_graphs=True)) == eager
    assert replayed


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_graphs_logits_match_the_eager_engine_in_half_precision(dtype: str) -> None:
    want = decode_logits(engine(dtype))
    assert_close_in_half_precision(decode_logits(engine(dtype, cuda_graphs=True)), want)


def test_compile_gives_the_eager_seeded_tokens_in_float32_with_and_without_graphs(
    replayed: list[tuple[int, int]],
) -> None:
    eager = run(engine("float32"))
    assert run(engine("float32", compile=True)) == eager
    assert run(engine("float32", compile=True, cuda_graphs=True)) == eager
    assert replayed


def test_compile_logits_match_the_eager_engine_in_bfloat16() -> None:
    want = decode_logits(engine("bfloat16"))
    assert_close_in_half_precision(decode_logits(engine("bfloat16", compile=True)), want)
    got = decode_logits(engine("bfloat16", compile=True, cuda_graphs=True))
    assert_close_in_half_precision(got, want)


def test_replayed_steps_are_batch_invariant_and_timed_on_the_device() -> None:
    graphs = engine("float32", cuda_graphs=True)
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=7)
    pool = BlockPool(list(range(graphs.info.num_blocks)))
    alone = generate(graphs, [PROMPTS[3]], NUM_NEW_TOKENS, pool, [seeded])[0]
    others = [SamplingParams(temperature=1.0, seed=i) for i in range(4)]
    batched = generate(graphs, PROMPTS[:4] + [PROMPTS[3]], NUM_NEW_TOKENS, pool, others + [seeded])
    assert batched[-1] == alone
    table = pool.allocate(1)
    graphs.step([SeqStep(1, PROMPTS[0], 0, table, seeded)])
    out = graphs.step([SeqStep(1, [5], len(PROMPTS[0]), table, seeded)])
    assert out.device_ms > 0 and 1 in out.sampled
