"""A minimal OTLP/gRPC trace receiver that writes OTLP JSON lines, for machines without Jaeger."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Self

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tracing.otlp_json import OtlpJsonLinesWriter

DEFAULT_LISTEN = "127.0.0.1:4317"
_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# Bounded: a few handler threads and a cap on queued calls, so a flood of exporters meets
# RESOURCE_EXHAUSTED (which OTLP exporters retry) instead of growing memory without limit.
_NUM_WORKERS = 4
_MAX_CONCURRENT_RPCS = 64


class CollectorError(Exception):
    """The collector could not start (address taken, bad address)."""


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, writer: OtlpJsonLinesWriter) -> None:
        self._writer = writer

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._writer.write(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpCollector:
    """OTLP/gRPC TraceService receiver; `listen` may use port 0, then read `.port`."""

    def __init__(self, out_path: str | Path, listen: str = DEFAULT_LISTEN) -> None:
        self.listen = listen
        self._writer: OtlpJsonLinesWriter | None = None
        self._out_path = Path(out_path)
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self) -> Self:
        host, _, _ = _split_listen(self.listen)
        self._writer = OtlpJsonLinesWriter(self._out_path)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=_NUM_WORKERS, thread_name_prefix="otlp"),
            maximum_concurrent_rpcs=_MAX_CONCURRENT_RPCS,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                # without this a second receiver on the same port would silently share it
                ("grpc.so_reuseport", 0),
            ],
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _TraceService(self._writer), self._server
        )
        self.port = self._bind(host)
        self._server.start()
        return self

    def _bind(self, host: str) -> int:
        assert self._server is not None
        try:
            port = self._server.add_insecure_port(self.listen)
        except RuntimeError as exc:  # grpc raises on bind failure in recent versions
            port = 0
            cause: Exception | None = exc
        else:
            cause = None
        if port == 0:
            self.stop(grace_s=0)
            raise CollectorError(
                f"cannot listen on {self.listen}: the address is in use or not available "
                f"on this host; pick another with --listen {host}:PORT or stop the process "
                "holding it"
            ) from cause
        return port

    @property
    def num_spans(self) -> int:
        return self._writer.num_spans if self._writer else 0

    @property
    def out_path(self) -> Path:
        return self._out_path

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until stopped or timeout; True when the server terminated."""
        assert self._server is not None, "start() first"
        return bool(self._server.wait_for_termination(timeout_s))

    def stop(self, grace_s: float = 2.0) -> None:
        """Finish in-flight exports (up to grace_s), then flush and close the file."""
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _split_listen(listen: str) -> tuple[str, str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise CollectorError(f"--listen must be HOST:PORT (e.g. {DEFAULT_LISTEN}), got {listen!r}")
    return host, sep, int(port_text)
