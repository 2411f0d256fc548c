"""The one gRPC server bootstrap: every hopscope service starts through `start_server`.

It installs the error-mapping interceptor (domain errors -> status codes, logged once), the
OpenTelemetry server interceptor for the front door's RPCs, `grpc.health.v1` and server
reflection, bounded message sizes, and binds exactly the address it is given (127.0.0.1 by
default upstream; `unix:PATH` for a Unix socket).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import HopscopeError
from services.common.peer_auth import InternalTokenInterceptor, warn_if_exposed
from services.common.tls import TlsMaterial, server_credentials

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),  # a taken port must fail to bind, not be shared silently
    ("grpc.max_concurrent_streams", 1024),
]
# Spans from OpenTelemetry's interceptor only for the front door: the long-lived internal streams
# get one span per request / per step from hopscope itself (see ARCHITECTURE.md).
INSTRUMENTED_SERVICES = ("hopscope.v1.Tokenizer",)


class BindError(RuntimeError):
    """The server could not listen where it was asked to."""


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    address: str  # resolved: the real port when 0 was asked for
    service_names: Sequence[str]

    async def set_serving(self, is_serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if is_serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING first so balancers stop sending, then let in-flight RPCs finish."""
        await self.set_serving(False)
        await self.server.stop(grace_s)


async def start_server(
    address: str,
    register: Callable[[grpc.aio.Server], Sequence[str]],
    *,
    is_serving: bool = True,
    tls: TlsMaterial | None = None,
    require_client_cert: bool = True,
    internal_token: str = "",
    has_key: bool = False,
) -> GrpcServer:
    """Start a server on `address` ("HOST:PORT" or "unix:PATH"); `register` adds the servicers
    and returns their full service names (for health and reflection).

    `tls`: a TCP listener serves TLS with these credentials — mutual (a client certificate from
    the CA required) unless `require_client_cert` is False (the front door); a Unix socket stays
    plaintext (it never leaves the machine; its directory is private). `internal_token`: every
    call but health checks must carry it (services/common/peer_auth.py). `has_key`: the caller
    checks a key of its own (the front door's API key); only used to decide on the warning for
    an unprotected non-loopback listener.
    """
    interceptors = _interceptors()
    if internal_token:
        interceptors.insert(0, InternalTokenInterceptor(internal_token))
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    service_names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = server_credentials(tls, require_client_auth=require_client_cert) if tls else None
    resolved = _bind(server, address, credentials)
    is_protected = tls is not None or bool(internal_token) or has_key
    warn_if_exposed(f"gRPC server {','.join(service_names)}", resolved, is_protected=is_protected)
    await server.start()
    grpc_server = GrpcServer(server, health_servicer, resolved, service_names)
    await grpc_server.set_serving(is_serving)
    return grpc_server


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> str:
    is_tls = credentials is not None and not address.startswith("unix:")
    try:
        if is_tls:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise BindError(f"cannot listen on {address}: {exc}; is it already in use?") from exc
    if address.startswith("unix:"):
        return address
    if port == 0:
        raise BindError(f"cannot listen on {address}: the port is taken or the host is not local")
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"


def _interceptors() -> list[grpc.aio.ServerInterceptor]:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    return [
        aio_server_interceptor(filter_=filters.service_name(*INSTRUMENTED_SERVICES)),
        ErrorInterceptor(),
    ]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to their status code; anything else is INTERNAL, logged once."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never swallowed
            await _abort(context, exc, method)

    return wrapped


def _wrap_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc, method)

    return wrapped


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, HopscopeError):
        log.info("%s: %s: %s", method, exc.status, exc)
        await context.abort(grpc.StatusCode[exc.status], str(exc))
    log.exception("%s failed", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
