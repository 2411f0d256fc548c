"""The one gRPC server bootstrap: every hopscope service starts through `start_server`.

It installs the error-mapping interceptor (domain errors -> status codes, logged once; request
bytes that do not parse -> INVALID_ARGUMENT), the OpenTelemetry server interceptor for the front
door's RPCs, `grpc.health.v1` fed by the service's HealthPublisher, server reflection, bounded
message sizes and the keepalive policy its clients' channels agree with (grpc_options.py), and
binds exactly the address it is given (127.0.0.1 by default upstream; `unix:PATH` for a Unix
socket).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import HopscopeError, InvalidArgumentError
from services.common.grpc_options import KEEPALIVE, MAX_MESSAGE_BYTES, Keepalive, server_options
from services.common.health import HealthPublisher
from services.common.peer_auth import InternalTokenInterceptor, warn_if_exposed
from services.common.tls import TlsMaterial, server_credentials

log = logging.getLogger(__name__)

__all__ = ["MAX_MESSAGE_BYTES", "BindError", "GrpcServer", "HealthPublisher", "start_server"]

# Spans from OpenTelemetry's interceptor only for the front door: the long-lived internal streams
# get one span per request / per step from hopscope itself (see ARCHITECTURE.md).
INSTRUMENTED_SERVICES = ("hopscope.v1.Tokenizer",)


class BindError(RuntimeError):
    """The server could not listen where it was asked to."""


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: HealthPublisher
    address: str  # resolved: the real port when 0 was asked for
    service_names: Sequence[str]

    async def set_serving(self, is_serving: bool) -> None:
        """Set the default part of the health publisher and wait until it is published."""
        self.health.set_serving(is_serving)
        await self.health.flush()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING first so balancers stop sending, then let in-flight RPCs finish."""
        await self.health.drain()
        await self.server.stop(grace_s)


async def start_server(
    address: str,
    register: Callable[[grpc.aio.Server], Sequence[str]],
    *,
    health_publisher: HealthPublisher | None = None,
    keepalive: Keepalive = KEEPALIVE,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: TlsMaterial | None = None,
    require_client_cert: bool = True,
    internal_token: str = "",
    has_key: bool = False,
    reuse_port: bool = False,
) -> GrpcServer:
    """Start a server on `address` ("HOST:PORT" or "unix:PATH"); `register` adds the servicers
    and returns their full service names (for health and reflection). `health_publisher`
    decides SERVING (default: serving from the start); `keepalive` must be its clients'.

    `tls`: a TCP listener serves TLS with these credentials — mutual (a client certificate from
    the CA required) unless `require_client_cert` is False (the front door); a Unix socket stays
    plaintext (it never leaves the machine; its directory is private). `internal_token`: every
    call but health checks must carry it (services/common/peer_auth.py). `has_key`: the caller
    checks a key of its own (the front door's API key); only used to decide on the warning for
    an unprotected non-loopback listener. `interceptors` run inside the common ones (e.g. the
    front door's API-key check). `reuse_port`: SO_REUSEPORT, for front-door replicas sharing
    one port (`--tokenizer-replicas`).
    """
    chain = [*_interceptors(), *interceptors]
    if internal_token:
        chain.insert(0, InternalTokenInterceptor(internal_token))
    server = grpc.aio.server(
        interceptors=chain, options=server_options(keepalive, reuse_port=reuse_port)
    )
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
    publisher = health_publisher or HealthPublisher(is_serving=True)
    await publisher.attach(health_servicer, service_names)
    return GrpcServer(server, publisher, resolved, service_names)


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
    """Maps domain errors to their status code; request bytes that do not parse are
    INVALID_ARGUMENT; anything else is INTERNAL, logged once.

    Handlers may be coroutines or async generators, streaming by `yield` or by
    `context.write` (grpc's own health Watch does the latter)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        deserializer = _tolerant(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, _check_request),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, _checked_requests),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method, _checked_requests),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        return handler


@dataclass(frozen=True, slots=True)
class _Malformed:
    """Stands for request bytes the deserializer refused; the handler is never given it."""

    reason: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc calls the deserializer before any handler runs and answers UNKNOWN when it raises:
    # turn the failure into a value the wrapped handler answers INVALID_ARGUMENT for.
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bad bytes
            return _Malformed(f"{type(exc).__name__}: {exc}")

    return deserialize


def _check_request(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise InvalidArgumentError(f"the request could not be parsed ({request.reason})")
    return request


async def _checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _check_request(request)


def _wrap_unary(
    behavior: Callable[..., Any], method: str, check: Callable[[Any], Any] = _check_request
) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(check(request), context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never swallowed
            await _abort(context, exc, method)

    return wrapped


def _wrap_stream(
    behavior: Callable[..., Any], method: str, check: Callable[[Any], Any]
) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(behavior):
        # streams through context.write (grpc's health Watch): the wrapper stays a coroutine
        async def wrapped_coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                result = await behavior(check(request), context)
                if result is not None:  # it returned its responses instead
                    await _write_all(result, context)
            except Exception as exc:  # noqa: BLE001
                await _abort(context, exc, method)

        return wrapped_coroutine

    # an async generator (or a function returning an iterator): the wrapper is an async
    # generator, which OpenTelemetry's stream interceptor around it requires
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            responses = behavior(check(request), context)
            if hasattr(responses, "__aiter__"):
                async for item in responses:
                    yield item
            elif responses is not None:
                for item in responses:
                    yield item
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc, method)

    return wrapped


async def _write_all(responses: Any, context: grpc.aio.ServicerContext) -> None:
    if hasattr(responses, "__aiter__"):
        async for item in responses:
            await context.write(item)
    else:
        for item in responses:
            await context.write(item)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, HopscopeError):
        log.info("%s: %s: %s", method, exc.status, exc)
        await context.abort(grpc.StatusCode[exc.status], str(exc))
    log.exception("%s failed", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
