"""One run -> its diagnosis.json object: signals, hop split, rules, verdict, what-if."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diagnose.calibrate import Calibration
from diagnose.inputs import RunInputs
from diagnose.network import split_hops
from diagnose.rules import Finding, evaluate, verdict
from diagnose.signals import Signals, extract
from diagnose.whatif import DEFAULT_DELAYS_MS, link_what_if


def diagnose_signals(
    signals: Signals,
    calibration: Calibration | None,
    delays_ms: Sequence[float] = DEFAULT_DELAYS_MS,
    rate_mbit: float = 0.0,
) -> dict[str, Any]:
    splits = split_hops(signals, calibration)
    findings, budget = evaluate(signals, splits)
    primary, fired = verdict(findings)
    notes = list(signals.notes)
    if calibration is None:
        notes.append("no transport calibration: wire = emulated delay only")
    if not signals.device.startswith("cuda"):
        notes.append(
            f"device {signals.device}: device utilisation and the memory roofline apply to GPUs "
            "only and were skipped"
        )
    else:
        notes.append(
            "GPU run: utilisation and the memory roofline are not measured by this rule set"
        )
    host = next(f for f in findings if f.type == "host_cpu")
    if host.is_fired:
        notes.append(
            f"the host is busy (host_cpu score {host.score:.2f}): the what-if adds each link's "
            "time to the step, an upper bound when host work can overlap a slower link "
            "(docs/diagnosis.md, What-if)"
        )
    if not signals.cpu_us_per_token:
        notes.append(
            "no CPU per token (no cpu.json, or no output tokens): host_cpu uses the step gaps "
            "and hop wait only"
        )
    cycle = signals.cycle
    if signals.contention is None:
        notes.append("no contention in cpu.json: the services' wait for a core was not measured")
    return {
        "primary": primary,
        "headline": headline(fired[0], budget.whole_ms),
        "findings": [f.to_json() for f in fired],
        "scores": {f.type: round(f.score, 4) for f in findings},
        "budget": budget.to_json(),
        "what_if": link_what_if(signals, calibration, delays_ms, rate_mbit),
        "decomposition": {
            "hops": {split.name: split.to_json() for split in splits},
            "step_cycle_ms": {
                "engine": round(cycle.engine_ms, 4),
                "worker_overhead": round(cycle.worker_host_ms, 4),
                "hop": round(cycle.hop_ms, 4),
                "scheduler_gap": round(cycle.gap_ms, 4),
                "total": round(cycle.cycle_ms, 4),
                "mean_batch_size": round(cycle.mean_batch_size, 2),
                "num_steps": cycle.num_steps,
            }
            if cycle
            else None,
            "step_fit": {
                "fixed_ms": round(signals.fit.fixed_ms, 4),
                "per_token_ms": round(signals.fit.per_token_ms, 5),
                "r2": round(signals.fit.r2, 3),
                "num_steps": signals.fit.num_steps,
            }
            if signals.fit
            else None,
        },
        "measured": {
            "figures_from": "summary.json metrics (every round's measured requests)"
            if signals.figures_from_summary
            else "the bench summary",
            "requests": signals.num_requests,
            "tpot_p50_ms": round(signals.tpot_p50_ms, 3),
            "ttft_p50_ms": round(signals.ttft_p50_ms, 3),
            "e2e_p50_ms": round(signals.e2e_p50_ms, 3),
            "output_tok_s": round(signals.output_tok_s, 1),
        },
        "hot_functions": signals.hot_functions,  # from a `hopscope profile` beside the run
        "calibration": calibration.to_json() if calibration else None,
        "notes": notes,
    }


def headline(top: Finding, e2e_mean_ms: float) -> str:
    """One line: the largest share of the time budget, and its top suggestion."""
    line = (
        f"{top.type}: {top.score:.0%} of the mean request's {e2e_mean_ms:.0f} ms E2E — "
        f"{top.symptom}"
    )
    first = next(iter(top.suggestions), None)
    if first:
        line += f"; try `{first['switch']}`"
    return line


def diagnose_run(
    run: RunInputs,
    calibration: Calibration | None,
    delays_ms: Sequence[float] = DEFAULT_DELAYS_MS,
    rate_mbit: float = 0.0,
) -> dict[str, Any]:
    signals = extract(run)
    diagnosis = diagnose_signals(signals, calibration, delays_ms, rate_mbit)
    return with_disaggregation(diagnosis, run, signals, calibration)


def with_disaggregation(
    diagnosis: dict[str, Any], run: RunInputs, signals: Signals, calibration: Calibration | None
) -> dict[str, Any]:
    """Adds `disaggregation`: what disagg / disagg-split would give (a mixed run only)."""
    from diagnose.disagg import disagg_prediction

    try:
        prediction = disagg_prediction(run, signals, calibration)
    except (ValueError, ZeroDivisionError) as exc:
        prediction = {"notes": [f"disaggregation prediction failed: {exc}"]}
    if prediction is not None:
        diagnosis["disaggregation"] = prediction
        _predict_disagg_suggestions(diagnosis, prediction, signals)
    return diagnosis


def _predict_disagg_suggestions(
    diagnosis: dict[str, Any], prediction: dict[str, Any], signals: Signals
) -> None:
    """`--placement disagg` suggestions get the disaggregation prediction's TPOT ratio (and its
    TTFT p50 ratio as `also_predicted`)."""
    disagg = (prediction.get("variants") or {}).get("disagg")
    if not disagg or signals.tpot_p50_ms <= 0:
        return
    ratio = disagg["tpot_p50_ms"] / signals.tpot_p50_ms
    also = []
    if disagg.get("ttft_p50_ms") and signals.ttft_p50_ms > 0:
        ttft = disagg["ttft_p50_ms"] / signals.ttft_p50_ms
        also.append({"metric": "ttft_ms.p50", "ratio": round(ttft, 4)})
    for finding in diagnosis["findings"]:
        for row in finding["suggestions"]:
            if row.get("factor") == "placement" and row.get("value") == "disagg":
                row.pop("not_predicted", None)
                row["predicted"] = {"metric": "tpot_ms.p50", "ratio": round(ratio, 4)}
                if also:
                    row["also_predicted"] = also
        finding["suggestions"].sort(key=lambda r: r.get("predicted") is None)
