"""The packaged SmolLM2-135M-Instruct GGUF through hopscope's loader gives transformers' greedy
tokens (transformers loading the same file with `gguf_file=`), its tokenizer and its template."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from services.config import HopscopeConfig
from services.models import ModelNotFoundError, resolve_model
from services.models.source import ModelSource
from services.worker.engine import Engine
from services.worker.kv_cache import KVCacheTooSmallError
from tests.checkpoints import BlockPool, generate

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
MODEL = "smollm2-135m"
NUM_NEW_TOKENS = 8
TEXTS = ["The capital of France is", "def fibonacci(n):\n    ", "12345 ünïcödé  spaces\tand tabs"]


@pytest.fixture(scope="module")
def source() -> ModelSource:
    try:
        return resolve_model(MODEL)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def hf_tokenizer(source: ModelSource) -> Any:
    assert source.gguf_path is not None
    path = source.gguf_path
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_tokenizer_and_chat_template_match_transformers(
    source: ModelSource, hf_tokenizer: Any
) -> None:
    from services.models.chat_template import render_chat

    tokenizer = source.load_tokenizer()
    for text in TEXTS:
        assert tokenizer.encode(text).ids == hf_tokenizer.encode(text)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    want = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert source.chat_template is not None
    assert render_chat(source.chat_template, messages, add_generation_prompt=True) == want


def test_greedy_tokens_match_transformers_on_the_gguf(
    source: ModelSource, hf_tokenizer: Any
) -> None:
    assert source.gguf_path is not None
    path = source.gguf_path
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    prompts = [hf_tokenizer.encode(text) for text in TEXTS]
    expected = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        out = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=NUM_NEW_TOKENS,
            min_new_tokens=NUM_NEW_TOKENS,
            pad_token_id=2,
        )
        expected.append(out[0, len(prompt) :].tolist())
    del reference
    engine = Engine(HopscopeConfig.of(model=MODEL, max_model_len=256, kv_cache_mb=32))
    got = generate(engine, prompts, NUM_NEW_TOKENS, BlockPool(list(range(engine.info.num_blocks))))
    assert got == expected


def test_max_model_len_caps_the_context_and_the_refusal_names_the_flags(
    source: ModelSource,
) -> None:
    assert source.max_context == 4096  # the packaged default: fits the default 256 MiB
    as_file = resolve_model(str(source.gguf_path))  # `--model FILE.gguf`: the same model
    assert as_file.config == source.config and as_file.max_context == 8192
    assert resolve_model(MODEL, max_model_len=512).max_context == 512
    with pytest.raises(ValueError, match="--max-model-len 9000 exceeds"):
        resolve_model(MODEL, max_model_len=9000)
    with pytest.raises(KVCacheTooSmallError, match="--kv-cache-mb .* --max-model-len"):
        Engine(HopscopeConfig.of(model=MODEL, max_model_len=8192, kv_cache_mb=256))
