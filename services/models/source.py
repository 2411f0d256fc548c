"""`resolve_model`: a preset name or a local Hugging Face directory -> `ModelSource`.

Cheap by design (reads config.json only, imports no torch): the tokenizer service calls it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.models.config import ModelConfig
from services.models.presets import PRESET_MAX_CONTEXT, PRESET_TOKENIZER_PATH, PRESETS

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


class ModelNotFoundError(LookupError):
    """The model reference names no preset and no complete local checkpoint directory."""


@dataclass(slots=True, frozen=True)
class ModelSource:
    """Where a model comes from and what it is, before any weight is loaded."""

    name: str
    config: ModelConfig
    tokenizer_path: Path
    checkpoint_dir: Path | None  # None for presets: weights are drawn from a seed
    max_context: int

    @property
    def is_preset(self) -> bool:
        return self.checkpoint_dir is None

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.config.eos_token_ids)

    @property
    def bos_token_id(self) -> int | None:
        return self.config.bos_token_id


def resolve_model(ref: str) -> ModelSource:
    """A preset (`tiny`, `small`, `llama-1b`) or a local directory holding config.json,
    *.safetensors and tokenizer.json. Nothing is ever downloaded."""
    if ref in PRESETS:
        return ModelSource(
            name=ref,
            config=PRESETS[ref],
            tokenizer_path=PRESET_TOKENIZER_PATH,
            checkpoint_dir=None,
            max_context=PRESET_MAX_CONTEXT[ref],
        )
    directory = Path(ref).expanduser()
    if not directory.is_dir():
        raise ModelNotFoundError(
            f"model {ref!r} is neither a preset ({', '.join(PRESETS)}) nor a local directory; "
            "hopscope downloads nothing — download the checkpoint yourself (config.json, "
            "*.safetensors, tokenizer.json) and pass its directory"
        )
    _check_files(directory)
    config = ModelConfig.from_hf(json.loads((directory / CONFIG_FILE).read_text()))
    return ModelSource(
        name=directory.resolve().name,
        config=config,
        tokenizer_path=directory / TOKENIZER_FILE,
        checkpoint_dir=directory,
        max_context=config.max_context,
    )


def _check_files(directory: Path) -> None:
    missing = [name for name in (CONFIG_FILE, TOKENIZER_FILE) if not (directory / name).is_file()]
    if not any(directory.glob("*.safetensors")):
        missing.append("*.safetensors (weights)")
    if missing:
        raise ModelNotFoundError(
            f"model directory {str(directory)!r} is missing {', '.join(missing)}; "
            "hopscope downloads nothing — put the complete checkpoint there"
        )
