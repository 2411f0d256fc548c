"""Worker configuration and step validation: unavailable choices fail with actionable errors."""

from __future__ import annotations

import pytest
import torch

from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig
from services.worker.config import torch_dtype
from services.worker.engine import Engine, StepError
from services.worker.kv_cache import KVCacheTooSmallError


def test_defaults_are_float32_on_cpu() -> None:
    worker = HopscopeConfig.of().worker
    assert worker.dtype_name == "float32" and torch_dtype(worker) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_an_actionable_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available.*--device cpu"):
        Engine(HopscopeConfig.of(device="cuda"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float16"}, "float16 needs CUDA"),
        ({"dtype": "int8"}, "float32, bfloat16, float16"),
        ({"device": "tpu"}, "cpu, cuda or cuda:N"),
        ({"gpu_memory_fraction": 1.5}, "gpu_memory_fraction must be <= 1"),
        ({"kernels": "fast"}, "auto, native, torch"),
        ({"cuda_graphs": True}, "--cuda-graphs needs CUDA"),
        ({"cuda_graph_max_batch": 0}, "--cuda-graph-max-batch must be >= 1"),
        ({"compile": True, "kernels": "native"}, "--compile compiles the torch op set"),
    ],
)
def test_invalid_choices_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HopscopeConfig.of(**kwargs)  # type: ignore[arg-type]


def test_a_budget_too_small_for_one_full_sequence_says_what_to_raise() -> None:
    with pytest.raises(KVCacheTooSmallError, match="raise --kv-cache-mb .* --max-model-len"):
        Engine(HopscopeConfig.of(kv_cache_mb=1))


def test_cache_capacity_follows_the_byte_budget() -> None:
    small = Engine(HopscopeConfig.of(kv_cache_mb=16))
    large = Engine(HopscopeConfig.of(kv_cache_mb=32))
    assert large.info.num_blocks == 2 * small.info.num_blocks
    assert small.kv_cache.num_bytes <= 16 * 2**20


def test_steps_beyond_the_block_table_or_context_are_refused() -> None:
    engine = Engine(HopscopeConfig.of(kv_cache_mb=16))
    greedy = SamplingParams()
    with pytest.raises(StepError, match="need 2"):
        engine.step([SeqStep(1, list(range(2, 20)), 0, [0], greedy)])
    with pytest.raises(StepError, match="outside"):
        engine.step([SeqStep(1, [2, 3], 0, [engine.info.num_blocks], greedy)])
    with pytest.raises(StepError, match="token ids must be in 0..4095"):
        engine.step([SeqStep(1, [2, 4096], 0, [0], greedy)])
    with pytest.raises(StepError, match="context"):
        engine.step([SeqStep(1, [2], engine.info.max_context, list(range(129)), greedy)])


def test_bfloat16_on_cpu_runs_and_samples_valid_tokens() -> None:
    engine = Engine(HopscopeConfig.of(dtype="bfloat16", kv_cache_mb=16))
    out = engine.step([SeqStep(1, [0, 5, 9, 11], 0, [0], SamplingParams())])
    assert 0 <= out.sampled[1] < engine.info.vocab_size and out.step_ms > 0


def test_an_empty_step_samples_nothing() -> None:
    engine = Engine(HopscopeConfig.of(kv_cache_mb=16))
    assert engine.step([]).sampled == {}
