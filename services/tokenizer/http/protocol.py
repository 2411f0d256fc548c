"""The OpenAI wire format: request bodies -> the front door's `GenerateParams`, responses and SSE
chunks back, and the error envelope. No web framework here (the app in app.py converts)."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from services.common.errors import HopscopeError, InvalidArgumentError
from services.tokenizer.core import GenerateParams

COMPLETIONS = "completions"
CHAT = "chat"
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default (hopscope's gRPC default is 0 = greedy)
# Fields a client may send with a non-default value that hopscope cannot honour: a 400 says so.
_UNSUPPORTED: dict[str, Any] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "tools": (None, []),
    "functions": (None, []),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "prompt_logprobs": (None, 0),
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    429: "rate_limit_error",
    499: "cancelled",
    503: "service_unavailable",
    504: "timeout",
    500: "server_error",
}
HTTP_STATUS_OF = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,  # a request id in use (X-Request-Id)
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class ModelNotServedError(HopscopeError):
    status = "NOT_FOUND"
    param = "model"


@dataclass(slots=True)
class ApiRequest:
    """One OpenAI request as hopscope runs it."""

    kind: str  # COMPLETIONS | CHAT
    model: str
    params: GenerateParams
    messages: list[dict[str, Any]] | None  # chat: rendered by the app with the chat template
    is_stream: bool
    include_usage: bool
    return_token_ids: bool  # vLLM's extension: token ids in each choice (bench uses them)
    is_max_tokens_given: bool


# The envelope's `code` by status, unless the error names its own (an unknown route's 404).
_ERROR_CODES = {404: "model_not_found", 429: "queue_full", 401: "invalid_api_key"}
# The core's field names (gRPC GenerateRequest's) as an OpenAI body spells them.
_HTTP_PARAMS = {"prompt_token_ids": "prompt", "request_id": "x-request-id"}


def error_body(
    status_code: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    code = code or _ERROR_CODES.get(status_code)
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status_code, "server_error"),
            "param": param,
            "code": code,
        }
    }


def http_status(exc: HopscopeError) -> int:
    return HTTP_STATUS_OF.get(exc.status, 500)


def http_param(exc: HopscopeError, kind: str) -> str | None:
    """The request field `exc` names, as the OpenAI body of a `kind` request spells it (a chat's
    prompt is its `messages`)."""
    if exc.param is None:
        return None
    param = _HTTP_PARAMS.get(exc.param, exc.param)
    return "messages" if kind == CHAT and param == "prompt" else param


class ParamError(InvalidArgumentError):
    """A 400 that names the offending field (the envelope's `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, param)


def parse_request(kind: str, body: Any) -> ApiRequest:
    """Validate an OpenAI request body; unknown fields are ignored, unsupported ones refused."""
    if not isinstance(body, dict):
        raise ParamError("body", "the request body must be a JSON object")
    _refuse_unsupported(body)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    params = GenerateParams(
        max_tokens=_int(body, "max_tokens", max_tokens, DEFAULT_COMPLETION_MAX_TOKENS),
        temperature=_number(body, "temperature", DEFAULT_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0),
        top_k=max(0, _int(body, "top_k", body.get("top_k"), 0)),  # vLLM sends -1 for off
        seed=_optional_int(body, "seed"),
        ignore_eos=_bool(body, "ignore_eos", False),
        stop=_stop(body.get("stop")),
    )
    _apply_min_tokens(body, params)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ParamError("stream_options", "stream_options must be an object")
    request = ApiRequest(
        kind=kind,
        model=str(body.get("model") or ""),
        params=params,
        messages=None,
        is_stream=_bool(body, "stream", False),
        include_usage=bool(stream_options.get("include_usage", False)),
        return_token_ids=_bool(body, "return_token_ids", False),
        is_max_tokens_given=max_tokens is not None,
    )
    if kind == CHAT:
        request.messages = _messages(body.get("messages"))
    else:
        _set_prompt(params, body.get("prompt"))
    return request


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n", 1)
    if n not in (None, 1):
        raise ParamError("n", f"n={n} is not supported: hopscope returns one choice (n=1)")
    for name, defaults in _UNSUPPORTED.items():
        if name in body and body[name] not in defaults:
            raise ParamError(name, f"{name} is not supported by hopscope")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ParamError("response_format", "response_format other than text is not supported")


def _apply_min_tokens(body: dict[str, Any], params: GenerateParams) -> None:
    """The pipeline can ignore EOS, not defer it: min_tokens is honoured when it asks for no
    more than that (<= 1, or == max_tokens, which is ignore_eos)."""
    min_tokens = _int(body, "min_tokens", body.get("min_tokens"), 0)
    if min_tokens <= 1:
        return
    if min_tokens == params.max_tokens:
        params.ignore_eos = True
        return
    raise ParamError(
        "min_tokens",
        f"min_tokens={min_tokens} is not supported: use 0, or min_tokens == max_tokens "
        "(the same as ignore_eos)",
    )


def _set_prompt(params: GenerateParams, prompt: Any) -> None:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        params.prompt = prompt
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        params.prompt_token_ids = [int(t) for t in prompt]
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise ParamError("prompt", "a batch of prompts is not supported: send one per request")
    else:
        raise ParamError("prompt", "prompt must be a non-empty string or a list of token ids")


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ParamError("messages", "messages must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ParamError(f"messages[{i}]", "each message needs a string `role`")
        out.append({**message, "content": _content(message.get("content"), i)})
    return out


def _content(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ParamError(
                    f"messages[{index}].content", "only text content parts are supported"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise ParamError(f"messages[{index}].content", "content must be a string or text parts")


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise ParamError("stop", "stop must be a string or a list of strings")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(body: dict[str, Any], name: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if not _is_int(value):
        raise ParamError(name, f"{name} must be an integer, got {value!r}")
    return int(value)


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    return None if value is None else _int(body, name, value, 0)


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ParamError(name, f"{name} must be a number, got {value!r}")
    return float(value)


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ParamError(name, f"{name} must be true or false, got {value!r}")
    return value


# ---------------------------------------------------------------------------- responses
class ResponseWriter:
    """Builds one request's response objects and SSE frames. The per-chunk frame is a
    precomputed prefix + the JSON-escaped delta: one string join per chunk, no dict."""

    def __init__(self, request: ApiRequest, model: str) -> None:
        self.request = request
        self.id = ("chatcmpl-" if request.kind == CHAT else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self._object = "chat.completion.chunk" if request.kind == CHAT else "text_completion"
        head = json.dumps(
            {"id": self.id, "object": self._object, "created": self.created, "model": model}
        )[:-1]
        self._prefix = f'data: {head}, "choices": [{{"index": 0, '
        self._is_first = True

    def chunk(self, text: str, token_ids: list[int], finish_reason: str | None) -> str:
        """One SSE frame carrying this delta of text (and its token ids when asked for)."""
        if self.request.kind == CHAT:
            role = '"role": "assistant", ' if self._is_first else ""
            body = f'"delta": {{{role}"content": {json.dumps(text)}}}'
        else:
            body = f'"text": {json.dumps(text)}'
        self._is_first = False
        if self.request.return_token_ids:
            body += f', "token_ids": {json.dumps(token_ids)}'
        reason = json.dumps(finish_reason)
        return f'{self._prefix}{body}, "logprobs": null, "finish_reason": {reason}}}]}}\n\n'

    def usage_chunk(self, usage: dict[str, int]) -> str:
        frame = self._envelope(self._object)
        frame.update(choices=[], usage=usage)
        return f"data: {json.dumps(frame)}\n\n"

    def completion(
        self, text: str, token_ids: list[int], finish_reason: str, usage: dict[str, int]
    ) -> dict[str, Any]:
        """The whole (non-streaming) response."""
        if self.request.kind == CHAT:
            choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
            frame = self._envelope("chat.completion")
        else:
            choice = {"text": text}
            frame = self._envelope("text_completion")
        choice.update(index=0, logprobs=None, finish_reason=finish_reason)
        if self.request.return_token_ids:
            choice["token_ids"] = token_ids
        frame.update(choices=[choice], usage=usage)
        return frame

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_frame(status_code: int, message: str) -> str:
    """An error after the stream started (the status line is already sent)."""
    return f"data: {json.dumps(error_body(status_code, message))}\n\n"


DONE_FRAME = "data: [DONE]\n\n"
