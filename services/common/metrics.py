"""Prometheus metrics of one hopscope service (prometheus-client), served on /metrics.

Every service owns a `ServiceMetrics` with its own registry (several services can share a process
in the `inproc` placement without clashing) and records into it from the hot path: each record is
a pre-bound child's `set`/`observe`, a lock and an add, no label lookup. Names follow Prometheus
conventions: `hopscope_<what>_<unit>`, each series labelled with `service`.

    metrics = ServiceMetrics("scheduler")
    port = start_metrics_server(metrics, "127.0.0.1", METRICS_PORTS["scheduler"])
    metrics.set_queue(num_waiting=3, num_running=12)
    metrics.observe_step(batch_size=12, step_ms=4.2)
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server as _start_http_server

from services.common.peer_auth import warn_if_exposed
from services.config import DEFAULT_METRICS_BASE_PORT

# Default /metrics port of each service: `serve --metrics-port BASE` puts them at BASE + offset
# (BASE 0: any free port each; the default base is services/config.py's). deploy/prometheus
# scrapes the defaults.
METRICS_PORT_OFFSETS: dict[str, int] = {"tokenizer": 0, "scheduler": 1, "worker": 2}
METRICS_PORTS: dict[str, int] = {
    name: DEFAULT_METRICS_BASE_PORT + offset for name, offset in METRICS_PORT_OFFSETS.items()
}


def metrics_port(service_name: str, base_port: int) -> int:
    """The service's /metrics port for a base port (0: any free port)."""
    return base_port + METRICS_PORT_OFFSETS[service_name] if base_port else 0


# Millisecond buckets from a fast CPU step (0.1 ms) to a long generation (60 s).
LATENCY_BUCKETS_MS = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    """The metrics one service exposes; the record methods are cheap enough for every step."""

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""  # where /metrics is served (set by serve_metrics); "" when not served
        gauges = {
            "queue_length": "Requests waiting to be scheduled",
            "running_seqs": "Sequences currently running (prefill or decode)",
            "kv_blocks_used": "KV-cache blocks allocated to sequences",
            "kv_blocks_free": "KV-cache blocks free",
            "kv_blocks_total": "KV-cache blocks in all (used + free)",
        }
        self._gauges = {name: self._gauge(name, doc) for name, doc in gauges.items()}
        self._batch_size = self._histogram("batch_size", "Sequences per step", BATCH_SIZE_BUCKETS)
        self._step_ms = self._histogram("step_ms", "Time of one batched step (ms)")
        self._ttft_ms = self._histogram("ttft_ms", "Time to first token per request (ms)")
        self._tpot_ms = self._histogram("tpot_ms", "Time per output token after the first (ms)")
        self._e2e_ms = self._histogram("e2e_ms", "End-to-end time per request (ms)")
        self._rpc_duration_ms = Histogram(
            "hopscope_rpc_duration_ms",
            "Duration of one RPC or one message round trip on a stream (ms), by method",
            labelnames=("service", "method"),
            buckets=LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self._rpc_children: dict[str, Histogram] = {}

    def _gauge(self, name: str, doc: str) -> Gauge:
        gauge = Gauge(f"hopscope_{name}", doc, ("service",), registry=self.registry)
        return gauge.labels(self.service_name)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_MS
    ) -> Histogram:
        histogram = Histogram(
            f"hopscope_{name}", doc, ("service",), buckets=buckets, registry=self.registry
        )
        return histogram.labels(self.service_name)

    # --- gauges (scheduler: queue and KV accounting; worker: KV blocks it holds)

    def set_queue(self, *, num_waiting: int, num_running: int) -> None:
        self._gauges["queue_length"].set(num_waiting)
        self._gauges["running_seqs"].set(num_running)

    def set_kv_blocks(self, *, num_used: int, num_free: int) -> None:
        self._gauges["kv_blocks_used"].set(num_used)
        self._gauges["kv_blocks_free"].set(num_free)
        self._gauges["kv_blocks_total"].set(num_used + num_free)

    # --- histograms

    def observe_step(self, *, batch_size: int, step_ms: float) -> None:
        self._batch_size.observe(batch_size)
        self._step_ms.observe(step_ms)

    def observe_request(
        self, *, ttft_ms: float | None = None, tpot_ms: float | None = None, e2e_ms: float
    ) -> None:
        """One finished request; `ttft_ms`/`tpot_ms` are None when it produced no token / one."""
        if ttft_ms is not None:
            self._ttft_ms.observe(ttft_ms)
        if tpot_ms is not None:
            self._tpot_ms.observe(tpot_ms)
        self._e2e_ms.observe(e2e_ms)

    def observe_rpc(self, method: str, duration_ms: float) -> None:
        child = self._rpc_children.get(method)
        if child is None:
            child = self._rpc_duration_ms.labels(self.service_name, method)
            self._rpc_children[method] = child
        child.observe(duration_ms)

    # --- exposition

    def exposition(self) -> str:
        """The text /metrics serves (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry).decode()

    def stop_server(self) -> None:
        """Stop the /metrics endpoint started by `start_metrics_server`, if any."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class MetricsServerError(RuntimeError):
    """The /metrics endpoint could not listen where it was asked to."""


def start_metrics_server(metrics: ServiceMetrics, host: str, port: int) -> int:
    """Serve `metrics` on http://HOST:PORT/metrics from a daemon thread; returns the bound port.

    `port` 0 disables the endpoint (returns 0): a service that is not scraped pays nothing.
    Stop it with `metrics.stop_server()`.
    """
    if port == 0:
        return 0
    return _bind_metrics_server(metrics, host, port)


def _bind_metrics_server(metrics: ServiceMetrics, host: str, port: int) -> int:
    """Like start_metrics_server, but port 0 binds any free port."""
    if not 0 <= port < 65536:
        raise MetricsServerError(f"metrics port must be in [0, 65535], got {port}")
    if metrics._server is not None:
        raise MetricsServerError(f"metrics of {metrics.service_name} are already being served")
    try:
        server, thread = _start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise MetricsServerError(
            f"cannot serve {metrics.service_name} metrics on {host}:{port}: {exc}; "
            "is the port already in use? (`serve --metrics-port 0` picks free ports)"
        ) from exc
    metrics._server, metrics._thread = server, thread
    return int(server.server_address[1])


def serve_metrics(service_name: str, address: str) -> ServiceMetrics:
    """The service's metrics, served on `address` ("HOST:PORT", port 0: any free one) unless it
    is "" (off)."""
    metrics = ServiceMetrics(service_name)
    if address:
        host, _, port = address.rpartition(":")
        # /metrics has no key: beyond loopback anyone can read it (it holds no prompts or tokens)
        warn_if_exposed(f"{service_name} /metrics", address, is_protected=False)
        bound_port = _bind_metrics_server(metrics, host, int(port))
        metrics.url = f"http://{host}:{bound_port}/metrics"
    return metrics
