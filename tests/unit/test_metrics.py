"""Service metrics: what a Prometheus scrape of a service shows."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from services.common.metrics import (
    METRICS_PORTS,
    MetricsServerError,
    ServiceMetrics,
    start_metrics_server,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_recorded_values_show_up_in_the_exposition() -> None:
    metrics = ServiceMetrics("scheduler")
    metrics.set_queue(num_waiting=7, num_running=3)
    metrics.set_kv_blocks(num_used=40, num_free=24)
    metrics.observe_step(batch_size=3, step_ms=4.5)
    metrics.observe_request(ttft_ms=20.0, tpot_ms=5.0, e2e_ms=120.0)
    metrics.observe_rpc("Step", 0.3)
    metrics.observe_rpc("Step", 0.7)

    text = metrics.exposition()

    assert 'hopscope_queue_length{service="scheduler"} 7.0' in text
    assert 'hopscope_running_seqs{service="scheduler"} 3.0' in text
    assert 'hopscope_kv_blocks_used{service="scheduler"} 40.0' in text
    assert 'hopscope_kv_blocks_free{service="scheduler"} 24.0' in text
    assert 'hopscope_batch_size_count{service="scheduler"} 1.0' in text
    assert 'hopscope_step_ms_sum{service="scheduler"} 4.5' in text
    assert 'hopscope_ttft_ms_sum{service="scheduler"} 20.0' in text
    assert 'hopscope_tpot_ms_sum{service="scheduler"} 5.0' in text
    assert 'hopscope_e2e_ms_sum{service="scheduler"} 120.0' in text
    assert 'hopscope_rpc_duration_ms_count{method="Step",service="scheduler"} 2.0' in text


def test_a_request_with_one_token_records_no_tpot() -> None:
    metrics = ServiceMetrics("tokenizer")
    metrics.observe_request(ttft_ms=10.0, tpot_ms=None, e2e_ms=10.0)
    text = metrics.exposition()
    assert 'hopscope_tpot_ms_count{service="tokenizer"} 0.0' in text
    assert 'hopscope_e2e_ms_count{service="tokenizer"} 1.0' in text


def test_services_in_one_process_keep_their_metrics_apart() -> None:
    scheduler, worker = ServiceMetrics("scheduler"), ServiceMetrics("worker")
    scheduler.set_queue(num_waiting=5, num_running=0)
    assert 'service="scheduler"' not in worker.exposition()
    assert "hopscope_queue_length" in worker.exposition()  # every series exists from the start


def test_metrics_endpoint_serves_the_exposition_over_http() -> None:
    metrics = ServiceMetrics("worker")
    metrics.observe_step(batch_size=8, step_ms=12.0)
    port = start_metrics_server(metrics, "127.0.0.1", _free_port())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert 'hopscope_step_ms_sum{service="worker"} 12.0' in body
    finally:
        metrics.stop_server()


def test_port_zero_disables_the_endpoint() -> None:
    assert start_metrics_server(ServiceMetrics("worker"), "127.0.0.1", 0) == 0


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsServerError, match="already in use"):
            start_metrics_server(ServiceMetrics("worker"), "127.0.0.1", port)


def test_default_ports_are_distinct_per_service() -> None:
    assert set(METRICS_PORTS) == {"tokenizer", "scheduler", "worker"}
    assert len(set(METRICS_PORTS.values())) == 3
