"""A Llama-family decoder (Llama, Qwen2, Mistral) that runs one flat batch of tokens against a
paged KV cache. Linear layers see every token of the step at once; attention runs batched for
single-token sequences and per sequence for prefill chunks.

Two sets of non-GEMM ops compute the same thing: `native` (the fused CPU kernels of
services/worker/kernels: decode attention read in place from the paged cache, rotary + cache
write, residual add + RMSNorm, SwiGLU) and `torch` (plain ATen ops, any device; decode attention
copies each sequence's blocks out, then runs batched matmuls). The GEMMs run F.linear, oneDNN on
packed weights, or, under `quantization`, the int8 / int4 kernels of services/worker/quant.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from services.models.config import ModelConfig
from services.models.quantized import GroupQuantized, cat_rows
from services.worker import kernels, quant
from services.worker.batch import PrefillSegment, StepBatch
from services.worker.kv_cache import KVCache

# A linear layer's weight [out, in]: dense (or oneDNN-packed), quantized, or (while loading only)
# 4-bit groups read from a GGUF file that quantization packs as they are.
LinearWeight = torch.Tensor | quant.QuantizedWeight | GroupQuantized
LINEAR_NAMES = ("qkv", "o", "gate_up", "down")


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: LinearWeight  # q, k and v projections stacked: one matmul
    qkv_bias: torch.Tensor | None
    o: LinearWeight
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: LinearWeight  # gate and up projections stacked
    gate_up_bias: torch.Tensor | None
    down: LinearWeight
    down_bias: torch.Tensor | None


@dataclass(slots=True)
class StepTensors:
    """What every layer of one step shares."""

    batch: StepBatch
    kv_cache: KVCache
    cos: torch.Tensor  # [tokens, head_dim]
    sin: torch.Tensor
    decode_bias: torch.Tensor | None  # [kv_heads * num_decodes, 1, context]: 0 or -inf


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies, as transformers computes them (float32), llama3 scaling included."""
    dim = config.head_dim
    inv_freq = 1.0 / (
        config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    )
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused kernel; same arithmetic as below in float32
        return F.rms_norm(x, weight.shape, weight, eps)
    # In float32 and cast back before the weight, as the reference implementation does.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rotate_qk(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_rotated_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch op set's rotary on a QKV projection [tokens, heads * D]: (q and k heads rotated,
    [tokens, q + k heads, D]; v heads)."""
    qkv = qkv.view(qkv.shape[0], -1, head_dim)
    # q and k heads rotate together: one set of kernels instead of two.
    qk = apply_rope(qkv[:, :num_rotated_heads], cos.unsqueeze(1), sin.unsqueeze(1))
    return qk, qkv[:, num_rotated_heads:]


def attention_out_and_mlp(
    hidden: torch.Tensor,
    attention: torch.Tensor,
    layer: LayerWeights,
    next_norm: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """The torch op set's rest of a layer: output projection, residual add + RMSNorm, SwiGLU MLP,
    residual add + the next RMSNorm. `hidden` (the residual stream) is updated in place. The torch
    op set's weights are dense tensors (quantized ones take the other path)."""
    o, gate_up, down = (cast(torch.Tensor, w) for w in (layer.o, layer.gate_up, layer.down))
    hidden.add_(F.linear(attention, o, layer.o_bias))
    x = rms_norm(hidden, layer.post_norm, eps)
    gate, up = F.linear(x, gate_up, layer.gate_up_bias).chunk(2, dim=-1)
    hidden.add_(F.linear(F.silu(gate) * up, down, layer.down_bias))
    return rms_norm(hidden, next_norm, eps)


class Transformer:
    """Weights in Hugging Face layout, fused where that saves matmuls.

    quantization: `none`, `int8` or `int4` (`int4_group_size` input features a group) for the
    layers' linear weights; the LM head is int8 under either (services/worker/quant.py)."""

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, Any],
        max_context: int,
        block_size: int,
        native_kernels: bool = False,
        packed_gemm: bool = False,
        compile: bool = False,
        quantization: str = "none",
        int4_group_size: int = 32,
    ) -> None:
        self.config = config
        self.block_size = block_size
        self.native = native_kernels
        self.is_torch_ops = not native_kernels and not packed_gemm and quantization == "none"
        if compile and not self.is_torch_ops:
            raise ValueError(
                "compile needs the torch op set (no native kernels, no packed GEMMs, no "
                "quantization)"
            )
        # The torch op set's dense parts; attention and the cache writes stay eager (their
        # shapes and Python change with every step's mix of prefills and decodes). Shapes are
        # specialised on first use, then made dynamic in the token count when another comes.
        self.rotate_qk = torch.compile(rotate_qk, fullgraph=True) if compile else rotate_qk
        self.attention_out_and_mlp = (
            torch.compile(attention_out_and_mlp, fullgraph=True)
            if compile
            else attention_out_and_mlp
        )
        self.embed = weights["model.embed_tokens.weight"]
        head = (
            self.embed if config.tie_word_embeddings else weights.get("lm_head.weight", self.embed)
        )
        self.lm_head: LinearWeight = head
        self.final_norm = weights["model.norm.weight"]
        self.layers = [_layer_weights(weights, i) for i in range(config.num_layers)]
        # x @ W.T: F.linear, oneDNN with every weight packed once here (CPU), or quantized.
        self.linear: Callable[[torch.Tensor, Any, torch.Tensor | None], torch.Tensor]
        self.linear = F.linear
        if quantization != "none":
            self._quantize(quantization, int4_group_size, head)
        elif packed_gemm:
            self.linear = kernels.packed_linear
            # A packed copy; the embedding lookup keeps the plain one (tied: two copies).
            self.lm_head = kernels.pack_linear_weight(head)
            for layer in self.layers:
                for name in LINEAR_NAMES:
                    setattr(layer, name, kernels.pack_linear_weight(getattr(layer, name)))
        self.scale = config.head_dim**-0.5
        freqs = (
            torch.arange(max_context, dtype=torch.float32)[:, None] * rope_inv_freq(config)[None]
        )
        angles = torch.cat((freqs, freqs), dim=-1).to(self.embed.device)
        self.cos = angles.cos().to(self.embed.dtype)
        self.sin = angles.sin().to(self.embed.dtype)

    def _quantize(self, method: str, int4_group_size: int, head: torch.Tensor) -> None:
        """Every layer's linear weights packed for `method`'s kernel, and the LM head for int8:
        llama.cpp's 4-bit files keep their output matrix at 8 bits too (smollm2's Q4_1 file: the
        tied embedding is Q8_0), and the tied head is about a fifth of a small model's bytes."""
        device, dtype = self.embed.device, self.embed.dtype
        self.linear = quant.linear
        for index, layer in enumerate(self.layers):
            for name in LINEAR_NAMES:
                weight = quant.quantize_linear(
                    f"layer {index}'s {name} projection",
                    getattr(layer, name),
                    method,
                    int4_group_size,
                    dtype,
                    device,
                )
                setattr(layer, name, weight)
        self.lm_head = quant.quantize_linear(
            "the LM head", head, "int8", int4_group_size, dtype, device
        )

    def forward(self, batch: StepBatch, kv_cache: KVCache) -> torch.Tensor:
        """float32 logits of the batch's sampled rows, [num_sampled, vocab]."""
        hidden = F.embedding(batch.token_ids, self.embed)
        # index_select, not t[idx]: advanced indexing is several times slower on CPU.
        step = StepTensors(
            batch=batch,
            kv_cache=kv_cache,
            cos=self.cos.index_select(0, batch.positions),
            sin=self.sin.index_select(0, batch.positions),
            decode_bias=None if self.native else self._decode_bias(batch, hidden.dtype),
        )
        # `hidden` is the residual stream, updated in place; each norm follows its residual add.
        x = self._norm(hidden, self.layers[0].input_norm)
        for index, layer in enumerate(self.layers):
            is_last = index + 1 == len(self.layers)
            next_norm = self.final_norm if is_last else self.layers[index + 1].input_norm
            attention = self._attention(x, layer, step, index)
            if self.is_torch_ops:
                x = self.attention_out_and_mlp(
                    hidden, attention, layer, next_norm, self.config.rms_norm_eps
                )
                continue
            x = self._add_norm(
                hidden, self.linear(attention, layer.o, layer.o_bias), layer.post_norm
            )
            gate_up = self.linear(x, layer.gate_up, layer.gate_up_bias)
            mlp = self.linear(self._silu_and_mul(gate_up), layer.down, layer.down_bias)
            x = self._add_norm(hidden, mlp, next_norm)
        return self.linear(x.index_select(0, batch.sample_rows), self.lm_head, None).float()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.native:
            return kernels.rms_norm(x, weight, self.config.rms_norm_eps)
        return rms_norm(x, weight, self.config.rms_norm_eps)

    def _add_norm(
        self, hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """hidden += delta (in place), then RMSNorm of the result."""
        if self.native:
            return kernels.add_rms_norm_(hidden, delta, weight, self.config.rms_norm_eps)
        hidden.add_(delta)
        return rms_norm(hidden, weight, self.config.rms_norm_eps)

    def _silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.native:
            return kernels.silu_and_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def _attention(
        self, x: torch.Tensor, layer: LayerWeights, step: StepTensors, index: int
    ) -> torch.Tensor:
        num_tokens, head_dim = x.shape[0], self.config.head_dim
        num_heads, num_kv_heads = self.config.num_heads, self.config.num_kv_heads
        batch = step.batch
        k_cache, v_cache = step.kv_cache.layer(index)
        if not self.native:
            qkv = self.linear(x, layer.qkv, layer.qkv_bias)
            qk, v = self.rotate_qk(qkv, step.cos, step.sin, num_heads + num_kv_heads, head_dim)
            q, k = qk.split([num_heads, num_kv_heads], dim=1)
            k_cache.index_copy_(1, batch.slot_mapping, k.transpose(0, 1))
            v_cache.index_copy_(1, batch.slot_mapping, v.transpose(0, 1))
        else:  # q and k rotated in place, k and v written to the cache: one kernel
            qkv = self.linear(x, layer.qkv, layer.qkv_bias)
            kernels.rope_and_cache_(
                qkv,
                step.cos,
                step.sin,
                k_cache,
                v_cache,
                batch.slot_mapping,
                num_heads,
                num_kv_heads,
            )
            qkv = qkv.view(num_tokens, -1, head_dim)
            v = qkv[:, num_heads + num_kv_heads :]
            q, k = qkv[:, :num_heads], qkv[:, num_heads : num_heads + num_kv_heads]
        if not batch.prefills:  # a pure decode step needs no output buffer to assemble
            return self._decode_attention(q, k_cache, v_cache, step).reshape(num_tokens, -1)
        out = torch.empty_like(q)
        if batch.num_decodes:
            out[: batch.num_decodes] = self._decode_attention(q, k_cache, v_cache, step)
        for segment in batch.prefills:
            out[segment.start : segment.end] = self._prefill_attention(
                q, k, v, k_cache, v_cache, segment
            )
        return out.view(num_tokens, -1)

    def _decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        step: StepTensors,
    ) -> torch.Tensor:
        """Single-token queries against their cached context. Native: read in place through the
        block tables. Torch: blocks gathered, then batched matmuls over (kv head, sequence),
        cheaper than SDPA's kernels for one query row per sequence."""
        batch, decode_bias = step.batch, step.decode_bias
        assert batch.decode_blocks is not None and batch.decode_lens is not None
        num_seqs = batch.num_decodes
        if self.native:
            return kernels.paged_decode_attention(
                q[:num_seqs],
                k_cache,
                v_cache,
                batch.decode_blocks.view(num_seqs, -1),
                batch.decode_lens,
                self.block_size,
                self.scale,
            )
        assert decode_bias is not None
        num_kv_heads, _, head_dim = k_cache.shape
        group = self.config.num_heads // num_kv_heads
        block_shape = (num_kv_heads, -1, self.block_size, head_dim)
        # [KVH, B * blocks, block_size, D] -> [KVH * B, L, D]
        keys = k_cache.view(block_shape).index_select(1, batch.decode_blocks)
        keys = keys.view(num_kv_heads * num_seqs, -1, head_dim)
        values = v_cache.view(block_shape).index_select(1, batch.decode_blocks)
        values = values.view(num_kv_heads * num_seqs, -1, head_dim)
        queries = q[:num_seqs].view(num_seqs, num_kv_heads, group, head_dim).transpose(0, 1)
        queries = queries.reshape(num_kv_heads * num_seqs, group, head_dim)
        scores = torch.baddbmm(decode_bias, queries, keys.transpose(1, 2), alpha=self.scale)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
        out = torch.bmm(probs, values).view(num_kv_heads, num_seqs, group, head_dim)
        return out.transpose(0, 1).reshape(num_seqs, -1, head_dim)

    def _decode_bias(self, batch: StepBatch, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive mask (0 or -inf) per (kv head, sequence) row, built once per step: whole
        blocks are gathered (a few large copies rather than one per token), so keys past a
        sequence's length are masked out."""
        if batch.decode_blocks is None or batch.decode_lens is None:
            return None
        num_seqs, lens = batch.num_decodes, batch.decode_lens
        num_keys = batch.decode_blocks.numel() // num_seqs * self.block_size
        is_past = torch.arange(num_keys, device=lens.device)[None, :] >= lens[:, None]
        bias = torch.zeros(is_past.shape, dtype=dtype, device=lens.device)
        bias.masked_fill_(is_past, float("-inf"))
        num_kv_heads = self.config.num_kv_heads
        return bias.expand(num_kv_heads, -1, -1).reshape(num_kv_heads * num_seqs, 1, -1)

    def _prefill_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        segment: PrefillSegment,
    ) -> torch.Tensor:
        # 4-D inputs: with 3-D ones SDPA falls back to its slow math kernel on CPU.
        q = q[segment.start : segment.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        if segment.context_slots is None:  # nothing cached: the chunk attends to itself
            keys = k[segment.start : segment.end].transpose(0, 1).unsqueeze(0)
            values = v[segment.start : segment.end].transpose(0, 1).unsqueeze(0)
            out = F.scaled_dot_product_attention(
                q, keys, values, is_causal=True, scale=self.scale, enable_gqa=True
            )
            return out[0].transpose(0, 1)
        keys = k_cache.index_select(1, segment.context_slots).unsqueeze(0)  # [1, KVH, ctx, D]
        values = v_cache.index_select(1, segment.context_slots).unsqueeze(0)
        num_new, num_context = segment.end - segment.start, keys.shape[2]
        query_pos = torch.arange(num_new, device=q.device)[:, None] + segment.num_computed
        mask = torch.arange(num_context, device=q.device)[None, :] <= query_pos
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=True
        )
        return out[0].transpose(0, 1)


def _layer_weights(weights: dict[str, Any], i: int) -> LayerWeights:
    p = f"model.layers.{i}."
    attn, mlp = p + "self_attn.", p + "mlp."
    return LayerWeights(
        input_norm=weights[p + "input_layernorm.weight"],
        qkv=_stack(weights, [attn + n + "_proj.weight" for n in "qkv"]),
        qkv_bias=_stack_optional(weights, [attn + n + "_proj.bias" for n in "qkv"]),
        o=weights[attn + "o_proj.weight"],
        o_bias=weights.get(attn + "o_proj.bias"),
        post_norm=weights[p + "post_attention_layernorm.weight"],
        gate_up=_stack(weights, [mlp + "gate_proj.weight", mlp + "up_proj.weight"]),
        gate_up_bias=_stack_optional(weights, [mlp + "gate_proj.bias", mlp + "up_proj.bias"]),
        down=weights[mlp + "down_proj.weight"],
        down_bias=weights.get(mlp + "down_proj.bias"),
    )


def _stack(weights: dict[str, Any], names: list[str]) -> LinearWeight:
    # pop: the separate tensors are freed once stacked, so memory holds one copy of the model.
    parts = [weights.pop(name) for name in names]
    if isinstance(parts[0], GroupQuantized):
        return cat_rows(parts)
    return torch.cat(parts, dim=0)


def _stack_optional(weights: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor | None:
    if names[0] not in weights:
        return None
    return torch.cat([weights.pop(name) for name in names], dim=0)
