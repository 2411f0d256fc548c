"""The OpenAI-compatible routes. Each request enters the very pipeline path gRPC Generate takes
(`TokenizerServicer.generate`): same validation, encoding, spans, metrics, abort on cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from protos import hopscope_pb2 as pb
from services.common.errors import HopscopeError
from services.tokenizer.auth import ApiKey
from services.tokenizer.http import protocol
from services.tokenizer.http.protocol import (
    CHAT,
    COMPLETIONS,
    DONE_FRAME,
    ApiRequest,
    ModelNotServedError,
    ResponseWriter,
    usage_of,
)
from tracing import schema

if TYPE_CHECKING:
    from services.tokenizer.servicer import TokenizerServicer

RETRY_AFTER_S = "1"
TIMEOUT_HEADER = "x-request-timeout"  # seconds: the request's deadline (gRPC's deadline here)
# The request's id: hopscope's load generator's header, else any client's `X-Request-Id`.
REQUEST_ID_HEADERS = (schema.REQUEST_ID_HEADER, "x-request-id")
_ROUTES = (
    "POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics"
)


class FrontDoorApp:
    """The routes over one tokenizer servicer; `app` is the ASGI application."""

    def __init__(
        self,
        servicer: TokenizerServicer,
        model_name: str,
        api_key: ApiKey,
    ) -> None:
        self.servicer = servicer
        self.model_name = model_name
        self.api_key = api_key
        self.app = FastAPI(title="hopscope", docs_url=None, redoc_url=None, openapi_url=None)
        self.app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        self.app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        self.app.add_api_route("/v1/models", self.models, methods=["GET"])
        self.app.add_api_route("/health", self.health, methods=["GET"])
        self.app.add_api_route("/metrics", self.metrics, methods=["GET"])
        # what no route answers (an unknown path, a wrong method) and what no route expected (a
        # bug: 500) answer in the OpenAI error envelope too, not FastAPI's {"detail": ...}
        self.app.add_exception_handler(HTTPException, self._route_error)
        self.app.add_exception_handler(Exception, _internal_error)

    # ------------------------------------------------------------------ routes
    async def completions(self, request: Request) -> Response:
        return await self._generate(COMPLETIONS, request)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(CHAT, request)

    async def models(self, request: Request) -> Response:
        try:
            self.api_key.check(request.headers.get("authorization"))
        except HopscopeError as exc:
            return _error_response(exc, COMPLETIONS)
        card = {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "hopscope",
            "max_model_len": self.servicer.core.max_context,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self) -> Response:
        is_up = self.servicer.scheduler.is_ready
        return JSONResponse({"status": "ok" if is_up else "unavailable"}, 200 if is_up else 503)

    async def metrics(self) -> Response:
        return PlainTextResponse(
            self.servicer.metrics.exposition(), media_type="text/plain; version=0.0.4"
        )

    # ------------------------------------------------------------------ generation
    async def _generate(self, kind: str, request: Request) -> Response:
        try:
            self.api_key.check(request.headers.get("authorization"))
            api_request = protocol.parse_request(kind, await _json(request))
            self._check_model(api_request.model)
            if api_request.messages is not None:
                api_request.params.prompt = self.servicer.core.chat_prompt(api_request.messages)
            self._default_max_tokens(api_request)
            api_request.params.request_id = _request_id(request)
            responses = self.servicer.generate(api_request.params, _timeout_s(request))
            writer = ResponseWriter(api_request, self.model_name)
            if api_request.is_stream:
                return await self._stream(api_request, writer, responses)
            return await _until_disconnect(request, self._collect(writer, responses))
        except HopscopeError as exc:
            return _error_response(exc, kind)

    async def _route_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            message = f"no route {method} {path}; hopscope serves {_ROUTES}"
            code = "unknown_url"
        elif exc.status_code == 405:
            allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "")
            message = f"{method} is not allowed on {path}; use {allowed}"
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        body = protocol.error_body(exc.status_code, message, code=code)
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    def _check_model(self, model: str) -> None:
        if model and model != self.model_name:
            raise ModelNotServedError(
                f"model {model!r} is not served here; this server serves {self.model_name!r} "
                "(GET /v1/models)"
            )

    def _default_max_tokens(self, api_request: ApiRequest) -> None:
        """Chat without max_tokens generates up to the context's end, as OpenAI does."""
        if api_request.kind != CHAT or api_request.is_max_tokens_given:
            return
        num_prompt = len(self.servicer.core.tokenizer.encode(api_request.params.prompt).ids)
        api_request.params.max_tokens = max(1, self.servicer.core.max_context - num_prompt)

    async def _collect(
        self, writer: ResponseWriter, responses: AsyncIterator[pb.GenerateResponse]
    ) -> Response:
        texts: list[str] = []
        token_ids: list[int] = []
        async for response in responses:
            texts.append(response.text)
            token_ids.extend(response.token_ids)
            if response.finish_reason:
                usage = usage_of(response.usage.prompt_tokens, response.usage.completion_tokens)
                body = writer.completion("".join(texts), token_ids, response.finish_reason, usage)
                return JSONResponse(body)
        raise HopscopeError("the pipeline ended the request without a finish reason")

    async def _stream(
        self,
        api_request: ApiRequest,
        writer: ResponseWriter,
        responses: AsyncIterator[pb.GenerateResponse],
    ) -> Response:
        # The first message is awaited here so that an error before any token (invalid input,
        # queue full, a service down) is a status code, not an event in a 200 stream.
        first = await anext(responses)
        return _EventStream(_frames(api_request, writer, first, responses))


async def _frames(
    api_request: ApiRequest,
    writer: ResponseWriter,
    first: pb.GenerateResponse,
    responses: AsyncIterator[pb.GenerateResponse],
) -> AsyncGenerator[str, None]:
    response = first
    try:
        while True:
            reason = response.finish_reason or None
            yield writer.chunk(response.text, list(response.token_ids), reason)
            if reason is not None:
                if api_request.include_usage:
                    usage = usage_of(response.usage.prompt_tokens, response.usage.completion_tokens)
                    yield writer.usage_chunk(usage)
                yield DONE_FRAME
                return
            response = await anext(responses)
    except HopscopeError as exc:  # after the status line: an error event, then the end
        yield protocol.error_frame(protocol.http_status(exc), str(exc))
    finally:
        await responses.aclose()  # type: ignore[attr-defined]  # aborts the request if unfinished


class _EventStream(StreamingResponse):
    """Server-sent events. Starlette cancels the body when the client disconnects (ASGI spec
    < 2.4, as uvicorn speaks): the cancellation reaches the pipeline, which aborts the request
    and frees its KV blocks."""

    media_type = "text/event-stream"

    def __init__(self, frames: AsyncGenerator[str, None]) -> None:
        super().__init__(frames, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._frames = frames

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:  # cancelled while waiting on `send`: close the frames (and so the request) now
            await self._frames.aclose()


async def _until_disconnect(request: Request, work: Any) -> Response:
    """Run a non-streaming request unless its client goes away first (then cancel it)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return Response(status_code=499)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise protocol.ParamError("body", f"the request body is not valid JSON: {exc}") from exc


def _request_id(request: Request) -> str:
    return next((v for h in REQUEST_ID_HEADERS if (v := request.headers.get(h))), "")


def _timeout_s(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        timeout_s = float(value)
    except ValueError:
        raise protocol.ParamError(TIMEOUT_HEADER, f"{TIMEOUT_HEADER} must be seconds") from None
    if not timeout_s > 0:
        raise protocol.ParamError(TIMEOUT_HEADER, f"{TIMEOUT_HEADER} must be > 0")
    return timeout_s


async def _internal_error(request: Request, exc: Exception) -> Response:
    message = f"internal error in {request.method} {request.url.path}: {type(exc).__name__}"
    return JSONResponse(protocol.error_body(500, message), 500)


def _error_response(exc: HopscopeError, kind: str) -> JSONResponse:
    status_code = protocol.http_status(exc)
    body = protocol.error_body(status_code, str(exc), protocol.http_param(exc, kind))
    headers = {"Retry-After": RETRY_AFTER_S} if status_code == 429 else None
    return JSONResponse(body, status_code, headers=headers)
