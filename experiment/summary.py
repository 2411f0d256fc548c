"""summary.json from the raw files of an experiment directory (issue 11's "Outputs" contract):
plan, machine, started, finished, baseline, variants [{name, factor, value, deployment, rounds,
metrics, components, cpu_us_per_token, contended_rounds, vs_baseline}]. Re-runnable: it reads
only DIR.

A round run on a contended machine (cpu.json's contention.is_contended: processes outside the
deployment took cores, experiment/cpu.py) is listed in its variant's `contended_rounds`. A
comparison whose paired rounds differ in contention gets the verdict CONTENTION_DIFFERS instead
of better or worse, unless contention is the factor under test (background load)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from experiment import layout
from experiment.plan import BACKGROUND_FACTORS, BASELINE
from experiment.stats import COMPARED, RoundSamples, compare, round_samples, stats4

LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
# the verdict of a comparison whose paired rounds differ in contention (one was run on a busy
# machine, its pair was not): the difference may be the machine's, not the setting's
CONTENTION_DIFFERS = "contention differs"
_LABELS = {"compute.prefill": "prefill", "compute.decode": "decode"}


def component_label(name: str) -> str:
    """A span component as a person reads it: `network.scheduler_worker` → network scheduler→worker."""
    return _LABELS.get(name) or name.replace("network.", "network ").replace("_", "→")


def machine() -> dict[str, Any]:
    from loadgen.results import git_sha

    memory_gib = None
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages * page / 2**30, 1)
    except (ValueError, OSError):
        pass
    torch_version, device = "not installed", "cpu"
    try:
        import torch

        torch_version = torch.__version__
        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "torch": torch_version,
        "device": device,
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def build_summary(out: Path) -> dict[str, Any]:
    plan = layout.read_json(out / layout.PLAN)
    meta = layout.read_json(out / "experiment.json")
    loaded = [_load_variant(out, name) for name in plan["variants"]]
    baseline = next(v for v in loaded if v["name"] == BASELINE)
    variants = [_variant_entry(v, baseline) for v in loaded]
    return {
        "plan": plan,
        "machine": machine(),
        "started": meta.get("started"),
        "finished": meta.get("finished"),
        "wall_s": meta.get("wall_s"),
        "baseline": BASELINE,
        "variants": variants,
        "method": {
            "ci": "two-level bootstrap (rounds paired with the baseline's, then requests or "
            "time windows within each round), 2000 resamples, 95% percentile interval; "
            "ratio = geometric mean of per-round ratios",
            "verdict": "no measurable effect when the interval contains 1.0",
        },
    }


def write_summary(out: Path) -> Path:
    path = out / layout.SUMMARY
    previous = layout.read_json(path) if path.exists() else {}
    summary = build_summary(out)
    _keep_diagnosis(previous, summary)
    layout.write_json(path, summary)
    return path


def _keep_diagnosis(previous: dict[str, Any], summary: dict[str, Any]) -> None:
    """A re-written summary keeps what `hopscope diagnose` added to it."""
    old = {v["name"]: v for v in previous.get("variants", [])}
    for variant in summary["variants"]:
        for key in ("diagnosis", "prediction", "disagg_prediction"):
            if key in old.get(variant["name"], {}):
                variant[key] = old[variant["name"]][key]


# ---------------------------------------------------------------------------- per variant
def _load_variant(out: Path, name: str) -> dict[str, Any]:
    info = layout.read_json(layout.variant_dir(out, _dirname(name)) / "variant.json")
    rounds = []
    for path in layout.complete_rounds(layout.variant_dir(out, _dirname(name))):
        records = layout.read_requests(path)
        bench = layout.read_json(path / "bench.json")
        rounds.append(
            {
                "path": path,
                "index": int(path.name.split("-")[1]),
                "bench": bench,
                "cpu": layout.read_json(path / "cpu.json"),
                "records": records,
                "samples": round_samples(records, bench_slo(bench)),
            }
        )
    return {**info, "loaded_rounds": rounds}


def bench_slo(bench: dict[str, Any]) -> dict[str, float]:
    """The SLO a round was measured against: its summary's `slo`, or its `--slo` flag."""
    slo = bench.get("summary", {}).get("slo")
    if isinstance(slo, dict):
        return {str(k): float(v) for k, v in slo.items()}
    text = str(bench.get("config", {}).get("slo") or "")
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {k.strip(): float(v) for k, v in pairs}


def _dirname(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


def _variant_entry(variant: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    rounds = variant["loaded_rounds"]
    entry = {
        "name": variant["name"],
        "factor": variant["factor"],
        "value": variant["value"],
        "deployment": variant["deployment"],
        "rounds": [_round_entry(r) for r in rounds],
        "metrics": _pooled_metrics(rounds),
        "components": _components(rounds),
        "cpu_us_per_token": _cpu_per_token(rounds),
        "contended_rounds": [r["index"] for r in rounds if is_contended(r["cpu"])],
        "vs_baseline": {},
    }
    if variant["name"] != BASELINE:
        entry["vs_baseline"] = _vs_baseline(rounds, baseline["loaded_rounds"])
        if variant["factor"] not in BACKGROUND_FACTORS:  # there, contention is what is tested
            mark_contention_differs(entry["vs_baseline"], rounds, baseline["loaded_rounds"])
    return entry


def is_contended(cpu: dict[str, Any]) -> bool:
    """Whether a round ran on a contended machine (False for a round measured without it)."""
    return bool((cpu.get("contention") or {}).get("is_contended"))


def mark_contention_differs(
    vs_baseline: dict[str, Any],
    rounds: list[dict[str, Any]],
    baseline_rounds: list[dict[str, Any]],
) -> None:
    """Rounds paired with a baseline round of other contention: no better or worse verdict."""
    baseline_contended = {r["index"]: is_contended(r["cpu"]) for r in baseline_rounds}
    differing = [
        r["index"]
        for r in rounds
        if r["index"] in baseline_contended
        and is_contended(r["cpu"]) != baseline_contended[r["index"]]
    ]
    if not differing:
        return
    for entry in vs_baseline.values():
        entry["verdict"] = CONTENTION_DIFFERS
        entry["contention_differs_rounds"] = differing


def _round_entry(r: dict[str, Any]) -> dict[str, Any]:
    summary = r["bench"]["summary"]
    return {
        "round": r["index"],
        "path": str(r["path"].relative_to(r["path"].parents[1])),  # VARIANT/round-K, in DIR
        "output_tok_s": summary["output_token_throughput"],
        "request_throughput": summary["request_throughput"],
        "goodput": summary.get("goodput"),
        "duration_s": summary["duration_s"],
        "completed": summary["completed"],
        "failed": summary["failed"],
        **{m: _pick(summary.get(m)) for m in LATENCIES},
        "cpu_us_per_token": r["cpu"].get("cpu_us_per_token", {}),
        "contention": _round_contention(r["cpu"]),
    }


def _round_contention(cpu: dict[str, Any]) -> dict[str, Any] | None:
    """The round's contention in brief (cpu.json has it all); None when it was not measured."""
    contention = cpu.get("contention")
    if not contention:
        return None
    keys = ("is_contended", "outside_cores", "wait_share", "run_queue_wait_s", "num_cores")
    return {k: contention.get(k) for k in keys} | {"background": contention.get("background")}


def _pick(stats: dict[str, Any] | None) -> dict[str, Any]:
    stats = stats or {}
    return {k: stats.get(k) for k in ("p50", "p90", "p99", "mean")}


def _pooled_metrics(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughputs: the mean over rounds; latency statistics over every round's requests."""
    metrics: dict[str, Any] = {}
    for key, source in (
        ("output_tok_s", "output_token_throughput"),
        ("request_throughput", "request_throughput"),
    ):
        values = [r["bench"]["summary"][source] for r in rounds]
        metrics[key] = float(np.mean(values)) if values else None
    goodputs = [r["bench"]["summary"].get("goodput") for r in rounds]
    goodputs = [float(g) for g in goodputs if g is not None]
    metrics["goodput"] = float(np.mean(goodputs)) if goodputs else None
    slos = [bench_slo(r["bench"]) for r in rounds]
    metrics["slo"] = slos[0] if slos else {}
    for name in LATENCIES:
        values = [_latency_values(rec, name) for r in rounds for rec in _ok(r["records"])]
        metrics[name] = stats4(np.asarray([v for vs in values for v in vs], dtype=float))
    metrics["completed"] = sum(r["bench"]["summary"]["completed"] for r in rounds)
    metrics["failed"] = sum(r["bench"]["summary"]["failed"] for r in rounds)
    metrics["rounds"] = len(rounds)
    return metrics


def _ok(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "OK" and r.get("is_measured", True)]


def _latency_values(record: dict[str, Any], name: str) -> list[float]:
    value = record.get(name)
    if name == "itl_ms":
        return list(value or [])
    return [] if value is None else [float(value)]


def _components(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ms and share of E2E per component, over the measured requests' spans (tracing's
    own decomposition and summary)."""
    from tracing.decompose import decompose
    from tracing.readers import TraceReadError, read_file
    from tracing.summary import summarize

    breakdowns = []
    for r in rounds:
        measured = {rec["trace_id"] for rec in _ok(r["records"]) if rec.get("trace_id")}
        try:
            spans = read_file(r["path"] / "spans.jsonl")
        except TraceReadError:
            continue
        breakdowns += [b for b in decompose(spans) if b.trace_id in measured]
    if not breakdowns:
        return {}
    summary = summarize(breakdowns)
    return {
        name: {"mean_ms": round(c["mean_ms"], 4), "share": round(c["share"], 4)}
        for name, c in summary["components"].items()
        if c["mean_ms"] is not None  # n/a: no span measured it (a vLLM target's tokenize)
    }


def _cpu_per_token(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Total CPU time of each process over total output tokens, all rounds together."""
    cpu_s: dict[str, float] = {}
    tokens = sum(int(r["cpu"].get("output_tokens") or 0) for r in rounds)
    for r in rounds:
        for name, process in r["cpu"].get("processes", {}).items():
            cpu_s[name] = cpu_s.get(name, 0.0) + float(process["cpu_s"])
    return {name: round(s * 1e6 / tokens, 1) for name, s in cpu_s.items()} if tokens else {}


def _vs_baseline(
    rounds: list[dict[str, Any]], baseline_rounds: list[dict[str, Any]]
) -> dict[str, Any]:
    by_index = {r["index"]: r["samples"] for r in baseline_rounds}
    pairs: list[tuple[RoundSamples, RoundSamples]] = [
        (r["samples"], by_index[r["index"]]) for r in rounds if r["index"] in by_index
    ]
    result = {}
    for spec in COMPARED:
        compared = compare(spec, [v for v, _ in pairs], [b for _, b in pairs])
        if compared is not None:
            result[spec.key] = compared
    return result
