"""`serve --http-port 0` in a multi-process placement prints its HTTP line, `bench --url` drives
it with the same records as the gRPC path, and a service that goes down is a 503."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from deploy.lifecycle import start_serve
from deploy.spec import HTTP_RE
from services.models import resolve_model
from services.models.chat_template import render_chat


def test_bench_url_against_a_colocated_http_front_door_then_a_503(tmp_path: Path) -> None:
    served = start_serve(
        ["--no-ray", "--placement", "colocated", "--model", "tiny", "--http-port", "0"],
        log_path=tmp_path / "serve.log",
    )
    try:
        # printed right after the front-door line start_serve waited for
        url = next(m["url"] for ln in served.child.last_lines(50) if (m := HTTP_RE.search(ln)))
        out = tmp_path / "bench.json"
        bench = subprocess.run(
            [sys.executable, "-P", "-m", "deploy.cli", "bench", "--url", url,
             "--concurrency", "2", "--num-requests", "6", "--input-len", "16",
             "--output-len", "8", "--out", str(out), "--no-plots", "--no-live"],
            check=False, capture_output=True, text=True, timeout=120,
            cwd=Path(__file__).parents[2],
        )  # fmt: skip
        assert bench.returncode == 0, bench.stdout + bench.stderr
        summary = json.loads(out.read_text())["summary"]
        assert summary["completed"] == 6 and summary["failed"] == 0
        records = [
            json.loads(line) for line in Path(summary_requests(out)).read_text().splitlines()
        ]
        assert all(r["n_out"] == 8 and r["n_in"] == 16 and len(r["itl_ms"]) == 7 for r in records)
        assert httpx.get(f"{url}/health").status_code == 200
        scheduler = next(s for s in served.describe()["services"] if s["name"] == "scheduler")
        # the supervisor paused (it would restart the scheduler at once), the scheduler killed
        os.kill(served.child.pid, signal.SIGSTOP)
        try:
            os.kill(int(scheduler["pid"]), signal.SIGKILL)
            down = _wait_status(url, {"prompt": "hi", "max_tokens": 4}, 503)
            assert down.json()["error"]["type"] == "service_unavailable"
            assert httpx.get(f"{url}/health", timeout=10).status_code == 503
        finally:
            os.kill(served.child.pid, signal.SIGCONT)
    finally:
        served.stop()


def test_bench_chat_renders_each_prompt_through_the_template_on_both_front_doors(
    tmp_path: Path,
) -> None:
    prompts = ["Hello there", "What is the capital of France?"]
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": p, "max_tokens": 4}) + "\n" for p in prompts))
    source = resolve_model("tiny")
    tokenizer = source.load_tokenizer()
    assert source.chat_template is not None
    rendered = [
        render_chat(source.chat_template, [{"role": "user", "content": p}]) for p in prompts
    ]
    want_n_in = sorted(len(tokenizer.encode(text).ids) for text in rendered)
    assert want_n_in != sorted(len(tokenizer.encode(p).ids) for p in prompts)
    served = start_serve(
        ["--no-ray", "--placement", "inproc", "--model", "tiny", "--http-port", "0"],
        log_path=tmp_path / "serve.log",
    )
    try:
        url = next(m["url"] for ln in served.child.last_lines(50) if (m := HTTP_RE.search(ln)))
        for name, target in (("grpc", ["--address", served.address]), ("http", ["--url", url])):
            out = tmp_path / f"{name}.json"
            bench = subprocess.run(
                [sys.executable, "-P", "-m", "deploy.cli", "bench", *target, "--chat",
                 "--dataset", str(dataset), "--concurrency", "1", "--num-requests", "2",
                 "--out", str(out), "--no-plots", "--no-live"],
                check=False, capture_output=True, text=True, timeout=120,
                cwd=Path(__file__).parents[2],
            )  # fmt: skip
            assert bench.returncode == 0, bench.stdout + bench.stderr
            assert json.loads(out.read_text())["summary"]["failed"] == 0
            records = Path(summary_requests(out)).read_text().splitlines()
            assert sorted(json.loads(r)["n_in"] for r in records) == want_n_in, name
    finally:
        served.stop()


def summary_requests(summary_path: Path) -> str:
    return str(json.loads(summary_path.read_text())["requests_file"])


def _wait_status(url: str, body: dict[str, object], status: int) -> httpx.Response:
    import time

    deadline = time.monotonic() + 30
    while True:
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        time.sleep(0.2)
