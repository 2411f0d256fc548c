"""The front door's API key (`serve --api-key`, or HOPSCOPE_API_KEY): one check for both front
doors (HTTP `Authorization: Bearer`, gRPC `authorization` metadata). The key is never logged."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

import grpc

from services.common.errors import HopscopeError

API_KEY_ENV = "HOPSCOPE_API_KEY"
FRONT_DOOR_PREFIX = "/hopscope.v1.Tokenizer/"


class UnauthenticatedError(HopscopeError):
    status = "UNAUTHENTICATED"


def api_key_from_env() -> str:
    """Read once, at start-up (the deploy layer puts `--api-key` here for every placement)."""
    return os.environ.get(API_KEY_ENV, "")


class ApiKey:
    def __init__(self, key: str) -> None:
        self._key = key.encode()

    @property
    def is_required(self) -> bool:
        return bool(self._key)

    def check(self, authorization: str | None) -> None:
        """Raises UnauthenticatedError unless `authorization` is `Bearer <the key>`."""
        if not self._key:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            raise UnauthenticatedError(
                "missing or wrong API key: send the header `Authorization: Bearer KEY` "
                f"(the key given to `hopscope serve --api-key` or {API_KEY_ENV})"
            )

    def __repr__(self) -> str:
        return f"ApiKey(is_required={self.is_required})"


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for front-door RPCs without the key; health and reflection stay open."""

    def __init__(self, api_key: ApiKey) -> None:
        self._api_key = api_key

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(FRONT_DOOR_PREFIX):
            return handler
        metadata = dict(details.invocation_metadata or ())
        try:
            self._api_key.check(metadata.get("authorization"))
        except UnauthenticatedError as exc:
            return _refusing(handler, str(exc))
        return handler


def _refusing(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream:

        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover - an async generator that never yields

        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
