"""Weights: a local Hugging Face checkpoint's safetensors (single file or sharded), or a
preset's seeded random tensors. Imports torch, so `resolve_model` stays in a module without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from services.models.config import ModelConfig
from services.models.source import ModelSource

_INIT_STD = 0.02

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def safetensors_files(checkpoint_dir: Path) -> list[Path]:
    """The weight files of a checkpoint: the shards named by the index, else every
    `*.safetensors` in the directory."""
    index_path = checkpoint_dir / INDEX_FILE
    if index_path.exists():
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        return [checkpoint_dir / name for name in sorted(set(weight_map.values()))]
    return sorted(checkpoint_dir.glob("*.safetensors"))


def load_weights(
    checkpoint_dir: Path, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, converted to `dtype` on `device`, one tensor at a time
    so peak host memory stays near one copy of the model."""
    weights: dict[str, torch.Tensor] = {}
    for path in safetensors_files(checkpoint_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                weights[name] = f.get_tensor(name).to(device=device, dtype=dtype)
    return weights


def preset_weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face tensor names and shapes, in the fixed order the weights are drawn."""
    h, kv_dim = config.hidden_size, config.num_kv_heads * config.head_dim
    q_dim, inter = config.num_heads * config.head_dim, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, h)}
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (q_dim, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv_dim, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv_dim, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, q_dim)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
    shapes["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    return shapes


def preset_weights(
    config: ModelConfig, seed: int, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Seeded random weights: drawn on the CPU with one generator, in a fixed order, so the same
    preset and seed give the same weights on every machine; each tensor then moves to `device`."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, shape in preset_weight_shapes(config).items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape)
        else:
            tensor = torch.empty(shape).normal_(0.0, _INIT_STD, generator=generator)
        weights[name] = tensor.to(device=device, dtype=dtype)
    return weights


def load_source_weights(
    source: ModelSource,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    int4_group_size: int = 0,
) -> dict[str, Any]:
    """Hugging Face-named weights of a resolved model: seeded for a preset, read otherwise.
    `int4_group_size`: a GGUF's linear weights stored as 4-bit groups of this size come back as
    `GroupQuantized` (host memory), not dequantized; 0 = every tensor dense."""
    if source.gguf_path is not None:
        from services.models.gguf import load_gguf_weights

        return load_gguf_weights(source.gguf_path, source.config, dtype, device, int4_group_size)
    if source.checkpoint_dir is None:
        return preset_weights(source.config, seed, dtype, device)
    return load_weights(source.checkpoint_dir, dtype, device)
