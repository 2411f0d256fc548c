"""`traces summarize` picks one run out of a span file, and says "n/a" for what was not traced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_tracing_cli import run, write_otlp_lines
from tests.unit.test_tracing_decompose import request_spans, step_spans
from tracing.model import Span


def _request(trace: str, label: str, offset_ms: float) -> list[Span]:
    spans = request_spans(trace, offset_ms=offset_ms)
    spans[0].attributes["hopscope.label"] = label  # the loadgen.request root
    submit = spans[-1]
    return spans + step_spans([submit], ["prefill"], submit.start_ns / 1e6 + 10, 18, 2.0)


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    """Run "a" at t=0 s, run "b" 60 s later (span times are unix time)."""
    path = tmp_path / "spans.jsonl"
    write_otlp_lines(path, _request("a" * 32, "a", 0.0) + _request("b" * 32, "b", 60_000.0))
    return path


def _summary(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    assert run(["traces", "summarize", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_label_time_and_records_file_each_pick_one_run(
    two_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = ["--input", str(two_runs)]
    assert _summary(capsys, *source)["requests"] == 2
    assert _summary(capsys, *source, "--label", "b")["requests"] == 1
    assert _summary(capsys, *source, "--since", "30")["requests"] == 1  # unix seconds
    assert _summary(capsys, *source, "--until", "1970-01-01T00:00:30+00:00")["requests"] == 1
    records = tmp_path / "b.requests.jsonl"
    records.write_text(json.dumps({"trace_id": "b" * 32, "status": "OK"}) + "\n")
    picked = _summary(capsys, *source, "--requests", str(records), "--per-request")
    assert [r["trace_id"] for r in picked["per_request"]] == ["b" * 32]
    assert picked["filter"]["num_requests_read"] == 2


def test_a_filter_that_matches_nothing_says_so(
    two_runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["traces", "summarize", "--input", str(two_runs), "--label", "nope"]) == 1
    assert "none of the 2 requests read match the filters" in capsys.readouterr().out


def test_an_untraced_client_hop_is_na_not_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spans = [s for s in _request("c" * 32, "", 0.0) if s.service_name != "loadgen"]
    path = tmp_path / "server-only.jsonl"
    write_otlp_lines(path, spans)
    summary = _summary(capsys, "--input", str(path))
    client_hop = summary["components"]["network.client_tokenizer"]
    assert client_hop == {"mean_ms": None, "p50_ms": None, "p99_ms": None, "share": None}
    assert summary["components"]["network.scheduler_worker"]["mean_ms"] == pytest.approx(2.0)
    assert run(["traces", "summarize", "--input", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "client_tokenizer" in line)
    assert "n/a" in row and "0.000" not in row


def test_show_marks_the_untraced_client_hop_na(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spans = [s for s in _request("d" * 32, "", 0.0) if s.service_name != "loadgen"]
    path = tmp_path / "server-only.jsonl"
    write_otlp_lines(path, spans)
    assert run(["traces", "show", "d" * 32, "--input", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "network.client_tokenizer" in line)
    assert "n/a" in row
