"""`--quantization int8 | int4`: the formats' round-trip error, the packed kernels against a float
GEMM on the same weights, the engine's greedy tokens on the tiny preset, a GGUF's Q4_1 blocks
loaded as they are, and the refusals (a shape the int4 kernel cannot pack, a bad value)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from services.config import HopscopeConfig
from services.models.quantized import GroupQuantized, quantize_int4
from services.worker import quant
from services.worker.engine import Engine
from services.worker.model import LINEAR_NAMES
from tests.checkpoints import BlockPool, generate

CPU = torch.device("cpu")
PROMPTS = [[(7 * i + 13 * j) % 4000 + 2 for j in range(10 + 3 * i)] for i in range(6)]
NUM_NEW_TOKENS = 24


def random_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # a few large outliers per row, as trained weights have: the scales must cover them
    weight = torch.randn(rows, cols, generator=generator) * 0.02
    weight[:, :: cols // 4] *= 8
    return weight


def test_int8_round_trip_is_within_half_a_step_per_channel() -> None:
    weight = random_weight(96, 576)
    codes, scales = quant.quantize_int8(weight, torch.float32)
    assert codes.dtype == torch.int8 and scales.shape == (96,)
    error = (codes.float() * scales[:, None] - weight).abs()
    assert (error <= scales[:, None] / 2 + 1e-7).all()
    # bfloat16 scales (what the CPU kernel takes): codes are rounded against the stored scale
    codes, scales16 = quant.quantize_int8(weight, torch.bfloat16)
    error = (codes.float() * scales16.float()[:, None] - weight).abs()
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert (error <= step * (0.5 + 2**-7)).all()


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_round_trip_is_within_half_a_step_per_group(group_size: int) -> None:
    weight = random_weight(64, 768)
    groups = quantize_int4(weight, group_size)
    assert groups.group_size == group_size and int(groups.codes.max()) <= 15
    step = groups.scales.repeat_interleave(group_size, dim=1)
    assert ((groups.dequantize() - weight).abs() <= step / 2 + 1e-6).all()
    # a constant group (all zeros) comes back exactly
    zeros = quantize_int4(torch.zeros(16, 64), group_size=32)
    assert torch.equal(zeros.dequantize(), torch.zeros(16, 64))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected).norm() / expected.norm())


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens", [1, 5, 33])
def test_quantized_linear_matches_a_float_gemm_on_its_own_weights(
    method: str, dtype: torch.dtype, num_tokens: int
) -> None:
    weight, bias = random_weight(96, 576), torch.randn(96) * 0.1
    packed = quant.quantize_linear("test", weight, method, 32, dtype, CPU)
    if method == "int8":
        assert isinstance(packed, quant.Int8Weight)
        dense = packed.codes.float() * packed.scales.float()[:, None]
    else:
        dense = quantize_int4(weight, 32).dequantize()
    x = torch.randn(num_tokens, 576, generator=torch.Generator().manual_seed(1))
    out = quant.linear(x.to(dtype), packed, bias.to(dtype))
    assert out.dtype == dtype and out.shape == (num_tokens, 96)
    # same weights: only the bfloat16 activations inside the kernel differ
    assert relative_error(out, x @ dense.T + bias) < 0.01
    # against the unquantized weights: the format's own error (measured 0.023-0.027 for int8,
    # 0.086-0.093 for int4 at group 32 on these outlier-heavy rows)
    assert relative_error(out, x @ weight.T + bias) < (0.04 if method == "int8" else 0.15)


def test_int4_packs_a_gguf_q4_1_tensor_as_it_is() -> None:
    """Q4_1's blocks (float16 scale and minimum, 32 codes) read straight equal gguf's own
    dequantization (Q/K rows un-permuted the same way), and pack without requantizing."""
    pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType, dequantize

    from services.models import ModelNotFoundError, resolve_model
    from services.models.gguf import _reader, _unpermute_rotary, load_gguf_weights

    try:
        source = resolve_model("smollm2-135m")
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    assert source.gguf_path is not None
    tensor = next(t for t in _reader(source.gguf_path).tensors if t.name == "blk.0.attn_q.weight")
    assert tensor.tensor_type == GGMLQuantizationType.Q4_1
    shape = [int(n) for n in reversed(tensor.shape)]
    expected = _unpermute_rotary(
        dequantize(tensor.data, tensor.tensor_type).reshape(shape), source.config.num_heads
    )
    weights = load_gguf_weights(source.gguf_path, source.config, torch.float32, CPU, 32)
    groups = weights["model.layers.0.self_attn.q_proj.weight"]
    assert isinstance(groups, GroupQuantized) and groups.group_size == 32
    assert torch.equal(groups.dequantize(), torch.from_numpy(expected.copy()))
    assert isinstance(weights["model.embed_tokens.weight"], torch.Tensor)  # Q8_0: dense
    packed = quant.quantize_linear("q", groups, "int4", 32, torch.float32, CPU)
    assert isinstance(packed, quant.Int4Weight)
    x = torch.randn(3, shape[1])
    assert relative_error(quant.linear(x, packed, None), x @ groups.dequantize().T) < 0.01


def test_int4_refuses_a_shape_its_kernel_cannot_pack_and_says_what_fits() -> None:
    with pytest.raises(quant.QuantizationError, match=r"\[96 x 576\].*group size 128.*32 or 64"):
        quant.quantize_linear(
            "layer 0's qkv", random_weight(96, 576), "int4", 128, torch.float32, CPU
        )
    with pytest.raises(quant.QuantizationError, match=r"multiples of 16; use --quantization int8"):
        quant.quantize_linear("w", random_weight(100, 576), "int4", 32, torch.float32, CPU)
    # int8 packs any shape
    packed = quant.quantize_linear("w", random_weight(100, 570), "int8", 32, torch.float32, CPU)
    assert packed.out_features == 100


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"quantization": "int3"}, "--quantization must be one of none, int8, int4"),
        ({"quantization_group_size": 48}, "--quantization-group-size must be one of 32, 64"),
        ({"quantization": "int8", "compile": True}, "use one or the other"),
    ],
)
def test_bad_values_are_refused_before_anything_loads(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HopscopeConfig.of(**values)
    with pytest.raises(ValueError, match=message):
        HopscopeConfig.of(model="tiny", **values)


def tiny_engine(**kwargs: Any) -> Engine:
    return Engine(HopscopeConfig.of(model="tiny", kv_cache_mb=16, **kwargs))


def greedy(engine: Engine) -> list[list[int]]:
    return generate(engine, PROMPTS, NUM_NEW_TOKENS, BlockPool(list(range(engine.info.num_blocks))))


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    same = sum(a == b for row, ref in zip(tokens, reference, strict=True) for a, b in zip(row, ref))
    return same / sum(len(row) for row in reference)


def dequantized_reference(method: str) -> Engine:
    """A float32 engine (plain F.linear) whose weights are what `method` stores, dequantized:
    the quantized engine must compute the same thing up to its bfloat16 activations."""
    engine = tiny_engine(kernels="torch")
    model = engine.model
    for layer in model.layers:
        for name in LINEAR_NAMES:
            weight = getattr(layer, name)
            if method == "int8":
                codes, scales = quant.quantize_int8(weight, torch.bfloat16)
                setattr(layer, name, codes.float() * scales.float()[:, None])
            else:
                setattr(layer, name, quantize_int4(weight, 32).dequantize())
    codes, scales = quant.quantize_int8(model.embed, torch.bfloat16)  # the head is int8 always
    model.lm_head = codes.float() * scales.float()[:, None]
    return engine


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_greedy_tokens_on_the_tiny_preset(method: str) -> None:
    engine = tiny_engine(quantization=method)
    assert engine.gemm == method
    tokens = greedy(engine)
    # the same weights in float: the tokens agree but where the top two logits of this random
    # model sit within bfloat16's rounding of the activations
    reference = greedy(dequantized_reference(method))
    assert agreement(tokens, reference) >= 0.9
    assert [row[0] for row in tokens] == [row[0] for row in reference]
    if method == "int8":  # against the float32 weights themselves
        assert agreement(tokens, greedy(tiny_engine())) >= 0.75


def test_a_decode_step_reads_a_quarter_of_the_weight_bytes_at_int8_and_less_at_int4() -> None:
    from benchmarks.quantization import weight_bytes_per_token

    full = weight_bytes_per_token(tiny_engine())
    int8 = weight_bytes_per_token(tiny_engine(quantization="int8")) / full
    int4 = weight_bytes_per_token(tiny_engine(quantization="int4")) / full
    assert 0.25 < int8 < 0.26  # a byte a weight, plus a scale a row
    # half a byte a weight plus a bfloat16 scale and zero per 32 in the layers; the head is int8
    assert 0.15 < int4 < int8
