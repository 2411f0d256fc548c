"""A run's measured pieces for the disaggregation prediction (diagnose/disagg_predict.py), read
from its spans, bench summaries, request records and Describe; and the handoff a disagg run's
spans measured (`hopscope.handoff_wait`, `hopscope.kv_transfer`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from statistics import mean, median
from typing import Any

from diagnose.calibrate import Calibration
from diagnose.disagg_predict import (
    DisaggInputs,
    LinkSpec,
    fit_mixed_steps,
    kv_bytes_per_token,
    predict_disagg,
)
from diagnose.inputs import RunInputs
from diagnose.signals import Signals, interference_ms_per_token
from diagnose.steps import StepSample, step_samples
from tracing.decompose import SUBMIT, SpanIndex
from tracing.model import Span

KV_TRANSFER = "hopscope.kv_transfer"
# the scheduler's handoff spans (INTERNAL children of Submit SERVER): the dead time before the
# transfer (a free decode slot) and after it (until the first decode step is sent), and the
# transfer as the scheduler waited for it
HANDOFF_WAIT = "hopscope.handoff_wait"
HANDOFF_RESUME = "hopscope.handoff_resume"
HANDOFF_TRANSFER = "hopscope.handoff_transfer"
# The disagg variants predicted by default: issue 21's benchmark set.
DEFAULT_LINKS = (
    LinkSpec("disagg", "uds", placement="disagg"),
    LinkSpec("disagg/shm", "shm", placement="disagg"),
    LinkSpec("disagg-split", "relay", placement="disagg-split"),
    LinkSpec("disagg-split/1ms", "relay", delay_ms=1.0, placement="disagg-split"),
    LinkSpec("disagg-split/5ms", "relay", delay_ms=5.0, placement="disagg-split"),
    LinkSpec("disagg-split/100mbit", "relay", rate_mbit=100.0, placement="disagg-split"),
)
_CALIBRATED = {"uds": "uds", "tcp": "tcp", "relay": "relay"}


def cores_shared_default() -> float:
    """A step's slowdown while the other worker computes on the same host: 2 when the host has
    too few cores for both engines' threads (each runs on about half), else 1."""
    cpus = os.cpu_count() or 1
    return 2.0 if cpus <= 4 else 1.0


def handoff_from_spans(spans: list[Span]) -> dict[str, float | None]:
    """Means per request of a disagg run's KV transfer (CLIENT spans) and handoff wait, and the
    KV bytes per transfer; None where no such span was recorded (e.g. a mixed run)."""
    transfers = [s for s in spans if s.name.lstrip("/") == KV_TRANSFER and s.kind == "CLIENT"]
    if not transfers:
        transfers = [s for s in spans if s.name.lstrip("/") == KV_TRANSFER]
    if not transfers:
        transfers = [s for s in spans if s.name.lstrip("/") == HANDOFF_TRANSFER]
    waits = [s for s in spans if s.name.lstrip("/") in (HANDOFF_WAIT, HANDOFF_RESUME)]
    by_request: dict[str, float] = {}
    for w in waits:
        key = str(w.attributes.get("hopscope.request_id") or w.trace_id)
        by_request[key] = by_request.get(key, 0.0) + w.duration_ms
    kv_bytes = [
        float(s.attributes["hopscope.kv_bytes"])
        for s in transfers
        if s.attributes.get("hopscope.kv_bytes") is not None
    ]
    return {
        "kv_transfer_ms": mean(s.duration_ms for s in transfers) if transfers else None,
        "handoff_wait_ms": mean(by_request.values()) if by_request else None,
        "kv_bytes_per_request": mean(kv_bytes) if kv_bytes else None,
        "num_transfers": float(len(transfers)),
    }


def _model_kv_bytes(describe: dict[str, Any] | None) -> tuple[float | None, str]:
    model = (describe or {}).get("model") or {}
    name = str(model.get("name") or "")
    dtype = str(model.get("dtype") or "float32")
    if not name:
        return None, "no model in Describe: KV bytes per request unknown"
    try:
        from services.models import resolve_model

        config = resolve_model(name).config
    except Exception as exc:  # noqa: BLE001 - any model that cannot be resolved here
        return None, f"model {name!r} could not be resolved here ({exc}): KV bytes unknown"
    per_token = kv_bytes_per_token(config.num_layers, config.num_kv_heads, config.head_dim, dtype)
    return float(per_token), ""


def _requests(
    run: RunInputs,
) -> tuple[list[tuple[float, float | None]], float, dict[str, float], float]:
    """(ttft, tpot) of every measured successful request, total duration, the SLO, and the
    completed requests/s over every round."""
    rows: list[tuple[float, float | None]] = []
    duration = 0.0
    completed = 0
    slo: dict[str, float] = {}
    for bench in run.bench_rounds or ([run.bench] if run.bench else []):
        summary = bench.get("summary", {})
        duration += float(summary.get("duration_s") or 0.0)
        completed += int(summary.get("completed") or 0)
        slo = dict(summary.get("slo") or slo)
        path = Path(str(bench.get("requests_file") or ""))
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            if row.get("status") == "OK" and row.get("is_measured", True) and row.get("ttft_ms"):
                rows.append((float(row["ttft_ms"]), row.get("tpot_ms")))
    return rows, duration, slo, (completed / duration if duration > 0 else 0.0)


def _p99(values: list[float]) -> float:
    import numpy as np

    return float(np.percentile(values, 99)) if values else 0.0


def disagg_inputs(
    run: RunInputs, signals: Signals, samples: list[StepSample] | None = None
) -> tuple[DisaggInputs | None, list[str]]:
    """The prediction's inputs from a mixed run, or None with the reason in the notes."""
    samples = samples if samples is not None else step_samples(run.spans)
    notes: list[str] = []
    fit = fit_mixed_steps(
        [(s.num_prefill_tokens, s.num_decode_tokens, s.engine_ms) for s in samples]
    )
    if fit is None or signals.cycle is None:
        return None, ["disaggregation prediction: the run has no prefill and decode-only steps"]
    per_token, why = _model_kv_bytes(run.describe)
    if per_token is None:
        notes.append(why)
        per_token = 0.0
    index = SpanIndex(run.spans)
    prompts, chunks = [], []
    for submit in index.spans:
        if submit.name.lstrip("/") != SUBMIT or submit.kind != "SERVER":
            continue
        prompts.append(float(submit.attributes.get("hopscope.num_prompt_tokens", 0) or 0))
        chunks.append(sum(1 for c in index.step_calls(submit) if c.phase == "prefill"))
    decode_only = [s for s in samples if s.num_prefill_tokens == 0 and s.num_decode_tokens > 0]
    requests, duration, slo, rate = _requests(run)
    summary = (run.bench or {}).get("summary", {})
    ttft_p99 = (summary.get("ttft_ms") or {}).get("p99") or _p99([t for t, _ in requests])
    cycle = signals.cycle
    handoff = handoff_from_spans(run.spans)
    # medians, not the cycle's means: the prediction is of p50s, and on a shared host a few
    # steps stalled by other processes weigh on a mean far more than on a p50
    steady = [s for s in decode_only if s.gap_ms is not None] or decode_only
    pure_decode_ms = median(s.engine_ms for s in steady) if steady else cycle.engine_ms
    host_ms = (
        median(s.worker_host_ms + s.hop_ms + (s.gap_ms or 0.0) for s in steady)
        if steady
        else cycle.worker_host_ms + cycle.hop_ms + cycle.gap_ms
    )
    inputs = DisaggInputs(
        fit=fit,
        prompt_tokens=median(prompts) if prompts else 0.0,  # warm-up prompts are shorter
        output_tokens=signals.mean_output_tokens,
        decode_batch=mean(s.num_decode_tokens for s in decode_only) if decode_only else 1.0,
        host_ms_per_step=host_ms,
        prefill_steps_per_request=mean(c for c in chunks if c) if any(chunks) else 1.0,
        ttft_p50_ms=signals.ttft_p50_ms,
        ttft_p99_ms=float(ttft_p99 or signals.ttft_p50_ms),
        tpot_p50_ms=signals.tpot_p50_ms,
        queue_p50_ms=signals.queue_p50_ms,
        request_rate=rate or float(summary.get("request_throughput") or 0.0),
        duration_s=duration,
        kv_bytes_per_token=per_token,
        is_closed_loop=signals.is_closed_loop,
        requests=requests,
        slo=slo,
        cores_shared=cores_shared_default(),
        handoff_wait_ms=handoff["handoff_wait_ms"],
        pure_decode_ms=pure_decode_ms,
        interference_ms_per_token=interference_ms_per_token(signals),
    )
    return inputs, notes


def links_with_calibration(calibration: Calibration | None) -> list[LinkSpec]:
    """The default variants, with each transport's idle round trip from the calibration."""
    links = []
    for link in DEFAULT_LINKS:
        name = _CALIBRATED.get(link.transport)
        rtt = calibration.wire_ms(name, 1) if (calibration and name) else None
        links.append(
            LinkSpec(
                link.name,
                link.transport,
                rtt or None,
                None,
                link.delay_ms,
                link.rate_mbit,
                link.placement,
            )
        )
    return links


def disagg_prediction(
    run: RunInputs, signals: Signals, calibration: Calibration | None
) -> dict[str, Any] | None:
    """diagnosis.json's `disaggregation` for a run that is not itself disaggregated."""
    measured = handoff_from_spans(run.spans)
    if measured["kv_transfer_ms"] is not None or measured["handoff_wait_ms"] is not None:
        return None  # a disagg run: it is measured, not predicted
    inputs, notes = disagg_inputs(run, signals)
    if inputs is None:
        return {"notes": notes}
    result = predict_disagg(inputs, links_with_calibration(calibration))
    notes.append(
        f"cores_shared {inputs.cores_shared:g} ({os.cpu_count()} CPUs): a step runs that much "
        "slower while the other worker computes on the same cores; 1 on two devices"
    )
    if inputs.handoff_wait_ms is None:
        notes.append("handoff wait estimated (half a decode step): no disagg run measured it")
    result["notes"] = notes
    result["inputs"] = {
        "prompt_tokens": round(inputs.prompt_tokens, 1),
        "output_tokens": round(inputs.output_tokens, 1),
        "decode_batch": round(inputs.decode_batch, 2),
        "host_ms_per_step": round(inputs.host_ms_per_step, 3),
        "prefill_steps_per_request": round(inputs.prefill_steps_per_request, 2),
        "kv_bytes_per_token": inputs.kv_bytes_per_token,
        "fit": {
            "fixed_ms": round(inputs.fit.fixed_ms, 4),
            "per_prefill_token_ms": round(inputs.fit.per_prefill_token_ms, 5),
            "per_decode_token_ms": round(inputs.fit.per_decode_token_ms, 5),
            "r2": round(inputs.fit.r2, 3),
            "num_steps": inputs.fit.num_steps,
        },
        "slo": inputs.slo,
    }
    return result
