"""The diagnosis rules on constructed inputs: each type fires on its symptom and only then, the hop
split keeps busy-host wait out of `network`, and the what-if follows the written-down model."""

from __future__ import annotations

import pytest

from diagnose.calibrate import Calibration
from diagnose.core import diagnose_signals
from diagnose.links import HopLink, wire_ms
from diagnose.network import split_hops
from diagnose.rules import TYPES, engine, host_cpu, network, scheduling
from diagnose.signals import Signals
from diagnose.steps import CycleBreakdown, StepFit
from diagnose.whatif import predict

CAL = Calibration({"uds": {1: 200.0, 32: 200.0}, "tcp": {1: 180.0, 32: 180.0},
                   "relay": {1: 300.0, 32: 300.0}}, "test", "now")  # fmt: skip


def signals(**overrides: object) -> Signals:
    """A healthy colocated run: engine-bound decode steps of 5 ms, little queueing."""
    base = {
        "num_requests": 64,
        "e2e_p50_ms": 400.0,
        "ttft_p50_ms": 20.0,
        "tpot_p50_ms": 6.0,
        "output_tok_s": 3000.0,
        "queue_p50_ms": 2.0,
        "queue_share_e2e": 0.01,
        "queue_share_ttft": 0.1,
        "cycle": CycleBreakdown(5.0, 0.05, 0.4, 0.3, 200, 32.0, 32.0),
        "fit": StepFit(1.0, 0.125, 200, 0.9),  # 1 ms + 4 ms at 32 tokens: compute
        "link": HopLink("uds"),
        "edge_hop_ms": {"network.tokenizer_scheduler": 0.5},
        "edge_transport": {"network.tokenizer_scheduler": "uds"},
        "mean_output_tokens": 64,
        "steps_to_first_token_p50": 2,
        "decode_steps_per_token": 1.0,
        "mean_steps_per_request": 66,
    }
    base.update(overrides)
    s = Signals(**base)  # type: ignore[arg-type]
    if "components_mean_ms" not in overrides:
        with_components(s)
    return s


def with_components(s: Signals) -> None:
    """The mean request's decomposition these signals imply (what tracing/decompose.py measures):
    queue, one prefill step, its decode steps' SERVER time, every step's hop, the gaps."""
    decode_calls = (s.mean_output_tokens - 1) * s.decode_steps_per_token
    cycle = s.cycle
    assert cycle is not None
    parts = {
        "queue": s.queue_share_e2e * s.e2e_p50_ms,
        "compute.prefill": cycle.engine_ms,
        "compute.decode": (cycle.engine_ms + cycle.worker_host_ms) * decode_calls,
        "network.scheduler_worker": cycle.hop_ms * (decode_calls + 1),
        **s.edge_hop_ms,
        "other": cycle.gap_ms * decode_calls,
    }
    s.e2e_mean_ms = max(s.e2e_p50_ms, sum(parts.values()))
    parts["other"] += s.e2e_mean_ms - sum(parts.values())
    s.components_mean_ms = parts
    s.decode_calls_per_request = decode_calls
    s.step_calls_per_request = decode_calls + 1


def test_queueing_is_scheduling_and_a_short_queue_is_not() -> None:
    assert not scheduling(signals()).is_fired
    waiting = signals(queue_share_e2e=0.7, queue_share_ttft=0.95, queue_p50_ms=900.0)
    finding = scheduling(waiting)
    assert finding.is_fired and finding.trigger == pytest.approx(0.7)
    assert diagnose_signals(waiting, CAL)["primary"] == "scheduling"


def test_queue_share_of_ttft_needs_a_queue_longer_than_steps() -> None:
    # half of a short TTFT in line is just waiting for the running step: not a scheduling problem
    short = signals(queue_share_ttft=0.6, queue_p50_ms=3.0)
    assert not scheduling(short).is_fired
    long = signals(queue_share_ttft=0.6, queue_p50_ms=60.0)
    assert scheduling(long).is_fired


def test_injected_delay_is_network_even_on_a_busy_host() -> None:
    link = HopLink("tcp", is_relayed=True, delay_ms=3.0)
    cycle = CycleBreakdown(3.0, 0.05, 9.0, 0.5, 200, 4.0, 4.0)  # hop: 6.3 wire + 2.7 wait
    run = signals(link=link, cycle=cycle, tpot_p50_ms=12.5)
    splits = split_hops(run, CAL)
    sw = splits[0]
    assert sw.wire_ms == pytest.approx(0.3 + 6.0) and sw.wait_ms == pytest.approx(2.7)
    finding = network(run, splits)
    assert finding.is_fired and finding.trigger == pytest.approx(6.3 / 12.5, abs=0.01)
    assert diagnose_signals(run, CAL)["primary"] == "network"


def test_a_slow_hop_on_unix_sockets_is_wait_not_wire() -> None:
    # 3 ms CLIENT - SERVER on a 0.2 ms socket: the message waited for a busy process
    run = signals(cycle=CycleBreakdown(4.0, 0.05, 3.0, 1.0, 200, 32.0, 32.0), tpot_p50_ms=8.0)
    splits = split_hops(run, CAL)
    assert splits[0].wire_ms == pytest.approx(0.2) and splits[0].wait_ms == pytest.approx(2.8)
    assert not network(run, splits).is_fired
    host = host_cpu(run, splits)
    assert host.is_fired and host.trigger > 0.45
    assert "network" not in {f["type"] for f in diagnose_signals(run, CAL)["findings"]}


def test_step_time_fit_separates_memory_io_from_compute() -> None:
    memory, compute = engine(signals(fit=StepFit(4.5, 0.015, 200, 0.8)))  # 4.5 ms fixed at 32
    assert memory.is_fired and not compute.is_fired
    memory, compute = engine(signals())  # 1 ms fixed + 4 ms for 32 tokens
    assert compute.is_fired and not memory.is_fired
    assert compute.trigger == pytest.approx(5.0 / 6.0 * 0.8)


def test_full_kv_cache_or_preemptions_flag_memory_io() -> None:
    memory, _ = engine(signals(kv_usage=0.97))
    assert memory.is_fired and "KV cache 97% full" in memory.symptom
    memory, _ = engine(signals(num_preemptions=3))
    assert memory.is_fired


def test_services_costing_more_cpu_than_the_worker_is_host_cpu() -> None:
    cpu = {"tokenizer": 90.0, "scheduler": 40.0, "worker": 120.0, "client": 70.0}
    run = signals(cpu_us_per_token=cpu)
    finding = host_cpu(run, split_hops(run, CAL))
    assert finding.is_fired
    assert finding.evidence["cpu_us_per_token.tokenizer"] == {"value": 90.0, "unit": "us"}
    cheap = signals(cpu_us_per_token={"tokenizer": 20.0, "scheduler": 10.0, "worker": 300.0})
    assert not host_cpu(cheap, split_hops(cheap, CAL)).is_fired


def test_host_cpu_with_services_sharing_one_process() -> None:
    # inproc: one "pipeline" process, so there is no worker share to compare against
    run = signals(cpu_us_per_token={"pipeline": 400.0, "serve": 5.0, "client": 70.0})
    finding = host_cpu(run, split_hops(run, CAL))
    assert finding.evidence["services_vs_worker_cpu"]["value"] is None
    assert finding.evidence["cpu_us_per_token.pipeline"] == {"value": 400.0, "unit": "us"}
    assert "pipeline: 400 us CPU per token" in finding.symptom and not finding.is_fired
    hot = {"tokenizer+scheduler+worker": ["step (engine.py:10) 40%"]}
    run = signals(cpu_us_per_token={"pipeline": 400.0}, hot_functions=hot)
    assert "pipeline's hottest function: step" in host_cpu(run, split_hops(run, CAL)).symptom
    # tokenizer and scheduler in one process, the worker alone: still compared
    colocated = {"tokenizer+scheduler": 200.0, "worker": 100.0, "serve": 5.0}
    run = signals(cpu_us_per_token=colocated)
    finding = host_cpu(run, split_hops(run, CAL))
    assert finding.is_fired and finding.evidence["services_vs_worker_cpu"]["value"] == 2.0


def test_diagnosis_json_shape() -> None:
    diagnosis = diagnose_signals(signals(), CAL, [1.0, 3.0])
    assert diagnosis["primary"] in TYPES
    scores = [f["score"] for f in diagnosis["findings"]]
    assert scores == sorted(scores, reverse=True)
    for finding in diagnosis["findings"]:
        assert set(finding) == {"type", "score", "symptom", "evidence", "suggestions"}
        assert all(set(e) == {"value", "unit"} for e in finding["evidence"].values())
        for row in finding["suggestions"]:
            assert {"method", "switch", "factor", "value", "expected_effect"} <= set(row)
            assert ("predicted" in row) != ("not_predicted" in row) or row["predicted"] is None
    what_if = diagnosis["what_if"]
    assert what_if["link"] == "scheduler-worker" and what_if["delay_ms"] == [1.0, 3.0]
    assert len(what_if["tpot_p50_ms"]) == len(what_if["ttft_p50_ms"]) == 2
    assert len(what_if["output_tok_s"]) == 2
    assert any("skipped" in note for note in diagnosis["notes"])  # CPU: no roofline


def test_what_if_adds_two_delays_and_the_relay_per_step() -> None:
    run = signals()
    row = predict(run, CAL, run.link.with_delay(3.0))
    # relayed TCP (0.3 ms) + 2 x 3 ms one way, instead of the Unix socket's 0.2 ms
    assert row["delta_ms_per_step"] == pytest.approx(0.3 + 6.0 - 0.2)
    assert row["tpot_p50_ms"] == pytest.approx(6.0 + 6.1)
    assert row["ttft_p50_ms"] == pytest.approx(20.0 + 2 * 6.1)
    assert row["output_tok_s"] == pytest.approx(3000.0 * 400.0 / (400.0 + 66 * 6.1))


def test_rate_limit_adds_the_step_bytes_each_way() -> None:
    slow = HopLink("tcp", is_relayed=True, delay_ms=0.0, rate_mbit=10.0)
    fast = HopLink("tcp", is_relayed=True)
    assert wire_ms(slow, CAL, 32) > wire_ms(fast, CAL, 32) + 0.5  # a few KB at 10 Mbit/s


def test_profile_targets_share_a_process_and_skip_other_machines() -> None:
    import os
    import socket

    from diagnose.profile import targets

    me = socket.gethostname()
    describe = {
        "services": [
            {"name": "tokenizer", "pid": os.getpid(), "host": me},
            {"name": "scheduler", "pid": os.getpid(), "host": me},
            {"name": "worker", "pid": 4242, "host": "gpu-node-7"},
        ]
    }
    found, skipped = targets(describe)
    assert [(t.name, t.pid) for t in found] == [("tokenizer+scheduler", os.getpid())]
    assert len(skipped) == 1 and "worker" in skipped[0] and "gpu-node-7" in skipped[0]
