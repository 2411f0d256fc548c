"""The native CPU kernels compute what the torch ops they replace compute."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig
from services.worker import kernels
from services.worker.engine import Engine
from services.worker.model import apply_rope, rms_norm


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    kernels.load()  # a build failure fails here, naming the compiler's error


def paged_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: list[list[int]],
    lens: list[int],
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Per sequence: gather its slots, then plain SDPA with grouped heads."""
    outs = []
    for b, (table, length) in enumerate(zip(tables, lens, strict=True)):
        slots = torch.tensor(
            [table[p // block_size] * block_size + p % block_size for p in range(length)]
        )
        keys = k_cache.float().index_select(1, slots)[None]
        values = v_cache.float().index_select(1, slots)[None]
        query = q[b].float()[None, :, None]  # [1, H, 1, D]
        out = F.scaled_dot_product_attention(query, keys, values, scale=scale, enable_gqa=True)
        outs.append(out[0, :, 0])
    return torch.stack(outs)


@pytest.mark.parametrize(
    ("dtype", "head_dim", "tolerance"),
    [(torch.float32, 64, 1e-5), (torch.float32, 40, 1e-5), (torch.bfloat16, 128, 2e-2)],
)
def test_paged_decode_attention_matches_gather_then_sdpa(
    dtype: torch.dtype, head_dim: int, tolerance: float
) -> None:
    rng = random.Random(0)
    torch.manual_seed(0)
    block_size, num_blocks, num_heads, num_kv_heads = 16, 64, 8, 2
    k_cache = torch.randn(num_kv_heads, num_blocks * block_size, head_dim).to(dtype)
    v_cache = torch.randn(num_kv_heads, num_blocks * block_size, head_dim).to(dtype)
    lens = [1, 16, 17, 100, 33]  # block boundaries on both sides, and a lone token
    blocks = list(range(num_blocks))
    rng.shuffle(blocks)  # scattered tables, as after a while of serving
    tables = [[blocks.pop() for _ in range(8)] for _ in lens]
    q = torch.randn(len(lens), num_heads, head_dim).to(dtype)
    got = kernels.paged_decode_attention(
        q, k_cache, v_cache, torch.tensor(tables), torch.tensor(lens), block_size, 0.3
    )
    want = paged_reference(q, k_cache, v_cache, tables, lens, block_size, 0.3)
    assert got.dtype == dtype and got.shape == q.shape
    assert (got.float() - want).abs().max() < tolerance


def test_paged_decode_attention_refuses_tables_outside_the_cache() -> None:
    cache = torch.zeros(1, 32, 8)
    q = torch.zeros(1, 1, 8)
    with pytest.raises(RuntimeError, match="block outside the cache"):
        kernels.paged_decode_attention(
            q, cache, cache, torch.tensor([[2]]), torch.tensor([16]), 16, 1.0
        )
    with pytest.raises(RuntimeError, match="context length outside the block table"):
        kernels.paged_decode_attention(
            q, cache, cache, torch.tensor([[0]]), torch.tensor([17]), 16, 1.0
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norms_and_activation_match_torch(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    x, delta = torch.randn(5, 48).to(dtype), torch.randn(5, 48).to(dtype)
    weight = torch.randn(48).to(dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(
        kernels.rms_norm(x, weight, 1e-5), rms_norm(x, weight, 1e-5), atol=tolerance
    )
    residual = x.clone()
    normed = kernels.add_rms_norm_(residual, delta, weight, 1e-5)
    assert torch.equal(residual, x + delta)  # the residual stream is updated in place
    assert torch.allclose(normed, rms_norm(x + delta, weight, 1e-5), atol=tolerance)
    gate_up = torch.randn(5, 96).to(dtype) * 8  # wide range: exp's approximation everywhere
    gate, up = gate_up.chunk(2, dim=-1)
    want = F.silu(gate.float()) * up.float()
    assert torch.allclose(
        kernels.silu_and_mul(gate_up).float(), want, rtol=tolerance, atol=tolerance
    )


def test_rope_and_cache_rotates_q_and_k_and_writes_k_and_v() -> None:
    torch.manual_seed(2)
    num_heads, num_kv_heads, head_dim, num_tokens = 4, 2, 16, 3
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim)
    angles = torch.randn(num_tokens, head_dim // 2).repeat(1, 2)
    cos, sin = angles.cos(), angles.sin()
    k_cache = torch.zeros(num_kv_heads, 10, head_dim)
    v_cache = torch.zeros(num_kv_heads, 10, head_dim)
    slots = torch.tensor([7, 0, 3])
    heads = qkv.view(num_tokens, -1, head_dim)
    want_qk = apply_rope(heads[:, : num_heads + num_kv_heads], cos[:, None], sin[:, None])
    want_v = heads[:, num_heads + num_kv_heads :].clone()
    kernels.rope_and_cache_(qkv, cos, sin, k_cache, v_cache, slots, num_heads, num_kv_heads)
    assert torch.allclose(heads[:, : num_heads + num_kv_heads], want_qk, atol=1e-6)
    assert torch.allclose(k_cache[:, slots].transpose(0, 1), want_qk[:, num_heads:], atol=1e-6)
    assert torch.equal(v_cache[:, slots].transpose(0, 1), want_v)
    assert k_cache[:, [1, 2, 4, 5, 6, 8, 9]].abs().sum() == 0  # nothing else written


def test_packed_linear_matches_f_linear() -> None:
    torch.manual_seed(3)
    weight, bias = torch.randn(24, 16), torch.randn(24)
    packed = kernels.pack_linear_weight(weight)
    for rows in (1, 7, 64):
        x = torch.randn(rows, 16)
        assert torch.allclose(
            kernels.packed_linear(x, packed, bias), F.linear(x, weight, bias), atol=1e-5
        )


def test_native_and_torch_engines_sample_the_same_seeded_tokens() -> None:
    """The whole step, seeded sampling included: same tokens from both op sets."""
    engines = [Engine(HopscopeConfig.of(kernels=k, kv_cache_mb=16)) for k in ("native", "torch")]
    assert [e.kernels for e in engines] == ["native", "torch"]
    assert engines[0].gemm == "onednn-packed"
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=11)
    results = []
    for engine in engines:
        prompts = [[0] + list(range(5 + i, 30 + 3 * i)) for i in range(3)]
        tables = [[4 * i + j for j in range(4)] for i in range(3)]
        out = engine.step([SeqStep(i, p, 0, tables[i], params) for i, p in enumerate(prompts)])
        tokens = [[out.sampled[i]] for i in range(3)]
        lengths = [len(p) for p in prompts]
        for _ in range(8):
            out = engine.step(
                [SeqStep(i, [tokens[i][-1]], lengths[i], tables[i], params) for i in range(3)]
            )
            for i in range(3):
                tokens[i].append(out.sampled[i])
                lengths[i] += 1
        results.append(tokens)
    assert results[0] == results[1]


def test_torch_kernels_are_used_where_asked() -> None:
    engine = Engine(HopscopeConfig.of(kernels="torch", kv_cache_mb=16))
    assert (engine.kernels, engine.gemm) == ("torch", "torch")


def test_a_build_lock_left_by_a_killed_build_is_removed_and_a_live_one_kept(
    tmp_path: Path,
) -> None:
    # torch waits on an existing lock file forever: a worker killed mid-build would otherwise
    # hang every later worker's start on this machine.
    lock = tmp_path / "lock"
    lock.touch()
    kernels._remove_stale_build_lock(tmp_path)
    assert lock.exists()  # another process may be building right now
    old = time.time() - kernels.STALE_BUILD_LOCK_S - 1
    os.utime(lock, (old, old))
    kernels._remove_stale_build_lock(tmp_path)
    assert not lock.exists()
