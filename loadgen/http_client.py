"""`hopscope bench --url`: the load client of an OpenAI-compatible HTTP front door (hopscope's,
or any server speaking the API). Streams every request (SSE) and records it exactly as the gRPC
path does: a time per message with tokens, tokens per message, usage from the server.

Efficient by design: one pooled `httpx.AsyncClient` per client process, raw bytes split on the
SSE frame boundary (no text decoding or line iterator layers), one `json.loads` per frame.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Self

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from loadgen.config import BenchConfig
from loadgen.frontdoor import UnreachableError
from loadgen.metrics import STATUS_OK, RequestRecord
from protos import hopscope_pb2 as pb

ENDPOINTS = ("completions", "chat")
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
# HTTP statuses named like the gRPC codes the other front door reports, so records compare
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_FRAME_END = b"\n\n"
_DATA = b"data: "
_DONE = b"[DONE]"
_PROPAGATOR = TraceContextTextMapPropagator()
API_KEY_ENV = "HOPSCOPE_API_KEY"


class HttpUnreachableError(UnreachableError):
    """The HTTP front door did not answer before any load was sent."""


def status_name(status_code: int) -> str:
    return STATUS_NAMES.get(status_code, f"HTTP_{status_code}")


def request_body(request: pb.GenerateRequest, endpoint: str, model: str) -> dict[str, Any]:
    """The OpenAI request for one of the workload's requests (streaming, usage included)."""
    body: dict[str, Any] = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "ignore_eos": request.ignore_eos,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,  # hopscope (and vLLM): exact tokens per message
    }
    if model:
        body["model"] = model
    if request.HasField("seed"):
        body["seed"] = request.seed
    if endpoint == "chat":  # BenchConfig refused chat without text prompts
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
    else:
        body["prompt"] = list(request.prompt_token_ids) or request.prompt
    return body


class HttpFrontDoor:
    """One client process's connection pool to `config.url`; `send` runs one request."""

    def __init__(self, config: BenchConfig, is_tracing: bool) -> None:
        self._config = config
        self._path = PATHS[config.endpoint]
        self._is_tracing = is_tracing
        self._tracer = trace.get_tracer("hopscope.loadgen")
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(config.load.request_timeout_s, connect=10.0)
        api_key = os.environ.get(API_KEY_ENV, "")  # never written into the results
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client = httpx.AsyncClient(
            base_url=config.url, limits=limits, timeout=timeout, headers=headers
        )
        self.model = ""

    async def __aenter__(self) -> Self:
        self.model = await served_model(self._client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    def body(self, request: pb.GenerateRequest) -> dict[str, Any]:
        return request_body(request, self._config.endpoint, self.model)

    async def send(
        self,
        body: dict[str, Any],
        record: RequestRecord,
        metadata: tuple[tuple[str, str], ...],
        t0: float,
    ) -> None:
        """Stream one request; fills `record` (times relative to `t0`, status, usage)."""
        headers = dict(metadata)
        span = None
        if self._is_tracing:  # the CLIENT half of the client -> front door hop
            span = self._tracer.start_span(
                f"POST {self._path}",
                kind=SpanKind.CLIENT,
                # the served model names the deployment when the server's spans do not (vLLM)
                attributes={"gen_ai.request.model": self.model} if self.model else None,
            )
            _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        try:
            await self._stream(body, record, headers, t0)
        finally:
            if span is not None:
                span.end()

    async def _stream(
        self, body: dict[str, Any], record: RequestRecord, headers: dict[str, str], t0: float
    ) -> None:
        try:
            await self._read(body, record, headers, t0)
        except httpx.TimeoutException as exc:
            record.status, record.error = "DEADLINE_EXCEEDED", f"HTTP timeout: {exc!r}"
        except httpx.HTTPError as exc:  # connection refused / reset: the server went away
            record.status, record.error = "UNAVAILABLE", f"{type(exc).__name__}: {exc}"
        if record.t_end is None:
            record.t_end = time.perf_counter() - t0

    async def _read(
        self, body: dict[str, Any], record: RequestRecord, headers: dict[str, str], t0: float
    ) -> None:
        async with self._client.stream("POST", self._path, json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                record.t_end = time.perf_counter() - t0
                record.status = status_name(response.status_code)
                record.error = _error_message(response.content)
                return
            buffer = b""
            async for data in response.aiter_raw():
                buffer += data
                if _FRAME_END not in buffer:
                    continue
                *frames, buffer = buffer.split(_FRAME_END)
                now = time.perf_counter() - t0
                for frame in frames:
                    if _on_frame(record, frame, now):
                        record.t_end = time.perf_counter() - t0
                        return
        record.t_end = time.perf_counter() - t0
        if record.status != STATUS_OK:
            record.status, record.error = "INCOMPLETE", "the stream ended before [DONE]"


def _on_frame(record: RequestRecord, frame: bytes, t: float) -> bool:
    """Record one SSE frame; True at `[DONE]` (or an error event)."""
    if not frame.startswith(_DATA):
        return False  # a comment or keep-alive
    payload = frame[len(_DATA) :]
    if payload == _DONE:
        record.status = STATUS_OK
        if not record.num_output_tokens:  # no usage chunk: count what was streamed
            record.num_output_tokens = sum(record.tokens_per_message)
        return True
    event = json.loads(payload)
    if "error" in event:
        error = event["error"]
        record.status = str(error.get("code") or error.get("type") or "ERROR").upper()
        record.error = str(error.get("message", ""))
        return True
    usage = event.get("usage")
    if usage:
        record.num_prompt_tokens = int(usage.get("prompt_tokens", 0))
        record.num_output_tokens = int(usage.get("completion_tokens", 0))
    for choice in event.get("choices") or ():
        token_ids = choice.get("token_ids")
        num_tokens = len(token_ids) if token_ids is not None else int(_has_text(choice))
        if num_tokens:
            if record.t_first is None:
                record.t_first = t
            record.message_times.append(t)
            record.tokens_per_message.append(num_tokens)
    return False


def _has_text(choice: dict[str, Any]) -> bool:
    """A server without token ids: one token per non-empty delta (what the SSE carries)."""
    delta = choice.get("delta")
    return bool(delta.get("content") if delta is not None else choice.get("text"))


def _error_message(content: bytes) -> str:
    try:
        return str(json.loads(content)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return content.decode(errors="replace")[:500]


async def served_model(client: httpx.AsyncClient) -> str:
    """The first model `GET /v1/models` lists ("" when it lists none)."""
    try:
        response = await client.get("/v1/models")
    except httpx.HTTPError as exc:
        raise HttpUnreachableError(
            f"no HTTP front door answers at {client.base_url} ({exc}); is `hopscope serve "
            "--http-port PORT` running, and is the URL right?"
        ) from None
    if response.status_code != 200:
        raise HttpUnreachableError(
            f"{client.base_url}/v1/models answered {response.status_code}: "
            f"{_error_message(response.content)}"
        )
    models = response.json().get("data") or []
    return str(models[0]["id"]) if models else ""


async def describe(url: str, timeout_s: float) -> str:
    """One line about the server, for the bench header (checks it answers before any load)."""
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
        model = await served_model(client)
    return f"{url}: HTTP front door, model {model or '?'}"
