"""A front-door client: the one `hopscope generate` and the tests use."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import grpc

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
    return request


async def stream_generate(
    address: str,
    request: pb.GenerateRequest,
    timeout_s: float,
    on_text: Callable[[str], None] | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> dict[str, Any]:
    """Run one Generate; returns text, token_ids, prompt_token_ids, finish_reason, usage.
    `credentials`: TLS to a front door served with --tls-dir (services/common/tls.py)."""
    text: list[str] = []
    token_ids: list[int] = []
    last = pb.GenerateResponse()
    async with create_channel(address, is_traced=True, credentials=credentials) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        try:
            async for response in stub.Generate(request, timeout=timeout_s):
                text.append(response.text)
                token_ids.extend(response.token_ids)
                if on_text and response.text:
                    on_text(response.text)
                last = response
        except grpc.aio.AioRpcError as exc:
            hint = ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE and credentials is None:
                hint = " (a front door served with --tls-dir needs --tls-ca)"
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
    }
