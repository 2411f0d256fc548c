"""Every error class of the HTTP front door answers in the OpenAI error envelope, as the openai
SDK reads it: its exception class, `type`, `code` and the `param` naming the offending field.
(503, a service down, needs a multi-process placement: test_http_bench.py.)"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import pytest

from services.config import HopscopeConfig
from services.tokenizer.auth import API_KEY_ENV
from tests.integration.test_http_front_door import KEY, Running, start_running, stop_running

openai = pytest.importorskip("openai")
MODEL = "tiny"
LONG = {"prompt": "a", "max_tokens": 1900, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def served() -> Iterator[Running]:
    """One request runs at a time and one waits: a third is refused (429)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(API_KEY_ENV, KEY)  # read once, when the front door starts
        spec = HopscopeConfig.of(model=MODEL, port=0, http_port=0, max_num_seqs=1, max_queue_len=1)
        running, thread = start_running(spec)
    yield running
    stop_running(running, thread)


@pytest.fixture
def client(served: Running) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk
    served.wait_until(lambda s: s.num_running == 0 and s.num_waiting == 0)  # for the next test


def _is_envelope(exc: Any, status_code: int, error_type: str) -> bool:
    assert isinstance(exc.body, dict) and set(exc.body) == {"message", "type", "param", "code"}
    return exc.status_code == status_code and exc.type == error_type and bool(exc.message)


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        ("completions", {"prompt": "hi", "max_tokens": -5}, "max_tokens"),
        ("completions", {"prompt": "hi", "max_tokens": 100_000}, "max_tokens"),
        ("completions", {"prompt": "hi", "n": 2}, "n"),
        ("completions", {"prompt": "hi", "temperature": -1}, "temperature"),
        ("completions", {"prompt": "hi", "top_p": 2}, "top_p"),
        ("completions", {"prompt": "hi", "stop": [""]}, "stop"),
        ("completions", {"prompt": ""}, "prompt"),
        ("completions", {"prompt": [1, 999_999]}, "prompt"),
        ("chat", {"messages": []}, "messages"),
        ("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ],
)
def test_400_names_the_offending_field(
    client: Any, route: str, fields: dict[str, Any], param: str
) -> None:
    create = client.completions.create if route == "completions" else client.chat.completions.create
    with pytest.raises(openai.BadRequestError) as refused:
        create(model=MODEL, **fields)
    assert _is_envelope(refused.value, 400, "invalid_request_error")
    assert refused.value.param == param


def test_401_a_wrong_key(served: Running) -> None:
    wrong = openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as refused:
        wrong.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert _is_envelope(refused.value, 401, "authentication_error")
    assert refused.value.code == "invalid_api_key"


def test_404_a_model_not_served(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert _is_envelope(refused.value, 404, "not_found_error")
    assert (refused.value.code, refused.value.param) == ("model_not_found", "model")


def test_404_an_unknown_path(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        client.post("/embeddings", cast_to=object, body={"input": "hi"})
    assert _is_envelope(refused.value, 404, "not_found_error")
    assert refused.value.code == "unknown_url"
    assert "POST /v1/embeddings" in refused.value.message
    assert "POST /v1/completions" in refused.value.message  # what is served instead


def test_405_a_get_on_a_post_route(client: Any) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        client.get("/completions", cast_to=object)
    assert _is_envelope(refused.value, 405, "invalid_request_error")
    assert refused.value.code == "method_not_allowed"
    assert "use POST" in refused.value.message


@pytest.mark.parametrize("header", ["x-hopscope-request-id", "X-Request-Id"])
def test_409_a_request_id_in_use(client: Any, header: str) -> None:
    held = client.completions.create(
        model=MODEL, stream=True, extra_headers={header: "r-1"}, **LONG
    )
    try:
        next(iter(held))  # running
        with pytest.raises(openai.ConflictError) as refused:
            client.completions.create(model=MODEL, extra_headers={"X-Request-Id": "r-1"}, **LONG)
        assert _is_envelope(refused.value, 409, "conflict_error")
        assert refused.value.param == "x-request-id"
    finally:
        held.close()


def test_429_a_full_queue_says_when_to_retry(served: Running, client: Any) -> None:
    running = client.completions.create(model=MODEL, stream=True, **LONG)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # answered (its status line) only once it runs: waits in a thread
        waiting = pool.submit(client.completions.create, model=MODEL, stream=True, **LONG)
        try:
            next(iter(running))
            served.wait_until(lambda s: s.num_waiting == 1)
            with pytest.raises(openai.RateLimitError) as refused:
                client.completions.create(model=MODEL, **LONG)
            assert _is_envelope(refused.value, 429, "rate_limit_error")
            assert refused.value.code == "queue_full"
            assert refused.value.response.headers["Retry-After"]
        finally:
            running.close()
            waiting.result(60).close()


def test_504_the_requests_deadline(client: Any) -> None:
    with pytest.raises(openai.InternalServerError) as refused:
        client.completions.create(model=MODEL, extra_headers={"X-Request-Timeout": "0.05"}, **LONG)
    assert _is_envelope(refused.value, 504, "timeout")


def test_500_an_unexpected_failure(
    served: Running, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.pipeline.front_door.servicer.core, "prepare", broken)
    with pytest.raises(openai.InternalServerError) as refused:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert _is_envelope(refused.value, 500, "server_error")
    assert "RuntimeError" in refused.value.message
