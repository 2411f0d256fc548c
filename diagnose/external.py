"""The diagnosis of an external OpenAI-compatible server (an experiment plan's `target:`): the
client's timings (`hopscope bench --url`), the CPU time of its process tree, its Prometheus
`/metrics` when it serves them (vLLM's `vllm:` gauges, counters and histograms; llama.cpp's
`llamacpp:`), scraped before and after the workload so counters and histograms are this
workload's, and its spans when it exports them (vLLM's `llm_request`, decomposed by
tracing/vllm.py: queue, prefill, decode, and the client→server hop). Each rule of
diagnose/rules.py is evaluated where these inputs suffice and listed under `not_evaluated`, with
what it lacks, where not."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

from diagnose.external_spans import SpanEvidence, span_evidence
from diagnose.rules import SCHEDULING_E2E_SHARE, TYPES

NO_SPANS = "needs hopscope's spans ({}), which an external server does not export"
SPAN_NEEDS = {
    "network": "the hops' wire and wait time",
    "memory_io": "engine step times and the step-time fit",
    "compute": "engine step times and the step-time fit",
    "host_cpu": "the scheduler's step gaps and the worker's overhead around each step",
    "prefill_interference": "which decode steps also carried prompt tokens",
}
# histogram (seconds) -> our name: mean per request over the workload, ms
VLLM_HISTOGRAMS = {
    "vllm:request_queue_time_seconds": "queue_ms",
    "vllm:e2e_request_latency_seconds": "e2e_ms",
    "vllm:time_to_first_token_seconds": "ttft_ms",
    "vllm:request_prefill_time_seconds": "prefill_ms",
    "vllm:request_decode_time_seconds": "decode_ms",
    "vllm:time_per_output_token_seconds": "tpot_ms",
    "vllm:inter_token_latency_seconds": "itl_ms",
}
VLLM_COUNTERS = ("vllm:num_preemptions_total", "vllm:generation_tokens_total",
                 "vllm:prompt_tokens_total")  # fmt: skip
VLLM_KV_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
LLAMACPP_COUNTERS = ("llamacpp:prompt_seconds_total", "llamacpp:tokens_predicted_seconds_total",
                     "llamacpp:tokens_predicted_total", "llamacpp:prompt_tokens_total")  # fmt: skip


def prom_samples(text: str) -> dict[str, float]:
    """Sample name -> value summed over labels (histogram `_sum`/`_count` included)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
    except ValueError:
        return {}
    return values


def server_metrics(before: str, after: str) -> dict[str, Any]:
    """What the server's /metrics say about the workload: {"kind": vllm|llamacpp|other|none, ...}."""
    b, a = prom_samples(before), prom_samples(after)
    if not a:
        return {"kind": "none"}
    delta = {k: a[k] - b.get(k, 0.0) for k in a}
    if any(k.startswith("vllm:") for k in a):
        out: dict[str, Any] = {"kind": "vllm"}
        for name, key in VLLM_HISTOGRAMS.items():
            count = delta.get(name.replace("_seconds", "_seconds_count"))
            total = delta.get(name.replace("_seconds", "_seconds_sum"))
            if count and total is not None:
                out[key] = round(total / count * 1e3, 3)
        for name in VLLM_COUNTERS:
            if name in delta:
                out[name.removeprefix("vllm:")] = delta[name]
        iteration_count = delta.get("vllm:iteration_tokens_total_count")
        if iteration_count:
            out["tokens_per_step"] = round(
                delta["vllm:iteration_tokens_total_sum"] / iteration_count, 2
            )
        return out
    if any(k.startswith("llamacpp:") for k in a):
        out = {"kind": "llamacpp"}
        for name in LLAMACPP_COUNTERS:
            if name in delta:
                out[name.removeprefix("llamacpp:")] = round(delta[name], 4)
        return out
    return {"kind": "other", "samples": len(a)}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _ev(value: Any, unit: str) -> dict[str, Any]:
    return {"value": round(value, 4) if isinstance(value, float) else value, "unit": unit}


def diagnose_target_variant(variant_dir: Path) -> dict[str, Any]:
    """diagnosis.json of one variant of an external-target experiment (every round pooled:
    medians over rounds)."""
    rounds = sorted(p for p in variant_dir.glob("round-*") if (p / "bench.json").exists())
    if not rounds:
        raise ValueError(f"{variant_dir}: no complete round")
    benches = [json.loads((r / "bench.json").read_text())["summary"] for r in rounds]
    cpus = [json.loads(_read(r / "cpu.json") or "{}") for r in rounds]
    metrics = [
        server_metrics(
            _read(r / "metrics_before" / "server.prom"), _read(r / "metrics" / "server.prom")
        )
        for r in rounds
    ]

    def med(values: list[Any]) -> float | None:
        values = [float(v) for v in values if isinstance(v, (int, float))]
        return round(median(values), 3) if values else None

    measured = {
        "requests": sum(int(b.get("completed", 0)) for b in benches),
        "output_tok_s": med([b.get("output_token_throughput") for b in benches]),
        **{
            f"{key}_{p}_ms": med([(b.get(f"{key}_ms") or {}).get(p) for b in benches])
            for key in ("ttft", "tpot", "itl", "e2e")
            for p in ("p50", "p99")
        },
        "server_cpu_us_per_token": med(
            [(c.get("cpu_us_per_token") or {}).get("server") for c in cpus]
        ),
    }
    kind = metrics[0]["kind"] if metrics else "none"
    server = {
        key: med([m.get(key) for m in metrics])
        for key in sorted({k for m in metrics for k in m if k != "kind"})
    }
    findings: list[dict[str, Any]] = []
    scores: dict[str, float] = {}
    not_evaluated: dict[str, str] = {t: NO_SPANS.format(SPAN_NEEDS[t]) for t in SPAN_NEEDS}
    spans = span_evidence(rounds, variant_dir.name, measured.get("tpot_p50_ms"))
    if spans is not None:
        _apply_span_evidence(spans, findings, scores, not_evaluated)
    queue_ms, e2e_ms = server.get("queue_ms"), server.get("e2e_ms")
    if spans is not None and "scheduling" in scores:
        pass  # the spans' per-request queue time decided it
    elif queue_ms is not None and e2e_ms:
        share = min(1.0, queue_ms / e2e_ms)
        scores["scheduling"] = round(share, 4)
        if share >= SCHEDULING_E2E_SHARE:
            findings.append(
                {
                    "type": "scheduling",
                    "score": round(share, 4),
                    "symptom": f"requests wait {share:.0%} of their end-to-end time in the "
                    "server's queue before they are scheduled (the server's own histograms)",
                    "evidence": {
                        "queue_mean_ms": _ev(queue_ms, "ms"),
                        "e2e_mean_ms": _ev(e2e_ms, "ms"),
                        "threshold_share": _ev(SCHEDULING_E2E_SHARE, "share of E2E"),
                    },
                    "suggestions": [
                        {
                            "method": "more sequences per step",
                            "switch": "--max-num-seqs",
                            "expected_effect": "less queueing while the cores keep up; TPOT "
                            "grows with the batch",
                        }
                    ],
                }
            )
    else:
        not_evaluated["scheduling"] = (
            "needs the queue time: hopscope's queue span, or the server's "
            "vllm:request_queue_time_seconds histogram (its /metrics: "
            f"{'none served' if kind == 'none' else kind + ', without it'})"
        )
    no_spans = (
        "external target: no spans, so the per-component decomposition, the what-if and the "
        "disaggregation prediction are not available; latencies are the client's"
    )
    notes = [spans.note if spans is not None else no_spans, f"server metrics: {kind}"]
    if server.get("num_preemptions_total"):
        notes.append(f"the server preempted {server['num_preemptions_total']:g} requests (KV full)")
    if measured["server_cpu_us_per_token"] is None:
        notes.append("no server CPU per token: the target was not started by the experiment")
    findings.sort(key=lambda f: -float(f["score"]))
    primary = findings[0]["type"] if findings else "undetermined"
    diagnosis = {
        "primary": primary,
        "findings": findings,
        "scores": scores,
        "not_evaluated": {t: not_evaluated[t] for t in TYPES if t in not_evaluated},
        "measured": measured,
        "server_metrics": {"kind": kind, **server},
        "notes": notes,
    }
    if spans is not None:
        diagnosis["decomposition"] = spans.decomposition
    return diagnosis


def _apply_span_evidence(
    spans: SpanEvidence,
    findings: list[dict[str, Any]],
    scores: dict[str, float],
    not_evaluated: dict[str, str],
) -> None:
    """The rules the server's spans decide: their findings and scores; the rest keep a reason
    that says what the spans lack."""
    for rule, finding in spans.findings.items():
        scores[rule] = finding["score"]
        not_evaluated.pop(rule, None)
        if finding.pop("is_fired"):
            findings.append(finding)
    not_evaluated.update(spans.not_evaluated)


def diagnose_target_experiment(exp_dir: Path) -> dict[str, Any]:
    """Every variant of an external-target experiment: DIR/VARIANT/diagnosis.json and the
    `diagnosis` of each variant in summary.json."""
    summary_path = exp_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"variants": []}
    results: dict[str, dict[str, Any]] = {}
    for variant in summary.get("variants", []):
        name = str(variant["name"])
        folder = exp_dir / name.replace("/", "_").replace(" ", "_")
        try:
            diagnosis = diagnose_target_variant(folder)
        except (ValueError, OSError) as exc:
            results[name] = {"error": str(exc)}
            continue
        (folder / "diagnosis.json").write_text(json.dumps(diagnosis, indent=2) + "\n")
        results[name] = {"diagnosis": diagnosis}
        variant["diagnosis"] = diagnosis
    if summary_path.exists():
        summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return results
