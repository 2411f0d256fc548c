"""Model references, configs, presets and the shipped tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from services.models import ModelConfig, ModelNotFoundError, UnsupportedModelError, resolve_model
from services.models.assets.build_tokenizer import BOS_TOKEN, EOS_TOKEN, build_tokenizer_json
from services.models.checkpoint import load_source_weights, preset_weights
from services.models.presets import PRESETS
from tests.checkpoints import write_tiny_checkpoint


def test_a_hub_id_is_not_downloaded_and_the_error_says_so() -> None:
    with pytest.raises(ModelNotFoundError, match="downloads nothing") as err:
        resolve_model("meta-llama/Llama-3.2-1B")
    assert "meta-llama/Llama-3.2-1B" in str(err.value) and "tiny" in str(err.value)


@pytest.mark.parametrize("removed", ["config.json", "tokenizer.json", "model.safetensors"])
def test_an_incomplete_directory_names_the_missing_file(tmp_path: Path, removed: str) -> None:
    directory = write_tiny_checkpoint(tmp_path / "ckpt", "llama")
    (directory / removed).unlink()
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(str(directory))
    shown = "*.safetensors" if removed.endswith(".safetensors") else removed
    assert shown in str(err.value)
    assert "downloads nothing" in str(err.value)


def test_presets_resolve_without_loading_weights() -> None:
    source = resolve_model("llama-1b")
    assert source.is_preset and source.checkpoint_dir is None
    assert source.vocab_size == 128256 and source.config.num_layers == 16
    assert 1.2e9 < source.config.num_params < 1.3e9
    assert source.tokenizer_path.is_file()
    assert source.eos_token_ids == [1] and source.bos_token_id == 0


def test_same_preset_and_seed_give_identical_weights() -> None:
    config, cpu = PRESETS["tiny"], torch.device("cpu")
    first = preset_weights(config, 0, torch.float32, cpu)
    again = preset_weights(config, 0, torch.float32, cpu)
    other = preset_weights(config, 1, torch.float32, cpu)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_a_sharded_checkpoint_loads_every_tensor(tmp_path: Path) -> None:
    single = write_tiny_checkpoint(tmp_path / "single", "qwen2")
    sharded = write_tiny_checkpoint(tmp_path / "sharded", "qwen2", max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    cpu = torch.device("cpu")
    want = load_source_weights(resolve_model(str(single)), 0, torch.float32, cpu)
    got = load_source_weights(resolve_model(str(sharded)), 0, torch.float32, cpu)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[name], got[name]) for name in want)


def test_configs_parse_old_and_new_rope_layouts_and_eos_lists() -> None:
    base = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "eos_token_id": [5, 6],
    }
    old = ModelConfig.from_hf(
        base
        | {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        }
    )
    new = ModelConfig.from_hf(
        base
        | {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            }
        }
    )
    assert old == new
    assert old.rope_theta == 500000.0 and old.rope_scaling is not None
    assert old.eos_token_ids == (5, 6) and old.head_dim == 16


def test_mistral_sliding_window_caps_the_context() -> None:
    config = ModelConfig.from_hf(
        {
            "model_type": "mistral",
            "vocab_size": 100,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 32768,
            "sliding_window": 4096,
        }
    )
    assert config.architecture == "MistralForCausalLM" and config.max_context == 4096


def test_unsupported_architectures_and_rope_types_are_named() -> None:
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        ModelConfig.from_hf(
            {
                "architectures": ["GPT2LMHeadModel"],
                "vocab_size": 1,
                "hidden_size": 8,
                "intermediate_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 1,
            }
        )
    with pytest.raises(UnsupportedModelError, match="yarn"):
        ModelConfig.from_hf(
            {
                "model_type": "llama",
                "vocab_size": 1,
                "hidden_size": 8,
                "intermediate_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 1,
                "rope_scaling": {"rope_type": "yarn"},
            }
        )


def test_the_shipped_tokenizer_is_what_the_corpus_builds() -> None:
    shipped = resolve_model("tiny").tokenizer_path.read_text(encoding="utf-8")
    assert build_tokenizer_json() == shipped


def test_the_preset_tokenizer_round_trips_text_and_adds_bos() -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(resolve_model("tiny").tokenizer_path))
    assert tokenizer.get_vocab_size() == PRESETS["tiny"].vocab_size
    assert tokenizer.token_to_id(BOS_TOKEN) == 0 and tokenizer.token_to_id(EOS_TOKEN) == 1
    text = "def main() -> int:\n    return 0  # café ✓"
    ids = tokenizer.encode(text).ids
    assert ids[0] == 0 and len(ids) < len(text.encode())
    assert tokenizer.decode(ids) == text


def test_checkpoint_config_json_is_read(tmp_path: Path) -> None:
    directory = write_tiny_checkpoint(tmp_path / "tied", "llama-tied-llama3")
    source = resolve_model(str(directory))
    assert not source.is_preset and source.checkpoint_dir == directory
    assert source.config.tie_word_embeddings and source.config.rope_scaling is not None
    assert (
        source.max_context
        == json.loads((directory / "config.json").read_text())["max_position_embeddings"]
    )
    shutil.rmtree(directory)
