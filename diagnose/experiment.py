"""Diagnosing an experiment directory (layout: ARCHITECTURE.md, "Experiment directory"): every
variant gets DIR/VARIANT/diagnosis.json and a `diagnosis` in summary.json; each `link_delay_ms`
(or `link_rate_mbit`) variant also gets the `prediction` the baseline's spans make for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diagnose.calibrate import Calibration, get_calibration
from diagnose.core import diagnose_signals, with_disaggregation
from diagnose.inputs import RunInputs, load_variant
from diagnose.report import plot_what_if
from diagnose.signals import Signals, extract
from diagnose.whatif import DEFAULT_DELAYS_MS, predict

BASELINE = "baseline"
LINK_FACTORS = ("link_delay_ms", "link_rate_mbit")
WHAT_IF_PLOT = "what_if_tpot.png"


def _variant_dirs(exp_dir: Path, summary: dict[str, Any] | None) -> dict[str, Path]:
    if summary and summary.get("variants"):
        names = [str(v["name"]) for v in summary["variants"]]
    else:
        names = sorted(p.name for p in exp_dir.iterdir() if p.is_dir() and any(p.glob("round-*")))
    return {name: exp_dir / name for name in names if any((exp_dir / name).glob("round-*"))}


def _variant_meta(variant_dir: Path, summary_variant: dict[str, Any] | None) -> dict[str, Any]:
    if summary_variant is not None:
        return summary_variant
    try:
        return dict(json.loads((variant_dir / "variant.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {"name": variant_dir.name, "factor": None, "value": None}


def _link_values(meta: dict[str, Any]) -> tuple[float, float] | None:
    """(delay_ms, rate_mbit) of a link variant, None for other factors."""
    factor = meta.get("factor")
    if factor not in LINK_FACTORS or meta.get("value") is None:
        return None
    value = float(meta["value"])
    return (value, 0.0) if factor == "link_delay_ms" else (0.0, value)


def _prediction(
    baseline: Signals, calibration: Calibration | None, link: tuple[float, float], measured: Signals
) -> dict[str, Any]:
    delay_ms, rate_mbit = link
    predicted = predict(baseline, calibration, baseline.link.with_delay(delay_ms, rate_mbit))
    tpot_ms, measured_ms = predicted["tpot_p50_ms"], measured.tpot_p50_ms
    return {
        "from": BASELINE,
        "tpot_p50_ms": round(tpot_ms, 3),
        "measured_tpot_p50_ms": round(measured_ms, 3),
        "error": round((tpot_ms - measured_ms) / measured_ms, 4) if measured_ms > 0 else None,
    }


def disagg_variant(meta: dict[str, Any]) -> str | None:
    """The disaggregation prediction a variant is measured against (its placement or KV
    transport), or None for other factors."""
    factor, value = meta.get("factor"), str(meta.get("value"))
    if factor == "placement" and value in ("disagg", "disagg-split"):
        return value
    if factor == "kv_transport" and value == "shm":
        return "disagg/shm"
    return None


def disagg_vs_measured(
    predicted_as: str,
    predicted: dict[str, Any],
    ttft_p50_ms: float,
    tpot_p50_ms: float,
    goodput: float | None,
) -> dict[str, Any]:
    measured = {"ttft_p50_ms": ttft_p50_ms, "tpot_p50_ms": tpot_p50_ms, "goodput": goodput}
    out: dict[str, Any] = {"from": BASELINE, "as": predicted_as, "error": {}}
    for key, value in measured.items():
        out[key] = predicted.get(key)
        out[f"measured_{key}"] = round(value, 4) if value is not None else None
        p = predicted.get(key)
        out["error"][key] = round(p / value - 1, 4) if p is not None and value else None
    return out


def diagnose_experiment(exp_dir: Path, calibration: Calibration | None = None) -> dict[str, Any]:
    """Diagnose every variant of `exp_dir`; returns {variant: {"diagnosis", "prediction"?}} (or
    {"error"} for a variant that cannot be diagnosed, e.g. without spans) and writes the
    diagnosis files, the what-if figure and the additions to summary.json."""
    exp_dir = Path(exp_dir)
    plan_path = exp_dir / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text(encoding="utf-8")).get("target"):
        from diagnose.external import diagnose_target_experiment

        return diagnose_target_experiment(exp_dir)  # an external server: no spans
    summary_path = exp_dir / "summary.json"
    summary = (
        json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else None
    )
    calibration = calibration or get_calibration()
    by_name = {str(v["name"]): v for v in (summary or {}).get("variants", [])}
    signals: dict[str, Signals] = {}
    runs: dict[str, RunInputs] = {}
    metas: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name, variant_dir in _variant_dirs(exp_dir, summary).items():
        try:
            runs[name] = load_variant(variant_dir)
            # summary.json's figures: the one definition the table and the plots use too
            runs[name].figures = (by_name.get(name) or {}).get("metrics")
            signals[name] = extract(runs[name])
        except ValueError as exc:  # e.g. no spans: the other variants are still diagnosed
            skipped[name] = str(exc)
            continue
        metas[name] = _variant_meta(variant_dir, by_name.get(name))
    if not signals and skipped:
        raise ValueError("no variant could be diagnosed: " + "; ".join(skipped.values()))
    link_values = {n: v for n, m in metas.items() if (v := _link_values(m)) is not None}
    delays = sorted({*DEFAULT_DELAYS_MS, *(d for d, _ in link_values.values() if d > 0)})
    results: dict[str, dict[str, Any]] = {}
    for name, sig in signals.items():
        diagnosis = diagnose_signals(sig, calibration, delays)
        diagnosis = with_disaggregation(diagnosis, runs[name], sig, calibration)
        (exp_dir / name / "diagnosis.json").write_text(
            json.dumps(diagnosis, indent=2) + "\n", encoding="utf-8"
        )
        results[name] = {"diagnosis": diagnosis}
        if name in link_values and BASELINE in signals:
            results[name]["prediction"] = _prediction(
                signals[BASELINE], calibration, link_values[name], sig
            )
    base_disagg = (results.get(BASELINE, {}).get("diagnosis") or {}).get("disaggregation") or {}
    for name, meta in metas.items():
        predicted_as = disagg_variant(meta)
        predicted = (base_disagg.get("variants") or {}).get(predicted_as or "")
        if name in results and predicted:
            measured = signals[name]
            goodput = (meta.get("metrics") or {}).get("goodput")
            results[name]["disagg_prediction"] = disagg_vs_measured(
                predicted_as or "", predicted, measured.ttft_p50_ms, measured.tpot_p50_ms, goodput
            )
    if BASELINE in results:
        _plot(exp_dir, results, link_values, signals)
    for name, reason in skipped.items():
        results[name] = {"error": reason}
    if summary is not None:
        for variant in summary.get("variants", []):
            result = results.get(str(variant["name"]), {})
            variant.update({k: v for k, v in result.items() if k != "error"})
        summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return results


def _plot(
    exp_dir: Path,
    results: dict[str, dict[str, Any]],
    link_values: dict[str, tuple[float, float]],
    signals: dict[str, Signals],
) -> None:
    what_if = results[BASELINE]["diagnosis"]["what_if"]
    measured = [(0.0, signals[BASELINE].tpot_p50_ms)]
    measured += [
        (delay, signals[name].tpot_p50_ms)
        for name, (delay, rate) in link_values.items()
        if delay > 0 and rate == 0
    ]
    plot_what_if(
        what_if,
        exp_dir / "plots" / WHAT_IF_PLOT,
        measured,
        title="TPOT p50 vs scheduler-worker link delay\n(line: predicted from the baseline's spans)",
    )
