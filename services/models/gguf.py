"""A local Llama-family GGUF file as a hopscope model: config, tokenizer and chat template from
its metadata, weights dequantized to float with the `gguf` package (`pip install gguf`).

Metadata reading is cheap (the file is memory-mapped; the tokenizer service calls it too); only
`load_gguf_weights` dequantizes, and only it imports torch. Under `--quantization int4` at group
size 32 a Q4_1 projection is not dequantized: its blocks come back as 4-bit groups
(services/models/quantized.py), packed for the kernels as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from services.models.config import ModelConfig, UnsupportedModelError

if TYPE_CHECKING:
    import torch

    from services.models.quantized import GroupQuantized

GGUF_SUFFIX = ".gguf"
_CONTROL_TOKEN = 3  # llama.cpp's token type for special tokens (<|im_start|>, ...)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GGUF tensor name (after `blk.N.`) -> Hugging Face name (after `model.layers.N.`)
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
Q4_1_GROUP_SIZE = 32  # a Q4_1 block: float16 scale, float16 minimum, 32 four-bit codes
_TOP_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class GGUFError(ValueError):
    """The file is not a GGUF hopscope can serve; the message says what is missing."""


@dataclass(slots=True, frozen=True)
class GGUFModel:
    """What a GGUF file's metadata says, before any weight is dequantized."""

    path: Path
    config: ModelConfig
    chat_template: str | None
    tokens: list[str]
    merges: list[str]
    token_types: list[int]
    pre_tokenizer: str
    add_bos_token: bool

    def build_tokenizer(self) -> Tokenizer:
        return _build_tokenizer(self)


def _reader(path: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise GGUFError("reading GGUF files needs the `gguf` package: pip install gguf") from exc
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise GGUFError(f"{path} is not a readable GGUF file: {exc}") from exc


@lru_cache(maxsize=4)
def read_gguf(path: Path) -> GGUFModel:
    """Parse a GGUF file's metadata (Llama architecture, gpt2-style BPE vocabulary)."""
    reader = _reader(path)
    meta = {name: field.contents() for name, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UnsupportedModelError(
            f"{path.name}: GGUF architecture {arch!r} is not supported; supported: llama "
            "(Llama, SmolLM, Mistral-style files)"
        )
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise UnsupportedModelError(
            f"{path.name}: tokenizer {meta.get('tokenizer.ggml.model')!r} is not supported; "
            "supported: gpt2 (byte-level BPE with merges)"
        )
    tensor_names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in tensor_names:
        raise UnsupportedModelError(f"{path.name}: rope frequency factors are not supported")
    return GGUFModel(
        path=path,
        config=_config(meta, tie_word_embeddings="output.weight" not in tensor_names),
        chat_template=meta.get("tokenizer.chat_template"),
        tokens=list(meta["tokenizer.ggml.tokens"]),
        merges=list(meta.get("tokenizer.ggml.merges") or []),
        token_types=list(meta.get("tokenizer.ggml.token_type") or []),
        pre_tokenizer=str(meta.get("tokenizer.ggml.pre", "")),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
    )


def _config(meta: dict[str, Any], tie_word_embeddings: bool) -> ModelConfig:
    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise GGUFError(f"GGUF metadata has no llama.{key}")
        return value

    hidden, num_heads = int(get("embedding_length")), int(get("attention.head_count"))
    eos = meta.get("tokenizer.ggml.eos_token_id")
    vocab_size = meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])
    return ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=num_heads,
        num_kv_heads=int(get("attention.head_count_kv", num_heads)),
        head_dim=int(get("attention.key_length", hidden // num_heads)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_position_embeddings=int(get("context_length", 2048)),
        tie_word_embeddings=tie_word_embeddings,
        eos_token_ids=(int(eos),) if eos is not None else (),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        torch_dtype="float32",
    )


def _build_tokenizer(model: GGUFModel) -> Tokenizer:
    """The vocabulary and merges as a `tokenizers` byte-level BPE, control tokens kept whole."""
    vocab = {token: index for index, token in enumerate(model.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in model.merges]
    tokenizer = Tokenizer(models.BPE(vocab, merges, ignore_merges=False))  # type: ignore[arg-type]
    tokenizer.pre_tokenizer = _pre_tokenizer(model.pre_tokenizer)
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        AddedToken(token, special=True, normalized=False)
        for token, kind in zip(model.tokens, model.token_types, strict=False)
        if kind == _CONTROL_TOKEN
    ]
    tokenizer.add_special_tokens(special)
    bos = model.config.bos_token_id
    if model.add_bos_token and bos is not None:
        bos_token = model.tokens[bos]
        tokenizer.post_processor = processors.TemplateProcessing(  # type: ignore[call-arg]
            single=f"{bos_token} $A", special_tokens=[(bos_token, bos)]
        )
    return tokenizer


def _pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    """How text is split before the merges, by llama.cpp's `tokenizer.ggml.pre` name."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name == "smollm":  # SmolLM's own tokenizer.json: every digit on its own, then GPT-2's
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    return byte_level


def load_gguf_weights(
    path: Path,
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    int4_group_size: int = 0,
) -> dict[str, torch.Tensor | GroupQuantized]:
    """Every tensor dequantized and renamed to Hugging Face names, converted one at a time.
    With `int4_group_size` 32, Q4_1 projections come back as `GroupQuantized` (host memory)."""
    import torch
    from gguf import GGMLQuantizationType, dequantize

    weights: dict[str, torch.Tensor | GroupQuantized] = {}
    for tensor in _reader(path).tensors:
        name = _hf_name(tensor.name)
        if name is None:
            continue
        shape = [int(n) for n in reversed(tensor.shape)]
        if (
            int4_group_size == Q4_1_GROUP_SIZE
            and tensor.tensor_type == GGMLQuantizationType.Q4_1
            and name.endswith("_proj.weight")
        ):
            weights[name] = _q4_1_groups(tensor.data, shape, _rotary_heads(name, config))
            continue
        array = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        heads = _rotary_heads(name, config)
        if heads:
            array = _unpermute_rotary(array, heads)
        weights[name] = torch.from_numpy(array.copy()).to(device=device, dtype=dtype)
    return weights


def _rotary_heads(name: str, config: ModelConfig) -> int:
    """Heads whose rotary halves llama.cpp interleaved (Q and K projections), else 0."""
    if name.endswith("q_proj.weight"):
        return config.num_heads
    if name.endswith("k_proj.weight"):
        return config.num_kv_heads
    return 0


def _q4_1_groups(data: Any, shape: list[int], rotary_heads: int) -> GroupQuantized:
    """A Q4_1 tensor's blocks as 4-bit groups: block = float16 scale d, float16 minimum m,
    16 bytes whose low nibbles are codes 0..15 and high nibbles codes 16..31; w = code * d + m
    (gguf's own dequantize computes the same)."""
    import numpy as np
    import torch

    from services.models.quantized import GroupQuantized

    rows, cols = shape
    blocks = np.asarray(data, dtype=np.uint8).reshape(rows, cols // Q4_1_GROUP_SIZE, 20)
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    mins = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    packed = blocks[..., 4:]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).reshape(rows, cols)
    if rotary_heads:
        codes, scales, mins = (_unpermute_rotary(a, rotary_heads) for a in (codes, scales, mins))
    return GroupQuantized(
        codes=torch.from_numpy(np.ascontiguousarray(codes)),
        scales=torch.from_numpy(np.ascontiguousarray(scales)),
        mins=torch.from_numpy(np.ascontiguousarray(mins)),
    )


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TOP_TENSORS:
        return _TOP_TENSORS[gguf_name]
    prefix, _, rest = gguf_name.partition(".")
    if prefix == "blk":
        layer, _, tensor = rest.partition(".")
        if tensor in _LAYER_TENSORS:
            return f"model.layers.{layer}.{_LAYER_TENSORS[tensor]}"
    return None


def _unpermute_rotary(array: Any, num_heads: int) -> Any:
    """llama.cpp's converter interleaves each head's rotary halves of Q and K; undo it so the
    rows are in Hugging Face's half-split order (what transformers does on load too)."""
    rows = array.shape[0]
    half = rows // num_heads // 2
    return array.reshape(num_heads, half, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
