"""Experiment plans whose baseline is an external OpenAI-compatible server (`target:`): parsing,
refusals that name what is allowed, the start command per variant, and the diagnosis from the
client's timings and the server's Prometheus metrics (no spans)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from diagnose.external import diagnose_target_variant, server_metrics
from experiment.cpu import read_cpu_s, tree_cpu_s, tree_pids
from experiment.plan import TARGET_KEYS, Plan, PlanError, Target, load_plan, parse_plan


def _plan(**overrides: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "target": {"start": "myserver --port {port}"},
        "baseline": {"max_num_seqs": 8},
        "workload": {"concurrency": 4, "num_requests": 8},
        "factors": {"max-num-seqs": [2, 16], "enable_prefix_caching": [False]},
    }
    plan.update(overrides)
    return plan


def _target(plan: Plan) -> Target:
    assert plan.target is not None
    return plan.target


def _refusal(plan: dict[str, Any]) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(plan)
    return str(caught.value)


def test_an_external_target_plan_expands_into_variants_of_the_servers_flags() -> None:
    plan = parse_plan(_plan())
    assert [v.name for v in plan.variants] == [
        "baseline", "max_num_seqs=2", "max_num_seqs=16", "enable_prefix_caching=false",
    ]  # fmt: skip
    assert plan.target is not None and plan.target.url == "http://127.0.0.1:{port}"
    assert _target(plan).command(plan.variants[0].serve, 8123) == (
        "myserver --port 8123 --max-num-seqs 8"
    )
    last = plan.variants[-1]
    assert last.serve_argv() == ["--max-num-seqs", "8", "--no-enable-prefix-caching"]
    assert not last.is_ray and last.num_nodes == 1
    resolved = plan.resolved()
    assert resolved["target"]["start"] == "myserver --port {port}"
    assert resolved["baseline"]["start"] == "myserver --port {port} --max-num-seqs 8"
    assert "url" not in resolved["workload"]


def test_flags_go_where_the_start_command_says_and_python_is_this_interpreter() -> None:
    plan = parse_plan(_plan(target={"start": "{python} -m srv {flags} --port {port} -v"}))
    command = _target(plan).command(plan.variants[1].serve, 9)
    assert command.endswith("-m srv --max-num-seqs 2 --port 9 -v")
    assert not command.startswith("{python}")


def test_an_unknown_target_key_names_the_allowed_ones() -> None:
    text = _refusal(_plan(target={"start": "s --port {port}", "restart": "x"}))
    assert "target.restart: unknown target key; allowed: " + ", ".join(TARGET_KEYS) in text


def test_a_target_refusal_says_what_is_allowed() -> None:
    assert "target.url: 'localhost:8000'; allowed: http://HOST:PORT" in _refusal(
        _plan(target={"url": "localhost:8000", "start": "s"})
    )
    text = _refusal(_plan(target={"url": "http://127.0.0.1:8000"}))  # already up: no factors
    assert "factors: a target without start is measured as it is" in text
    assert "baseline: a target without start takes no flags" in text
    assert "{port} needs target.start" in _refusal(
        {"target": {"url": "http://h:{port}"}, "workload": {"concurrency": 1}}
    )
    text = _refusal(_plan(factors={"max_num_seqs": [8], "bad flag": [1], "x": [[1]]}))
    assert "factors.max_num_seqs: 8 equals the baseline's max_num_seqs" in text
    assert "factors.bad flag: not a flag name" in text
    assert "factors.x: [1]; allowed: numbers, strings or booleans" in text
    assert "target: expected a URL or a mapping with url, start" in _refusal(_plan(target=[1]))
    assert "unknown plan key; allowed: " in _refusal(_plan(targets={}))


def test_a_url_that_is_already_up_is_a_baseline_only_plan() -> None:
    plan = parse_plan({"target": "http://127.0.0.1:8000/", "workload": {"concurrency": 2}})
    assert [v.name for v in plan.variants] == ["baseline"]
    assert plan.target is not None and plan.target.url_for(0) == "http://127.0.0.1:8000"


def test_the_workload_is_checked_as_today_and_the_url_is_the_experiments() -> None:
    text = _refusal(_plan(workload={"concurrency": 2, "url": "http://x", "bogus": 1}))
    assert "workload.url: not a `hopscope bench` flag a plan can set" in text
    assert "workload.bogus" in text


def test_the_builtin_vllm_plan_varies_max_num_seqs_and_max_num_batched_tokens() -> None:
    plan = load_plan("vllm-batch")
    assert set(plan.factors) == {"max_num_seqs", "max_num_batched_tokens"}
    command = _target(plan).command(plan.variants[1].serve, 8000)
    assert "vllm.entrypoints.openai.api_server" in command and "--port 8000" in command
    assert "--max-num-seqs 2 --max-num-batched-tokens 2048" in command


VLLM_BEFORE = """\
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_sum{model_name="m"} 1.0
vllm:request_queue_time_seconds_count{model_name="m"} 2.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_sum{model_name="m"} 2.0
vllm:e2e_request_latency_seconds_count{model_name="m"} 2.0
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="m"} 0.0
"""
VLLM_AFTER = """\
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_sum{model_name="m"} 5.0
vllm:request_queue_time_seconds_count{model_name="m"} 6.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_sum{model_name="m"} 10.0
vllm:e2e_request_latency_seconds_count{model_name="m"} 6.0
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="m"} 3.0
"""


def test_vllm_metrics_are_this_workloads_the_difference_of_two_scrapes() -> None:
    metrics = server_metrics(VLLM_BEFORE, VLLM_AFTER)
    assert metrics["kind"] == "vllm"
    assert metrics["queue_ms"] == 1000.0  # (5 - 1) s over 4 requests
    assert metrics["e2e_ms"] == 2000.0
    assert metrics["num_preemptions_total"] == 3.0
    assert server_metrics("", "# scrape failed\n") == {"kind": "none"}


def _round(folder: Path, before: str, after: str) -> None:
    (folder / "metrics").mkdir(parents=True)
    (folder / "metrics_before").mkdir()
    (folder / "metrics_before" / "server.prom").write_text(before)
    (folder / "metrics" / "server.prom").write_text(after)
    summary = {"completed": 4, "output_token_throughput": 50.0,
               "ttft_ms": {"p50": 300.0, "p99": 900.0}, "tpot_ms": {"p50": 40.0, "p99": 60.0}}  # fmt: skip
    (folder / "bench.json").write_text(json.dumps({"summary": summary}))
    (folder / "cpu.json").write_text(json.dumps({"cpu_us_per_token": {"server": 9000.0}}))


def test_the_diagnosis_evaluates_queueing_from_the_servers_metrics(tmp_path: Path) -> None:
    _round(tmp_path / "round-1", VLLM_BEFORE, VLLM_AFTER)
    diagnosis = diagnose_target_variant(tmp_path)
    assert diagnosis["primary"] == "scheduling"
    assert diagnosis["scores"]["scheduling"] == 0.5
    assert set(diagnosis["not_evaluated"]) == {
        "memory_io", "compute", "network", "host_cpu", "prefill_interference",
    }  # fmt: skip
    assert all("spans" in why for why in diagnosis["not_evaluated"].values())
    assert diagnosis["measured"]["server_cpu_us_per_token"] == 9000.0
    assert diagnosis["measured"]["ttft_p99_ms"] == 900.0


def test_without_metrics_the_diagnosis_says_every_rule_it_could_not_evaluate(
    tmp_path: Path,
) -> None:
    _round(tmp_path / "round-1", "", "# scrape of http://x/metrics failed: 404\n")
    diagnosis = diagnose_target_variant(tmp_path)
    assert diagnosis["primary"] == "undetermined" and diagnosis["findings"] == []
    assert "scheduling" in diagnosis["not_evaluated"]
    assert "none served" in diagnosis["not_evaluated"]["scheduling"]


def test_tree_cpu_counts_this_process_and_its_children() -> None:
    me = os.getpid()
    assert me in tree_pids(me)
    before = read_cpu_s(me)  # read first: this process's ticks only grow
    assert tree_cpu_s(me) >= before
