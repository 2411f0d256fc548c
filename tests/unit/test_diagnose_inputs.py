"""Diagnosis from files, without servers: constructed spans (OTLP JSON lines, as the collector
writes them) in an experiment directory; step extraction, the fit, and the link prediction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from diagnose.calibrate import Calibration, load_calibration, store_calibration
from diagnose.experiment import WHAT_IF_PLOT, diagnose_experiment
from diagnose.inputs import load_variant
from diagnose.signals import extract
from diagnose.steps import fit_step_time, step_samples

CAL = Calibration({"uds": {1: 200.0, 32: 200.0}, "tcp": {1: 180.0, 32: 180.0},
                   "relay": {1: 300.0, 32: 300.0}}, "test", "now")  # fmt: skip
FIXED_MS, PER_TOKEN_MS, GAP_MS = 2.0, 0.05, 0.4


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def span(self) -> str:
        self.n += 1
        return f"{self.n:016x}"


def _attr(key: str, value: Any) -> dict[str, Any]:
    kind = "intValue" if isinstance(value, int) else "doubleValue"
    return {"key": key, "value": {kind: value}}


def _span(trace: str, sid: str, parent: str, name: str, kind: int, start: float, end: float,
          attrs: dict[str, Any], links: list[tuple[str, str]] = ()) -> dict[str, Any]:  # fmt: skip
    return {
        "traceId": trace,
        "spanId": sid,
        "parentSpanId": parent,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(int(start * 1e6)),
        "endTimeUnixNano": str(int(end * 1e6)),
        "attributes": [_attr(k, v) for k, v in attrs.items()],
        "links": [{"traceId": t, "spanId": s} for t, s in links],
    }


def simulate(num_requests: int, num_decode: int, hop_ms: float) -> list[dict[str, Any]]:
    """All requests arrive together, prefill in one step, then decode together: spans in ms."""
    ids = _Ids()
    traces = [f"{i + 1:032x}" for i in range(num_requests)]
    submits = [ids.span() for _ in traces]
    spans, t = [], 1000.0
    for step in range(num_decode + 1):
        is_prefill = step == 0
        tokens = 64 * num_requests if is_prefill else num_requests
        server_ms = FIXED_MS + PER_TOKEN_MS * tokens
        client, server = ids.span(), ids.span()
        attrs = {
            "hopscope.num_prefill_links": num_requests if is_prefill else 0,
            "hopscope.batch_size": num_requests,
            "hopscope.num_prefill_tokens": tokens if is_prefill else 0,
            "hopscope.num_decode_tokens": 0 if is_prefill else tokens,
        }
        links = list(zip(traces, submits))
        end = t + server_ms + hop_ms
        spans.append(_span(traces[0], client, submits[0], "hopscope.v1.Worker/Step", 3, t, end,
                           attrs, links))  # fmt: skip
        spans.append(_span(traces[0], server, client, "hopscope.v1.Worker/Step", 2,
                           t + hop_ms / 2, end - hop_ms / 2, {"hopscope.step_ms": server_ms}))  # fmt: skip
        t = end + GAP_MS
    for trace, submit in zip(traces, submits):
        attrs = {"hopscope.queue_ms": 0.5, "hopscope.num_output_tokens": num_decode + 1}
        spans.append(_span(trace, submit, "", "hopscope.v1.Scheduler/Submit", 2, 999.5, t, attrs))
    return spans


def write_variant(exp: Path, name: str, factor: str | None, value: Any, hop_ms: float) -> float:
    round_dir = exp / name / "round-1"
    round_dir.mkdir(parents=True)
    doc = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": simulate(4, 40, hop_ms)}]}]}
    (round_dir / "spans.jsonl").write_text(json.dumps(doc) + "\n")
    tpot_ms = FIXED_MS + PER_TOKEN_MS * 4 + hop_ms + GAP_MS
    bench = {"config": {"concurrency": 4}, "summary": {
        "tpot_ms": {"p50": tpot_ms}, "ttft_ms": {"p50": 30.0}, "e2e_ms": {"p50": 200.0},
        "output_token_throughput": 500.0}}  # fmt: skip
    (round_dir / "bench.json").write_text(json.dumps(bench))
    edge = {"from": "scheduler", "to": "worker", "transport": "uds"}
    if factor == "link_delay_ms":
        edge = {"from": "scheduler", "to": "worker", "transport": "tcp", "link": "relay",
                "delayMs": value}  # fmt: skip
    model = {"numBlocks": 100, "blockSize": 16}
    (round_dir / "describe.json").write_text(json.dumps({"edges": [edge], "model": model}))
    cpu = {"cpu_us_per_token": {"tokenizer": 50.0, "scheduler": 30.0, "worker": 300.0}}
    (round_dir / "cpu.json").write_text(json.dumps(cpu))
    (exp / name / "variant.json").write_text(json.dumps({"name": name, "factor": factor,
                                                         "value": value}))  # fmt: skip
    return tpot_ms


def test_steps_gaps_and_fit_from_spans(tmp_path: Path) -> None:
    write_variant(tmp_path, "baseline", None, None, hop_ms=0.3)
    run = load_variant(tmp_path / "baseline")
    samples = step_samples(run.spans)
    assert len(samples) == 41 and samples[1].gap_ms == pytest.approx(GAP_MS, abs=0.01)
    assert samples[1].hop_ms == pytest.approx(0.3, abs=0.01)
    fit = fit_step_time(samples)
    assert fit is not None
    assert fit.fixed_ms == pytest.approx(FIXED_MS, abs=0.01)
    assert fit.per_token_ms == pytest.approx(PER_TOKEN_MS, abs=0.001)
    signals = extract(run)
    assert signals.decode_steps_per_token == pytest.approx(40 / 40)
    assert signals.cpu_us_per_token["worker"] == 300.0
    # the last step: 4 sequences of 40 cached tokens, 3 blocks of 16 each, of 100 blocks
    assert signals.kv_usage == pytest.approx(0.12) and signals.num_preemptions == 0


def test_cpu_per_token_skips_rounds_without_tokens(tmp_path: Path) -> None:
    write_variant(tmp_path, "baseline", None, None, hop_ms=0.3)
    idle = {"processes": {}, "output_tokens": 0, "cpu_us_per_token": {"worker": None}}
    idle_dir = tmp_path / "baseline" / "round-2"
    idle_dir.mkdir()
    (idle_dir / "cpu.json").write_text(json.dumps(idle))
    run = load_variant(tmp_path / "baseline")
    assert run.cpu_us_per_token()["worker"] == 300.0  # the round with tokens only
    run.cpu = [idle]
    assert run.cpu_us_per_token() == {}


def test_experiment_gets_diagnoses_and_link_predictions(tmp_path: Path) -> None:
    write_variant(tmp_path, "baseline", None, None, hop_ms=0.3)
    # the relay: 0.3 ms idle + 2 x 3 ms, where the Unix socket cost 0.2 ms: 0.3 - 0.2 + 6.0 more
    measured = write_variant(tmp_path, "link_delay_ms=3", "link_delay_ms", 3, hop_ms=0.3 + 6.1)
    summary = {"variants": [{"name": "baseline", "factor": None, "value": None},
                            {"name": "link_delay_ms=3", "factor": "link_delay_ms", "value": 3}]}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    results = diagnose_experiment(tmp_path, calibration=CAL)
    assert set(results) == {"baseline", "link_delay_ms=3"}
    written = json.loads((tmp_path / "summary.json").read_text())
    delayed = written["variants"][1]
    assert delayed["diagnosis"]["primary"] == "network"
    assert written["variants"][0]["diagnosis"]["primary"] != "network"
    prediction = delayed["prediction"]
    assert prediction["from"] == "baseline"
    assert prediction["measured_tpot_p50_ms"] == pytest.approx(measured)
    assert abs(prediction["error"]) < 0.01
    assert (tmp_path / "link_delay_ms=3" / "diagnosis.json").exists()
    assert (tmp_path / "plots" / WHAT_IF_PLOT).stat().st_size > 0
    assert 3.0 in written["variants"][0]["diagnosis"]["what_if"]["delay_ms"]


def test_calibration_is_stored_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOPSCOPE_HOME", str(tmp_path))
    assert load_calibration() is None
    import socket

    mine = Calibration(CAL.round_trip_us, socket.gethostname(), "now")
    path = store_calibration(mine)
    assert path == tmp_path / "calibration.json"
    loaded = load_calibration()
    assert loaded is not None and loaded.wire_ms("relay", 16) == pytest.approx(0.3)
    assert loaded.wire_ms("inproc", 16) == 0.0


def test_a_variant_without_spans_is_reported_not_fatal(tmp_path: Path) -> None:
    write_variant(tmp_path, "baseline", None, None, hop_ms=0.3)
    write_variant(tmp_path, "max_num_seqs=2", "max_num_seqs", 2, hop_ms=0.3)
    (tmp_path / "max_num_seqs=2" / "round-1" / "spans.jsonl").write_text("")
    results = diagnose_experiment(tmp_path, calibration=CAL)
    assert "diagnosis" in results["baseline"]
    assert "tracing" in results["max_num_seqs=2"]["error"]


def test_host_cpu_names_the_hottest_functions_of_a_profile(tmp_path: Path) -> None:
    from diagnose.hotspots import hot_functions

    frames = [
        {"name": "main", "file": "/x/app.py", "line": 1},
        {"name": "encode", "file": "/x/tok.py", "line": 10},
        {"name": "EpollSelector.select", "file": "/py/selectors.py", "line": 468},
    ]
    samples = [[0, 1]] * 3 + [[0, 2]] * 5  # 3 busy in encode, 5 idle in select
    document = {"shared": {"frames": frames},
                "profiles": [{"type": "sampled", "samples": samples, "weights": [1] * 8}]}  # fmt: skip
    (tmp_path / "tokenizer.speedscope.json").write_text(json.dumps(document))
    assert hot_functions(tmp_path) == {"tokenizer": ["encode (tok.py:10) 100%"]}


def test_a_multi_step_run_counts_as_its_mean_step() -> None:
    """`--num-scheduler-steps 4`: one Step call carries 4 decode steps; the diagnosis sees a
    step of a quarter of its times (hop and gap included), not one step four times as long."""
    from tracing.decompose import STEP
    from tracing.model import Span

    trace, ms = "ab" * 16, 1_000_000
    spans = []
    for i, start in enumerate((0, 24 * ms)):  # two runs of 4 steps, 20 ms apart end to start
        client, server = f"{2 * i + 1:016x}", f"{2 * i + 2:016x}"
        attrs = {"hopscope.num_decode_tokens": 32, "hopscope.batch_size": 32,
                 "hopscope.num_steps": 4}  # fmt: skip
        spans.append(Span(trace, client, "", STEP, "CLIENT", start, start + 20 * ms, attrs))
        spans.append(Span(trace, server, client, STEP, "SERVER", start + 2 * ms, start + 18 * ms,
                          {"hopscope.step_ms": 12.0}))  # fmt: skip
    first = step_samples(spans)[0]
    assert first.num_steps == 4 and first.engine_ms == pytest.approx(3.0)
    assert first.hop_ms == pytest.approx(1.0) and first.worker_host_ms == pytest.approx(1.0)
    assert first.gap_ms == pytest.approx(1.0) and first.num_tokens == 32
