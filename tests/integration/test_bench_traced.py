"""A traced bench run against a real server: bench traces its own side and says so, records the
deployment, `describe` prints it, and `traces summarize` picks each run out of the span files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import cli
from tests.harness import serve


def _bench(address: str, label: str, num_requests: int, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    env = {**os.environ, "HOPSCOPE_TRACE_FILE": str(tmp_path / f"client-{label}.jsonl")}
    out = tmp_path / f"{label}.json"
    argv = ["bench", "--address", address, "--concurrency", "2", "--num-requests",
            str(num_requests), "--input-len", "8", "--output-len", "4", "--label", label,
            "--out", str(out), "--no-live", "--no-plots"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-P", "-m", "deploy.cli", *argv],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracing: client spans" in result.stdout  # it says that it traces its side
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def _summarize(capsys: pytest.CaptureFixture[str], spans: Path, *filters: str) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    assert cli.main(["traces", "summarize", "--input", str(spans), *filters, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_a_traced_bench_run_is_recorded_and_summarized_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOPSCOPE_TRACE_FILE", str(tmp_path / "server.jsonl"))
    with serve("inproc", "--kv-cache-mb", "16") as served:
        monkeypatch.delenv("HOPSCOPE_TRACE_FILE")
        assert cli.main(["describe", "--address", served.address, "--json"]) == 0
        described = json.loads(capsys.readouterr().out)
        assert described["placement"] == "inproc" and described["model"]["name"] == "tiny"
        first = _bench(served.address, "first", 3, tmp_path)
        _bench(served.address, "second", 2, tmp_path)
    assert first["deployment"]["placement"] == "inproc"
    assert {e["transport"] for e in first["deployment"]["edges"]} == {"inproc"}
    spans = tmp_path / "all.jsonl"  # server spans flushed at its exit, plus both clients'
    spans.write_text("".join((tmp_path / n).read_text() for n in
                             ("server.jsonl", "client-first.jsonl", "client-second.jsonl")))  # fmt: skip
    assert _summarize(capsys, spans)["requests"] == 5
    picked = _summarize(capsys, spans, "--requests", first["requests_file"])
    assert picked["requests"] == 3
    assert picked["components"]["network.client_tokenizer"]["mean_ms"] is not None  # traced
    assert _summarize(capsys, spans, "--label", "second")["requests"] == 2
