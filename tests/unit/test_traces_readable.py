"""Traces a person can read: `traces summarize` never pools two deployments, `traces show`
folds a long request's decode steps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.test_tracing_cli import run, write_otlp_lines
from tests.unit.test_tracing_decompose import MS, request_spans, step_spans
from tracing.model import Span


def _request(trace: str, placement: str, model: str, decode_ms: float, steps: int) -> list[Span]:
    """One request of a deployment: every server-side span carries its resource attributes."""
    spans = request_spans(trace)
    submit = spans[-1]
    start = submit.start_ns / MS + 10
    spans += step_spans([submit], ["prefill"], start, compute_ms=5, network_ms=1)
    for i in range(steps):
        spans += step_spans([submit], ["decode"], start + 6 + i * (decode_ms + 1), decode_ms, 1)
    resource = {"hopscope.placement": placement, "hopscope.model": model}
    return [
        s if s.service_name == "loadgen" else replace(s, resource={**s.resource, **resource})
        for s in spans
    ]


@pytest.fixture
def two_deployments(tmp_path: Path) -> Path:
    path = tmp_path / "spans.jsonl"
    spans = _request("a" * 32, "colocated", "smollm2-135m", decode_ms=2, steps=3)
    spans += _request("b" * 32, "colocated", "smollm2-135m", decode_ms=2, steps=3)
    spans += _request("c" * 32, "split", "tiny", decode_ms=20, steps=3)
    write_otlp_lines(path, spans)
    return path


def test_summarize_keeps_deployments_apart(
    two_deployments: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["traces", "summarize", "--input", str(two_deployments), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "components" not in summary  # no pooled numbers
    by_name = {
        (d["deployment"]["placement"], d["deployment"]["model"]): d for d in summary["deployments"]
    }
    assert by_name[("colocated", "smollm2-135m")]["requests"] == 2
    assert by_name[("split", "tiny")]["requests"] == 1
    # each deployment's decode time is its own: 3 steps of 2 ms vs 3 of 20 ms
    assert by_name[("colocated", "smollm2-135m")]["components"]["compute.decode"][
        "p50_ms"
    ] == pytest.approx(6.0)
    assert by_name[("split", "tiny")]["components"]["compute.decode"]["p50_ms"] == pytest.approx(
        60.0
    )

    assert run(["traces", "summarize", "--input", str(two_deployments)]) == 0
    table = capsys.readouterr().out
    assert "2 deployments in these spans" in table and "never pooled" in table
    assert "colocated / smollm2-135m" in table and "split / tiny" in table


def test_summarize_one_deployment_picked(
    two_deployments: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["traces", "summarize", "--input", str(two_deployments), "--json"]
    assert run([*argv, "--deployment", "split/tiny"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"] == 1
    assert summary["deployment"] == {"placement": "split", "model": "tiny"}


def test_show_folds_decode_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spans.jsonl"
    write_otlp_lines(path, _request("a" * 32, "colocated", "tiny", decode_ms=2, steps=40))
    assert run(["traces", "show", "a" * 32, "--input", str(path)]) == 0  # auto: long, folded
    folded = capsys.readouterr().out
    assert "decode steps folded" in folded
    step_rows = [line for line in folded.splitlines() if "Worker/Step" in line]
    # the prefill step (client, server) and the 40 decode steps as one client and one server row
    assert len(step_rows) == 4
    assert sum("×40" in row for row in step_rows) == 2
    server_row = next(row for row in step_rows if "×40" in row and "server" in row)
    assert "80.000" in server_row  # the sum: 40 steps of 2 ms
    assert run(["traces", "show", "a" * 32, "--input", str(path), "--steps", "all"]) == 0
    assert sum("Worker/Step" in line for line in capsys.readouterr().out.splitlines()) == 82
