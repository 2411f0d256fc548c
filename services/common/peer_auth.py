"""The internal services accept only the pipeline's own peers.

With TLS on, mutual TLS does it (services/common/tls.py). Always, a per-deployment random
internal token — made by the deployer, handed to each service in its config (to a local child
through its environment, never its command line) — travels as metadata on every internal call
(`token_metadata`, passed when a call opens) and the scheduler and worker check it in constant
time (the server bootstrap installs the check); a call without it is UNAUTHENTICATED. Health checks stay open so
probes and launchers can wait for SERVING. The token is never logged: configs hide it from repr.

Also here: the warning for a listener on a non-loopback address that nothing protects.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)

TOKEN_METADATA_KEY = "x-hopscope-internal-token"
TOKEN_ENV = "HOPSCOPE_INTERNAL_TOKEN"  # how a local child receives it (not on its command line)
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
# Open without the token to a caller on a Unix socket only: `hopscope profile` records the
# worker's steps from outside the deployment. The socket's directory is 0700, so only the
# deploying user reaches it -- the user who can already attach py-spy to the same processes.
LOCAL_PEER_METHODS = ("/hopscope.v1.Worker/Profile",)


def new_internal_token() -> str:
    return secrets.token_urlsafe(32)


# ---------------------------------------------------------------------------- server side
class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) every call but health checks that lacks the deployment's token."""

    def __init__(self, token: str) -> None:
        assert token, "an empty internal token would accept anyone"
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        if self._is_valid(handler_call_details.invocation_metadata or ()):
            return handler
        if handler_call_details.method in LOCAL_PEER_METHODS and handler.unary_stream:
            return _unix_peers_only(handler)
        return _refusing(handler)

    def _is_valid(self, metadata: Any) -> bool:
        sent = next((v for k, v in metadata if k == TOKEN_METADATA_KEY), None)
        if sent is None:
            return False
        sent_bytes = sent if isinstance(sent, bytes) else str(sent).encode()
        return hmac.compare_digest(sent_bytes, self._token)


REFUSAL = (
    "this port serves only the pipeline's own services: the internal token is missing or wrong "
    "(the deployment hands it to each service; clients use the front door)"
)


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)


LOCAL_ONLY_REFUSAL = (
    "without the internal token this call is served only over the service's Unix socket "
    "(same user, same machine); over TCP it is refused"
)


def _unix_peers_only(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` (unary-stream) for a caller on a Unix socket; UNAUTHENTICATED for others."""
    inner = handler.unary_stream

    async def serve(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not context.peer().startswith("unix:"):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, LOCAL_ONLY_REFUSAL)
        async for response in inner(request, context):
            yield response

    return grpc.unary_stream_rpc_method_handler(
        serve,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    kind = (
        grpc.unary_unary_rpc_method_handler
        if handler.unary_unary
        else grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_unary_rpc_method_handler
        if handler.stream_unary
        else grpc.stream_stream_rpc_method_handler
    )
    return kind(
        _deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# ---------------------------------------------------------------------------- client side
def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` (none without one). The internal clients pass it when they
    open a call; a long-lived stream sends it once. Not a client interceptor: grpc.aio wraps
    every message of an intercepted stream, ~20 us per step round trip (benchmarks/tls_cost.py)."""
    return ((TOKEN_METADATA_KEY, token),) if token else ()


# ---------------------------------------------------------------------------- exposure
def is_loopback(host: str) -> bool:
    """Whether `host` (an address's host part, brackets allowed) only reaches this machine."""
    host = host.strip("[]")
    if not host:
        return False  # ":PORT" listens on every interface
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except (OSError, ValueError):
            return False


def warn_if_exposed(what: str, address: str, *, is_protected: bool) -> bool:
    """Warn (stderr, via logging) when `what` listens beyond this machine with nothing protecting
    it; returns whether it warned. Unix sockets never leave the machine."""
    if address.startswith("unix:") or is_protected:
        return False
    host = address.rsplit(":", 1)[0]
    if is_loopback(host):
        return False
    log.warning(
        "%s listens on %s, reachable from other machines, without TLS or a key: anyone who "
        "reaches it can use it (see README, Security: --tls-dir, --api-key)",
        what,
        address,
    )
    return True
