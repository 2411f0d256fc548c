"""Model shape and hyper-parameters, parsed from a Hugging Face `config.json`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_ARCH_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or options are not something the engine implements."""


@dataclass(slots=True, frozen=True)
class RopeScaling:
    """The `llama3` frequency-dependent rope scaling (Llama 3.1 / 3.2)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(slots=True, frozen=True)
class ModelConfig:
    """A decoder-only Llama-family transformer (Llama, Qwen2, Mistral)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    rope_scaling: RopeScaling | None = None
    has_qkv_bias: bool = False  # Qwen2, or Llama with attention_bias
    has_o_bias: bool = False  # Llama with attention_bias only
    has_mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral: attention never looks further back
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    torch_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {self.architecture!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.num_heads % self.num_kv_heads != 0:
            raise UnsupportedModelError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise UnsupportedModelError(
                f"head_dim must be even for rotary embeddings, got {self.head_dim}"
            )

    @property
    def max_context(self) -> int:
        """Longest sequence the engine serves: positions beyond a sliding window are not
        implemented, so the window caps the context."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @property
    def num_params(self) -> int:
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        norms = 2 * self.hidden_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attn + mlp + norms) + embed + self.hidden_size

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Parse a `config.json` dict (old `rope_scaling` and new `rope_parameters` layouts)."""
        architecture = _architecture(hf)
        num_heads = int(hf["num_attention_heads"])
        head_dim = hf.get("head_dim") or int(hf["hidden_size"]) // num_heads
        rope = _rope_parameters(hf)
        attention_bias = bool(hf.get("attention_bias", False))
        is_qwen2 = architecture == "Qwen2ForCausalLM"
        sliding_window = (
            hf.get("sliding_window") if _uses_sliding_window(hf, architecture) else None
        )
        return cls(
            architecture=architecture,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_scaling=_rope_scaling(rope, int(hf.get("max_position_embeddings", 2048))),
            has_qkv_bias=is_qwen2 or attention_bias,
            has_o_bias=attention_bias and not is_qwen2,
            has_mlp_bias=bool(hf.get("mlp_bias", False)),
            sliding_window=int(sliding_window) if sliding_window else None,
            eos_token_ids=_token_ids(hf.get("eos_token_id")),
            bos_token_id=hf.get("bos_token_id"),
            torch_dtype=hf.get("torch_dtype") or hf.get("dtype"),
        )


def _architecture(hf: dict[str, Any]) -> str:
    names = hf.get("architectures") or []
    if names:
        return str(names[0])
    model_type = hf.get("model_type", "")
    if model_type not in _ARCH_BY_MODEL_TYPE:
        raise UnsupportedModelError(
            f"config.json has no 'architectures' and model_type {model_type!r} is not one of "
            f"{', '.join(_ARCH_BY_MODEL_TYPE)}"
        )
    return _ARCH_BY_MODEL_TYPE[model_type]


def _uses_sliding_window(hf: dict[str, Any], architecture: str) -> bool:
    if architecture == "Qwen2ForCausalLM":
        return bool(hf.get("use_sliding_window", False))
    return architecture == "MistralForCausalLM"


def _rope_parameters(hf: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 writes `rope_parameters` (with rope_theta inside); older files write
    `rope_theta` and an optional `rope_scaling`."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    return dict(params)


def _rope_scaling(rope: dict[str, Any], max_position_embeddings: int) -> RopeScaling | None:
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type == "default":
        return None
    if rope_type != "llama3":
        raise UnsupportedModelError(
            f"rope scaling type {rope_type!r} is not supported; supported: default, llama3"
        )
    return RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(
            rope.get("original_max_position_embeddings", max_position_embeddings)
        ),
    )


def _token_ids(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)
