"""The front door's core: validation, encoding, incremental detokenization, stop strings."""

from __future__ import annotations

import math

import pytest

from services.common.errors import InvalidArgumentError
from services.models import resolve_model
from services.models.chat_template import render_chat
from services.tokenizer.core import (
    GenerateParams,
    IncrementalDetokenizer,
    StopMatcher,
    TokenizerCore,
)


@pytest.fixture(scope="module")
def core() -> TokenizerCore:
    source = resolve_model("tiny")
    return TokenizerCore(source.tokenizer_path, max_context=64, vocab_size=source.vocab_size)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        (GenerateParams(prompt=""), "prompt is empty"),
        (GenerateParams(prompt="hi", max_tokens=0), "max_tokens must be >= 1"),
        (GenerateParams(prompt="hi", max_tokens=1000), "exceeds the model's context"),
        (GenerateParams(prompt="hi " * 200), "context is 64"),
        (GenerateParams(prompt="hi", temperature=math.nan), "temperature"),
        (GenerateParams(prompt="hi", temperature=-0.5), "temperature"),
        (GenerateParams(prompt="hi", temperature=math.inf), "temperature"),
        (GenerateParams(prompt="hi", top_p=1.5), "top_p"),
        (GenerateParams(prompt="hi", top_p=-0.1), "top_p"),
        (GenerateParams(prompt="hi", top_k=-1), "top_k"),
        (GenerateParams(prompt="hi", stop=[""]), "stop strings"),
        (GenerateParams(prompt="hi", stop=["x"] * 17), "stop strings"),
        (GenerateParams(prompt_token_ids=[1, 999_999]), "outside the vocabulary"),
        (GenerateParams(prompt_token_ids=[-1]), "outside the vocabulary"),
    ],
)
def test_bad_input_names_the_field(
    core: TokenizerCore, params: GenerateParams, needle: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        core.prepare(params, "r1")


def test_prepare_encodes_and_defaults(core: TokenizerCore) -> None:
    prepared = core.prepare(GenerateParams(prompt="Hello world", max_tokens=4, top_p=0.0), "r1")
    assert prepared.prompt_token_ids == core.tokenizer.encode("Hello world").ids
    assert prepared.sampling.top_p == 1.0  # 0 means 1
    assert prepared.sampling.is_greedy
    seeded = core.prepare(GenerateParams(prompt="x", seed=42), "r2")
    assert seeded.sampling.seed == 42


def test_messages_are_rendered_with_the_models_chat_template(core: TokenizerCore) -> None:
    source = resolve_model("tiny")
    chat_core = TokenizerCore(source.tokenizer_path, 64, source.vocab_size, source.chat_template)
    messages = [{"role": "user", "content": "Hello"}]
    prepared = chat_core.prepare(GenerateParams(messages=messages, max_tokens=2), "r")
    rendered = render_chat(source.chat_template or "", messages, add_generation_prompt=True)
    assert "Hello" in rendered and rendered != "Hello"
    assert prepared.prompt_token_ids == chat_core.tokenizer.encode(rendered).ids
    with pytest.raises(InvalidArgumentError, match="`messages` or a prompt, not both"):
        chat_core.prepare(GenerateParams(prompt="x", messages=messages), "r")
    with pytest.raises(InvalidArgumentError, match="the model has no chat template"):
        core.prepare(GenerateParams(messages=messages), "r")  # built without a template


def test_token_ids_bypass_encoding(core: TokenizerCore) -> None:
    prepared = core.prepare(GenerateParams(prompt_token_ids=[5, 6, 7], max_tokens=2), "r")
    assert prepared.prompt_token_ids == [5, 6, 7]


def test_detokenizer_never_splits_a_utf8_character(core: TokenizerCore) -> None:
    text = "naïve café — 日本語 🙂 done"
    ids = core.tokenizer.encode(text, add_special_tokens=False).ids
    detok = IncrementalDetokenizer(core.tokenizer)
    deltas = [detok.push([t]) for t in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_detokenizer_skips_special_tokens(core: TokenizerCore) -> None:
    eos = resolve_model("tiny").eos_token_ids[0]
    ids = core.tokenizer.encode("the end", add_special_tokens=False).ids
    detok = IncrementalDetokenizer(core.tokenizer)
    assert "".join([detok.push(ids), detok.push([eos]), detok.flush()]) == "the end"


def test_stop_string_split_across_deltas_is_held_back() -> None:
    stop = StopMatcher(["END"])
    out = [stop.push("abc E"), stop.push("N"), stop.push("D tail")]
    assert "".join(out) == "abc "
    assert stop.is_stopped


def test_partial_stop_prefix_is_released_when_it_is_not_a_stop() -> None:
    stop = StopMatcher(["END"])
    assert stop.push("abc EN") == "abc "
    assert stop.push("x") == "ENx"
    assert not stop.is_stopped


def test_earliest_of_several_stop_strings_wins() -> None:
    stop = StopMatcher(["zz", "b"])
    assert stop.push("a b zz") == "a "


def test_an_oversize_prompt_is_refused_before_it_is_encoded(core: TokenizerCore) -> None:
    """The bound comes from the context: no prompt longer than this can fit it."""
    assert core.max_prompt_chars < 64 * 100
    with pytest.raises(InvalidArgumentError, match="characters; at most"):
        core.prepare(GenerateParams(prompt="🙂" * 999_999), "r1")
    with pytest.raises(InvalidArgumentError, match="context is 64"):
        core.prepare(GenerateParams(prompt_token_ids=[5] * 100_000), "r1")


def test_the_output_stream_applies_stop_strings_and_counts_usage(core: TokenizerCore) -> None:
    from services.common.types import Delivery

    req = core.prepare(GenerateParams(prompt="hi", max_tokens=20, stop=["END"]), "r1")
    out = core.output_stream(req)
    ids = core.tokenizer.encode("abc END tail", add_special_tokens=False).ids
    chunks = []
    for token in ids:
        chunks.append(out.push(Delivery("r1", [token])))
        if chunks[-1].is_final:
            break
    assert "".join(c.text for c in chunks) == "abc "
    assert chunks[-1].finish_reason == "stop" and chunks[-1].is_stopped_by_string
    assert out.is_finished and out.usage == (len(req.prompt_token_ids), len(chunks))
