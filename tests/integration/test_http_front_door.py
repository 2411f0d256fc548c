"""The OpenAI-compatible HTTP front door: the official `openai` SDK gets the gRPC front door's
tokens, every error status, a disconnect frees KV blocks, the API key guards both front doors."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from deploy.inproc import InprocPipeline, start_inproc
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.config import HopscopeConfig
from services.models import ModelNotFoundError, resolve_model
from services.models.chat_template import render_chat
from services.scheduler.servicer import describe_scheduler
from services.tokenizer.auth import API_KEY_ENV
from tests.harness import generate

openai = pytest.importorskip("openai")
SMOL = "smollm2-135m"
KEY = "sk-hopscope-test"


@dataclass
class Running:
    """An inproc pipeline served from its own event loop thread (tests call it synchronously)."""

    pipeline: InprocPipeline
    loop: asyncio.AbstractEventLoop

    @property
    def address(self) -> str:
        return self.pipeline.address

    @property
    def url(self) -> str:
        return self.pipeline.front_door.http_url

    def stats(self) -> pb.SchedulerStats:
        future = asyncio.run_coroutine_threadsafe(self._stats(), self.loop)
        return future.result(10)

    async def _stats(self) -> pb.SchedulerStats:
        runner = self.pipeline.runner
        scheduler = self.pipeline.front_door.scheduler
        return describe_scheduler(runner, scheduler.identity).scheduler_stats  # type: ignore[attr-defined]

    def wait_until(self, predicate: Any, timeout_s: float = 30.0) -> pb.SchedulerStats:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            assert time.monotonic() < deadline, f"scheduler never got there: {stats}"
            time.sleep(0.05)


def start_running(spec: HopscopeConfig) -> tuple[Running, threading.Thread]:
    """An inproc pipeline on an event loop of its own thread; stop it with `stop_running`."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    pipeline = asyncio.run_coroutine_threadsafe(start_inproc(spec), loop).result(180)
    return Running(pipeline, loop), thread


def stop_running(running: Running, thread: threading.Thread) -> None:
    asyncio.run_coroutine_threadsafe(running.pipeline.stop(1.0), running.loop).result(60)
    running.loop.call_soon_threadsafe(running.loop.stop)
    thread.join(10)


@pytest.fixture
def running_factory() -> Iterator[Any]:
    started: list[tuple[Running, threading.Thread]] = []

    def start(spec: HopscopeConfig) -> Running:
        started.append(start_running(spec))
        return started[-1][0]

    yield start
    for running, thread in started:
        stop_running(running, thread)


@pytest.fixture(scope="module")
def smol_source() -> Any:
    try:
        return resolve_model(SMOL)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


def _grpc_tokens(address: str, prompt: str, **fields: Any) -> tuple[list[int], str, pb.Usage]:
    ids, text, last = generate(address, prompt=prompt, **fields)
    return ids, text, last.usage


def test_openai_sdk_gets_the_grpc_front_doors_tokens(
    running_factory: Any, smol_source: Any
) -> None:
    served = running_factory(
        HopscopeConfig.of(model=SMOL, port=0, http_port=0, max_model_len=512, kv_cache_mb=64)
    )
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    sampling = {"temperature": 0.8, "top_p": 0.95, "seed": 7, "max_tokens": 12}
    extra = {"return_token_ids": True, "ignore_eos": True}
    prompt = "Once upon a time"
    want_ids, want_text, usage = _grpc_tokens(served.address, prompt, ignore_eos=True, **sampling)
    assert len(want_ids) == 12 and usage.completion_tokens == 12

    done = client.completions.create(model=SMOL, prompt=prompt, extra_body=extra, **sampling)
    assert done.choices[0].text == want_text
    assert done.choices[0].model_extra["token_ids"] == want_ids  # type: ignore[index]
    assert done.usage is not None and done.usage.completion_tokens == 12
    assert done.usage.prompt_tokens == usage.prompt_tokens

    stream = client.completions.create(
        model=SMOL,
        prompt=prompt,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
        **sampling,
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12  # type: ignore[union-attr]
    assert "".join(c.choices[0].text for c in chunks[:-1]) == want_text
    assert [t for c in chunks[:-1] for t in c.choices[0].model_extra["token_ids"]] == want_ids  # type: ignore[index]
    assert chunks[-2].choices[0].finish_reason == "length"

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = render_chat(smol_source.chat_template, messages, add_generation_prompt=True)
    chat_ids, chat_text, chat_usage = _grpc_tokens(served.address, rendered, **sampling)
    chat = client.chat.completions.create(
        model=SMOL,
        messages=messages,  # type: ignore[arg-type]
        extra_body={"return_token_ids": True},
        **sampling,  # type: ignore[arg-type]
    )
    assert chat.choices[0].message.content == chat_text
    grpc_chat = [pb.ChatMessage(role="user", content="What is the capital of France?")]
    assert _grpc_tokens(served.address, "", messages=grpc_chat, **sampling)[0] == chat_ids
    assert chat.choices[0].model_extra["token_ids"] == chat_ids  # type: ignore[index]
    assert chat.usage is not None and chat.usage.prompt_tokens == chat_usage.prompt_tokens
    chat_stream = client.chat.completions.create(
        model=SMOL,
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        **sampling,  # type: ignore[arg-type]
    )
    deltas = list(chat_stream)
    assert deltas[0].object == "chat.completion.chunk" and deltas[0].choices[0].delta.role
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == chat_text
    assert [m.id for m in client.models.list()] == [SMOL]


def test_the_grpc_front_door_takes_the_same_api_key(
    running_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEY_ENV, KEY)
    served = running_factory(HopscopeConfig.of(model="tiny", port=0, http_port=0))
    refused = httpx.post(f"{served.url}/v1/completions", json={"prompt": "hi"}, timeout=30)
    assert refused.status_code == 401  # the HTTP statuses: test_http_errors.py
    # gRPC front door: the same key, from `authorization` metadata
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        request = pb.GenerateRequest(prompt="hi", max_tokens=2)
        with pytest.raises(grpc.RpcError) as refused_grpc:
            list(stub.Generate(request, timeout=30))
        assert refused_grpc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"Bearer {KEY}"),)
        assert len(list(stub.Generate(request, timeout=30, metadata=metadata))) >= 1
    # `hopscope generate --address` sends HOPSCOPE_API_KEY; without it, it says what to set
    from deploy.client import GenerateError, stream_generate

    result = asyncio.run(stream_generate(served.address, request, 30))
    assert result["usage"]["completion_tokens"] == 2
    monkeypatch.delenv(API_KEY_ENV)
    with pytest.raises(GenerateError, match="set HOPSCOPE_API_KEY"):
        asyncio.run(stream_generate(served.address, request, 30))


def test_a_client_disconnect_frees_the_requests_kv_blocks(running_factory: Any) -> None:
    served = running_factory(HopscopeConfig.of(model="tiny", port=0, http_port=0))
    total = served.stats().num_blocks
    body = {"prompt": "Once upon a time " * 40, "max_tokens": 1500, "ignore_eos": True}
    with httpx.Client(base_url=served.url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
            lines = response.iter_lines()
            next(lines)
            next(lines)
            held = served.stats()
            assert held.num_running == 1 and held.num_free_blocks < total
        # the response is closed mid-stream: the request is aborted, its blocks come back
        served.wait_until(lambda s: s.num_running == 0 and s.num_free_blocks == total)


def test_the_http_server_span_continues_the_clients_traceparent(running_factory: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.tokenizer.auth import ApiKey
    from services.tokenizer.http.app import FrontDoorApp
    from services.tokenizer.http.server import start_http_server

    served = running_factory(HopscopeConfig.of(model="tiny", port=0))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    servicer = served.pipeline.front_door.servicer
    app = FrontDoorApp(servicer, "tiny", ApiKey(""))
    http = asyncio.run_coroutine_threadsafe(
        start_http_server(app, "127.0.0.1:0", provider), served.loop
    ).result(30)
    try:
        trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
        headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
        body = {"prompt": "hi", "max_tokens": 4, "stream": True}
        response = httpx.post(f"{http.url}/v1/completions", json=body, headers=headers)
        assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    finally:
        asyncio.run_coroutine_threadsafe(http.stop(5), served.loop).result(30)
    (server,) = [s for s in exporter.get_finished_spans() if s.name == "POST /v1/completions"]
    assert server.kind.name == "SERVER"
    assert f"{server.context.trace_id:032x}" == trace_id
    assert server.parent is not None and f"{server.parent.span_id:016x}" == parent_id
