"""Tiny random Hugging Face checkpoints for parity tests, and a minimal step driver.

`write_tiny_checkpoint(dir, kind)` saves a model with transformers' `save_pretrained` and copies
the presets' tokenizer.json beside it, so the directory is a complete local checkpoint that
`resolve_model` accepts. Kinds: "llama" (untied), "llama-tied-llama3" (tied embeddings, llama3
rope scaling), "qwen2" (non-zero q/k/v biases).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.common.types import SamplingParams, SeqStep
from services.models.presets import PRESET_TOKENIZER_PATH

CHECKPOINT_KINDS = ("llama", "llama-tied-llama3", "qwen2")
_SHAPE: dict[str, Any] = {
    "vocab_size": 4096,  # the shipped tokenizer's vocabulary
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "bos_token_id": 0,
    "eos_token_id": 1,
    # Wide weights spread the logits, so greedy choices are never near-ties.
    "initializer_range": 0.2,
}


def make_hf_model(kind: str, seed: int = 0) -> Any:
    """A random transformers model of the given kind, in float32."""
    import transformers  # test/benchmark dependency only

    torch.manual_seed(seed)
    model: Any
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_SHAPE))
    elif kind == "llama-tied-llama3":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        config = transformers.LlamaConfig(**_SHAPE, tie_word_embeddings=True, rope_parameters=rope)
        model = transformers.LlamaForCausalLM(config)
    elif kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_SHAPE))
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0.0, 0.5)
    else:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose from {CHECKPOINT_KINDS}")
    return model.float().eval()


def write_tiny_checkpoint(
    directory: Path, kind: str, seed: int = 0, max_shard_size: str | None = None
) -> Path:
    """Save a tiny random checkpoint (config.json, safetensors, tokenizer.json) into `directory`."""
    model = make_hf_model(kind, seed)
    directory.mkdir(parents=True, exist_ok=True)
    if max_shard_size is None:
        model.save_pretrained(directory)
    else:
        model.save_pretrained(directory, max_shard_size=max_shard_size)
    shutil.copyfile(PRESET_TOKENIZER_PATH, directory / "tokenizer.json")
    return directory


@dataclass
class BlockPool:
    """A trivial free list; freed blocks are handed out again first (stale KV inside them)."""

    free: list[int]

    def allocate(self, count: int) -> list[int]:
        assert len(self.free) >= count, "test block pool exhausted"
        return [self.free.pop() for _ in range(count)]

    def release(self, blocks: list[int]) -> None:
        self.free.extend(blocks)


@dataclass
class DriverSeq:
    seq_id: int
    prompt: list[int]
    sampling: SamplingParams
    output: list[int] = field(default_factory=list)
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output


def generate(
    engine: Any,
    prompts: list[list[int]],
    num_new_tokens: int,
    pool: BlockPool,
    sampling: list[SamplingParams] | None = None,
    chunk_size: int | None = None,
    free_at_end: bool = True,
) -> list[list[int]]:
    """Run prompts together, continuous-batching style: prefill chunks of up to `chunk_size`
    tokens mixed with decodes of the sequences already generating. Returns new tokens."""
    block_size: int = engine.info.block_size
    params = sampling or [SamplingParams()] * len(prompts)
    seqs = [DriverSeq(i, list(p), params[i]) for i, p in enumerate(prompts)]
    while any(len(s.output) < num_new_tokens for s in seqs):
        steps = [
            _next_step(s, chunk_size, block_size, pool)
            for s in seqs
            if len(s.output) < num_new_tokens
        ]
        out = engine.step(steps)
        for step in steps:
            seq = seqs[step.seq_id]
            seq.num_computed = step.num_tokens_after
            if step.sampling is not None:
                seq.output.append(out.sampled[step.seq_id])
    if free_at_end:
        for seq in seqs:
            pool.release(seq.block_table)
    return [s.output for s in seqs]


def _next_step(seq: DriverSeq, chunk_size: int | None, block_size: int, pool: BlockPool) -> SeqStep:
    remaining = seq.tokens[seq.num_computed :]
    chunk = remaining[:chunk_size] if chunk_size else remaining
    num_after = seq.num_computed + len(chunk)
    num_blocks = -(-num_after // block_size)
    seq.block_table += pool.allocate(num_blocks - len(seq.block_table))
    is_last_chunk = len(chunk) == len(remaining)
    return SeqStep(
        seq.seq_id,
        chunk,
        seq.num_computed,
        list(seq.block_table),
        seq.sampling if is_last_chunk else None,
    )
