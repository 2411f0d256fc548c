"""Aggregate per-request breakdowns: mean, p50, p99 per component and its share of e2e / TPOT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tracing.decompose import COMPONENTS, OTHER, TPOT_COMPONENTS, RequestBreakdown

OTHER_SHARE_LIMIT = 0.10  # above this, time no span accounts for: a span is probably missing


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stats_ms(values: Sequence[float]) -> dict[str, float]:
    mean = sum(values) / len(values) if values else 0.0
    return {"mean_ms": mean, "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}


NO_DATA: dict[str, float | None] = {"mean_ms": None, "p50_ms": None, "p99_ms": None, "share": None}


def _component_stats(
    rows: Sequence[dict[str, float | None]], names: Sequence[str], total_ms: float
) -> dict[str, dict[str, float | None]]:
    """Stats of each component over the requests that measured it (None in a row: not
    measured); a component no request measured is all None ("n/a"), never a fake 0."""
    result: dict[str, dict[str, float | None]] = {}
    for name in names:
        values = [v for row in rows if (v := row.get(name, 0.0)) is not None]
        if not values and rows:
            result[name] = dict(NO_DATA)
            continue
        # ratio of sums, so the shares of a partition add up to 1
        share = sum(values) / total_ms if total_ms > 0 else 0.0
        result[name] = {**stats_ms(values), "share": share}
    return result


def _measured_row(breakdown: RequestBreakdown) -> dict[str, float | None]:
    return {
        name: None if name in breakdown.unmeasured else value
        for name, value in breakdown.components_ms.items()
    }


def summarize(breakdowns: Sequence[RequestBreakdown]) -> dict[str, Any]:
    """The `--json` document of `hopscope traces summarize`."""
    e2e = [b.e2e_ms for b in breakdowns]
    total_e2e_ms = sum(e2e)
    rows = [_measured_row(b) for b in breakdowns]
    components = _component_stats(rows, COMPONENTS, total_e2e_ms)
    network_rows = [{"network": _network_ms(row)} for row in rows]
    return {
        "requests": len(breakdowns),
        "e2e": stats_ms(e2e),
        "components": components,
        "network_total": _component_stats(network_rows, ["network"], total_e2e_ms)["network"],
        "tpot": _tpot_summary(breakdowns),
        "checks": _checks(breakdowns, components),
    }


def _network_ms(row: dict[str, float | None]) -> float | None:
    values = [value for name, value in row.items() if "network" in name and value is not None]
    return sum(values) if values else None


def _tpot_summary(breakdowns: Sequence[RequestBreakdown]) -> dict[str, Any]:
    with_tpot = [b for b in breakdowns if b.tpot_ms is not None]
    tpot = [b.tpot_ms for b in with_tpot if b.tpot_ms is not None]
    # a component a breakdown does not split out (vLLM's spans) is n/a, not 0
    rows: list[dict[str, float | None]] = [
        {name: b.tpot_components_ms.get(name) for name in TPOT_COMPONENTS} for b in with_tpot
    ]
    return {
        "requests": len(with_tpot),
        **stats_ms(tpot),
        "components": _component_stats(rows, TPOT_COMPONENTS, sum(tpot)),
    }


def _checks(
    breakdowns: Sequence[RequestBreakdown], components: dict[str, dict[str, float | None]]
) -> dict[str, Any]:
    other_share = (components[OTHER]["share"] or 0.0) if breakdowns else 0.0
    num_clamped = sum(1 for b in breakdowns if b.clamped_ms > 0)
    num_off = sum(1 for b in breakdowns if not b.is_sum_within_tolerance)
    warnings = []
    if num_off:
        warnings.append(
            f"{num_off} request(s) have components that overshoot e2e by more than 5% "
            "(overlapping spans)"
        )
    if other_share > OTHER_SHARE_LIMIT:
        warnings.append(
            f"'other' is {other_share:.0%} of e2e (limit {OTHER_SHARE_LIMIT:.0%}): a span is "
            "probably missing; check that every service exports traces"
        )
    unmeasured = [name for name, row in components.items() if row["mean_ms"] is None]
    if unmeasured and breakdowns and all(b.source == "vllm" for b in breakdowns):
        warnings.append(
            f"vLLM's spans do not split out {', '.join(unmeasured)} (n/a): what those take "
            "is in 'other' and in the client hop (see docs/tracing.md, 'vLLM's spans')"
        )
    elif unmeasured and breakdowns:
        warnings.append(
            f"no span measured {', '.join(unmeasured)} (n/a): the caller's side is not traced "
            "(run `hopscope bench` with OTEL_EXPORTER_OTLP_ENDPOINT or HOPSCOPE_TRACE_FILE set) "
            "or a service does not export"
        )
    return {
        "num_clamped": num_clamped,
        "num_sum_outside_5pct": num_off,
        "other_share": other_share,
        "is_other_under_10pct": other_share <= OTHER_SHARE_LIMIT,
        "warnings": warnings,
    }


def deployment_name(deployment: dict[str, str]) -> str:
    """'colocated / smollm2-135m'; '?' for what the spans did not say."""
    return f"{deployment.get('placement') or '?'} / {deployment.get('model') or '?'}"


def by_deployment(
    breakdowns: Sequence[RequestBreakdown],
) -> list[tuple[dict[str, str], list[RequestBreakdown]]]:
    """The requests of each deployment (placement and model), in order of first request:
    two deployments' times are never pooled into one distribution."""
    groups: dict[tuple[str, str], list[RequestBreakdown]] = {}
    for breakdown in breakdowns:
        key = (breakdown.deployment.get("placement", ""), breakdown.deployment.get("model", ""))
        groups.setdefault(key, []).append(breakdown)
    return [({"placement": p, "model": m}, group) for (p, m), group in groups.items()]


def summarize_deployments(breakdowns: Sequence[RequestBreakdown]) -> dict[str, Any]:
    """`traces summarize --json`: one deployment, its summary plus `deployment`; several, only
    `requests` and `deployments` (a summary per deployment), no pooled numbers."""
    groups = by_deployment(breakdowns)
    if len(groups) <= 1:
        deployment = groups[0][0] if groups else {"placement": "", "model": ""}
        return {**summarize(breakdowns), "deployment": deployment}
    return {
        "requests": len(breakdowns),
        "deployments": [{**summarize(group), "deployment": d} for d, group in groups],
    }
