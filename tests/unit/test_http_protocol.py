"""The OpenAI wire format: request bodies to GenerateParams, refusals that name the field, SSE
frames that are valid JSON with the fields clients read."""

from __future__ import annotations

import json

import pytest

from services.tokenizer.http.protocol import (
    CHAT,
    COMPLETIONS,
    ParamError,
    ResponseWriter,
    parse_request,
)


def test_completions_body_maps_to_the_pipelines_params() -> None:
    request = parse_request(
        COMPLETIONS,
        {
            "model": "m",
            "prompt": [[5, 6, 7]],
            "max_completion_tokens": 9,
            "temperature": 0,
            "top_k": -1,
            "seed": 3,
            "stop": "\n",
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "someone",
            "an_unknown_field": {"is": "ignored"},
        },
    )
    params = request.params
    assert params.prompt_token_ids == [5, 6, 7] and params.max_tokens == 9
    assert (params.temperature, params.top_k, params.seed, params.stop) == (0.0, 0, 3, ["\n"])
    assert request.is_stream and request.include_usage


def test_openai_defaults_and_min_tokens() -> None:
    params = parse_request(COMPLETIONS, {"prompt": "hi"}).params
    assert (params.max_tokens, params.temperature) == (16, 1.0)
    exact = parse_request(COMPLETIONS, {"prompt": "hi", "max_tokens": 8, "min_tokens": 8})
    assert exact.params.ignore_eos


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "n": 2}, "n"),
        ({"prompt": "hi", "logprobs": 3}, "logprobs"),
        ({"prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": "hi", "min_tokens": 3, "max_tokens": 8}, "min_tokens"),
        ({"prompt": "hi", "stop": [1]}, "stop"),
    ],
)
def test_unsupported_or_invalid_fields_are_refused_by_name(body: dict, param: str) -> None:
    with pytest.raises(ParamError) as refused:
        parse_request(COMPLETIONS, body)
    assert refused.value.param == param


def test_chat_messages_accept_text_parts_only() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    request = parse_request(CHAT, {"messages": [{"role": "user", "content": parts}]})
    assert request.messages == [{"role": "user", "content": "ab"}]
    with pytest.raises(ParamError, match="only text"):
        parse_request(CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})


@pytest.mark.parametrize("kind", [COMPLETIONS, CHAT])
def test_sse_frames_are_json_with_the_openai_fields(kind: str) -> None:
    body = {"prompt": "x", "messages": [{"role": "user", "content": "x"}], "return_token_ids": True}
    writer = ResponseWriter(parse_request(kind, body), "m")
    frames = [writer.chunk('he said "hi"\n', [1, 2], None), writer.chunk("", [3], "length")]
    events = [json.loads(f.removeprefix("data: ").removesuffix("\n\n")) for f in frames]
    for event in events:
        assert {"id", "object", "created", "model", "choices"} <= set(event)
        assert event["object"] == ("chat.completion.chunk" if kind == CHAT else "text_completion")
    first = events[0]["choices"][0]
    text = first["delta"]["content"] if kind == CHAT else first["text"]
    assert text == 'he said "hi"\n' and first["token_ids"] == [1, 2]
    assert events[1]["choices"][0]["finish_reason"] == "length"
    usage = json.loads(writer.usage_chunk({"prompt_tokens": 1}).removeprefix("data: "))
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 1}
