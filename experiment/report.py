"""report.md and report.html (one self-contained file, the PNGs embedded) from summary.json and
the raw per-request files; the diagnosis is rendered when summary.json carries it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from experiment import layout, plots, waterfall
from experiment.render import Block, html_page, markdown
from experiment.stats import COMPARED
from experiment.summary import CONTENTION_DIFFERS, component_label
from loadgen.plots import cdf_plot

HEADLINE_METRICS = ("goodput", "output_tok_s", "tpot_ms.p50", "ttft_ms.p99", "e2e_ms.p50")
UNITS = {"output_tok_s": "tok/s", "request_throughput": "req/s", "goodput": "req/s"}


def write_report(out: Path) -> Path:
    """Writes DIR/plots/*.png, DIR/report.md and DIR/report.html; returns report.md's path."""
    summary = layout.read_json(out / layout.SUMMARY)
    figures = _figures(out, summary)
    blocks = _blocks(summary, figures, out)
    md_path = out / "report.md"
    md_path.write_text(markdown(blocks), encoding="utf-8")
    title = f"hopscope experiment: {summary['plan']['name']}"
    (out / "report.html").write_text(html_page(blocks, title), encoding="utf-8")
    return md_path


# ---------------------------------------------------------------------------- figures
def _figures(out: Path, summary: dict[str, Any]) -> dict[str, Path]:
    folder = out / "plots"
    figures: dict[str, Path] = {}
    for key, draw in (
        ("effects", plots.plot_effects),
        ("components", plots.plot_components),
        ("throughput_tpot", plots.plot_throughput_tpot),
    ):
        path = draw(summary, folder / f"{key}.png")
        if path is not None:
            figures[key] = path
    if (path := waterfall.report_figure(out, summary)) is not None:
        figures["waterfall"] = path
    samples = _latency_samples(summary, out)
    for factor in _factors(summary):
        names = [summary["baseline"]] + [
            v["name"] for v in summary["variants"] if v["factor"] == factor
        ]
        for metric, _ in plots.CDF_METRICS:
            series = {n: samples.get(n, {}).get(metric, []) for n in names}
            path = folder / f"cdf_{_slug(factor)}_{metric}.png"
            # loadgen's figure, the one `bench` draws: one CDF style across the project
            figures[f"cdf:{factor}:{metric}"] = cdf_plot(series, metric, "ms", path)
    return figures


def _factors(summary: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(v["factor"] for v in summary["variants"] if v["factor"]))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _latency_samples(summary: dict[str, Any], out: Path) -> dict[str, dict[str, list[float]]]:
    """variant -> metric -> every measured successful request's value, all rounds."""
    samples: dict[str, dict[str, list[float]]] = {}
    for variant in summary["variants"]:
        per_metric: dict[str, list[float]] = {m: [] for m, _ in plots.CDF_METRICS}
        for r in variant["rounds"]:
            try:
                records = layout.read_requests(out / r["path"])
            except (OSError, ValueError):
                continue
            for rec in records:
                if rec.get("status") != "OK" or not rec.get("is_measured", True):
                    continue
                for metric, values in per_metric.items():
                    if rec.get(metric) is not None:
                        values.append(float(rec[metric]))
        samples[variant["name"]] = per_metric
    return samples


# ---------------------------------------------------------------------------- content


def _blocks(summary: dict[str, Any], figures: dict[str, Path], out: Path) -> list[Block]:
    plan = summary["plan"]
    blocks: list[Block] = [("h1", f"hopscope experiment: {plan['name']}")]
    blocks += _what_was_run(summary)
    blocks += _contention_note(summary)
    blocks += _headline(summary)
    blocks += [("h2", "Every variant against the baseline")]
    blocks += [
        (
            "p",
            "Ratio = variant / baseline, geometric mean of the per-round ratios, with "
            "its 95% interval. " + _method_line(summary),
        )
    ]
    blocks += [("table", _effects_table(summary))]
    blocks += _plan_prediction_section(summary)
    if "effects" in figures:
        blocks += [("img", (figures["effects"], "ratios to the baseline with 95% intervals"))]
    blocks += [("h2", "Measured values"), ("table", _values_table(summary))]
    blocks += _components_section(summary, figures)
    blocks += waterfall.report_blocks(figures.get("waterfall"))
    blocks += _cdf_section(summary, figures)
    if "throughput_tpot" in figures:
        blocks += [
            ("h2", "Throughput vs time per output token"),
            ("img", (figures["throughput_tpot"], "output tokens/s vs TPOT p50")),
        ]
    blocks += _cpu_section(summary)
    blocks += _diagnosis_section(summary, out)
    raw = (
        f"Everything above is computed from `{out}`: summary.json, and per variant and round "
        "bench.json, requests.jsonl, spans.jsonl, describe.json, metrics/*.prom, cpu.json and "
        f"logs/. Rebuild this report with `hopscope experiment report {out}`."
    )
    blocks += [("h2", "Raw data"), ("p", raw)]
    return blocks


def _what_was_run(summary: dict[str, Any]) -> list[Block]:
    plan, machine = summary["plan"], summary["machine"]
    workload = plan["workload"]
    load = (
        f"closed loop, concurrency {workload['concurrency'][0]}"
        if workload.get("concurrency")
        else f"open loop, {workload['rate'][0]:g} requests/s"
    )
    changed = ", ".join(f"`{v['name']}`" for v in summary["variants"] if v["factor"]) or "none"
    base = plan["baseline"]
    base_text = ", ".join(
        f"{k}={_plain(v)}" for k, v in base.items() if v not in (None, False, 0, 0.0)
    )
    lines = [
        f"{plan.get('description') or ''}".strip(),
        f"**Baseline**: {base_text}.",
        f"**Variants** (each differs from the baseline in one setting): {changed}.",
        (
            f"**Workload**: {load}, {workload.get('num_requests')} requests of "
            f"{workload.get('input_len')} prompt tokens and {workload.get('output_len')} output "
            f"tokens, after {plan.get('warmup')} warm-up requests on each fresh deployment"
            f"{_background_text(workload)}."
        ),
        (
            f"**Goodput**: requests/s meeting every SLO (`--slo {workload['slo']}`) / duration."
            if workload.get("slo")
            else "**Goodput**: no `--slo` in the workload, so every completed request counts "
            "(goodput = requests/s)."
        ),
        f"**Rounds**: {plan['repeats']} (every variant once per round, order rotated).",
        f"**Machine**: {machine['cpus']} CPUs, {machine.get('memory_gib')} GiB, torch "
        f"{machine['torch']}, {machine['device']}, git {str(machine['git_sha'])[:12]}. Started "
        f"{summary.get('started')}, finished {summary.get('finished')}"
        + (f" ({summary['wall_s']:.0f} s)." if summary.get("wall_s") else "."),
    ]
    return [("h2", "What was run"), *(("p", line) for line in lines if line)]


def _plain(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _method_line(summary: dict[str, Any]) -> str:
    rounds = summary["plan"]["repeats"]
    text = (
        "Intervals: a two-level bootstrap (rounds resampled with their baseline pair, then "
        "requests — or time windows, for throughput — within each round; 2000 resamples). "
        "A verdict is *no measurable effect* when the interval contains 1."
    )
    if rounds == 1:
        text += (
            " With one round the interval reflects request-to-request variation only, not "
            "deployment-to-deployment variation: use `repeats: 3` for decisions."
        )
    return text


def _fmt_effect(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    lo, hi = entry["ci95"]
    return f"{entry['ratio']:.2f}× [{lo:.2f}, {hi:.2f}] {entry['verdict']}"


def _effects_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    specs = [s for s in COMPARED]
    header = ["variant", *(s.label for s in specs)]
    rows = []
    for v in summary["variants"]:
        if v["factor"] is None:
            continue
        rows.append([v["name"], *(_fmt_effect(v["vs_baseline"].get(s.key)) for s in specs)])
    return header, rows


def _plan_prediction_section(summary: dict[str, Any]) -> list[Block]:
    """The plan's `prediction:` (written before the run) beside what was measured."""
    prediction = summary["plan"].get("prediction")
    if not prediction:
        return []
    title = ("h3", "Prediction (written before the run) against the result")
    if isinstance(prediction, str):
        return [title, ("p", prediction)]
    blocks: list[Block] = [title]
    if why := prediction.get("why"):
        blocks.append(("p", why))
    measured = {v["name"]: v["vs_baseline"] for v in summary["variants"]}
    labels = {s.key: s.label for s in COMPARED}
    rows = [
        [
            name,
            labels[metric],
            f"{ratio:.2f}×",
            *_against(measured.get(name, {}).get(metric), ratio),
        ]
        for name, ratios in prediction.items()
        if name != "why"
        for metric, ratio in ratios.items()
    ]
    header = ["variant", "metric", "predicted", "measured", "prediction", "error"]
    return [*blocks, ("table", (header, rows))] if rows else blocks


def _against(entry: dict[str, Any] | None, predicted: float) -> list[str]:
    """The measured ratio and whether its 95% interval holds the predicted one."""
    if not entry:
        return ["-", "not measured", "-"]
    lo, hi = entry["ci95"]
    held = "held" if lo <= predicted <= hi else "missed (outside the interval)"
    error = predicted / entry["ratio"] - 1  # predicted / measured − 1
    return [f"{entry['ratio']:.2f}× [{lo:.2f}, {hi:.2f}]", held, f"{error:+.0%}"]


def _num(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _values_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "variant",
        "output tok/s",
        "req/s",
        "goodput req/s",
        "TTFT p50 / p99 ms",
        "TPOT p50 / p99 ms",
        "ITL p50 ms",
        "E2E p50 / p99 ms",
        "completed",
        "failed",
    ]
    rows = []
    for v in summary["variants"]:
        m = v["metrics"]
        rows.append(
            [
                v["name"],
                _num(m["output_tok_s"]),
                _num(m["request_throughput"], 2),
                _num(m.get("goodput"), 2),
                f"{_num(m['ttft_ms']['p50'])} / {_num(m['ttft_ms']['p99'])}",
                f"{_num(m['tpot_ms']['p50'], 2)} / {_num(m['tpot_ms']['p99'], 2)}",
                _num(m["itl_ms"]["p50"], 2),
                f"{_num(m['e2e_ms']['p50'])} / {_num(m['e2e_ms']['p99'])}",
                str(m["completed"]),
                str(m["failed"]),
            ]
        )
    return header, rows


def _headline(summary: dict[str, Any]) -> list[Block]:
    lines = []
    baseline = next(v for v in summary["variants"] if v["factor"] is None)
    top = _top_components(baseline.get("components", {}), 2)
    if top:
        lines.append(
            "The baseline's request time goes mostly to "
            + " and ".join(f"{component_label(n)} ({share:.0%})" for n, share in top)
            + "."
        )
    for v in summary["variants"]:
        if v["factor"] is None:
            continue
        effects = v["vs_baseline"]
        moved = [
            (s, effects[s.key])
            for s in COMPARED
            if s.key in HEADLINE_METRICS
            and s.key in effects
            and effects[s.key]["verdict"] != "no measurable effect"
        ]
        if not moved:
            lines.append(
                f"`{v['name']}`: no measurable effect on goodput, tokens/s, TPOT, TTFT p99 or "
                "E2E p50."
            )
            continue
        parts = [
            f"{s.label} {e['ratio']:.2f}× [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}] ({e['verdict']})"
            for s, e in moved
        ]
        lines.append(f"`{v['name']}`: " + "; ".join(parts) + ".")
        if diagnosis := v.get("diagnosis"):
            lines[-1] += f" Diagnosed: **{diagnosis.get('primary')}**."
    return [("h2", "Headline"), ("ul", lines)]


def _top_components(components: dict[str, dict[str, float]], n: int) -> list[tuple[str, float]]:
    ranked = sorted(((k, c["share"]) for k, c in components.items()), key=lambda kv: -kv[1])
    return [kv for kv in ranked[:n] if kv[1] > 0]


def _components_section(summary: dict[str, Any], figures: dict[str, Path]) -> list[Block]:
    variants = [v for v in summary["variants"] if v.get("components")]
    if not variants:
        return [("h2", "Where the time goes"), ("p", "No spans were decomposed.")]
    names = list(dict.fromkeys(n for v in variants for n in v["components"]))
    header = ["variant", *(component_label(n) for n in names)]
    rows = [
        [v["name"], *(_component_cell(v["components"].get(n, {})) for n in names)] for v in variants
    ]
    text = (
        "Mean per request from the spans (share of E2E). Network time of a hop = client span "
        "− server span of the same call."
    )
    blocks: list[Block] = [("h2", "Where the time goes"), ("p", text)]
    if "components" in figures:
        blocks.append(("img", (figures["components"], "stacked bar of each variant's time")))
    blocks.append(("table", (header, rows)))
    return blocks


def _component_cell(component: dict[str, float]) -> str:
    return f"{component.get('mean_ms', 0):.1f} ms ({component.get('share', 0):.0%})"


def _contention_note(summary: dict[str, Any]) -> list[Block]:
    """The rounds run on a contended machine, named before any figure is read."""
    contended = [
        (v["name"], r)
        for v in summary["variants"]
        for r in v["rounds"]
        if (r.get("contention") or {}).get("is_contended")
    ]
    if not contended:
        return []
    items = [_contended_item(name, r["round"], r["contention"]) for name, r in contended]
    text = (
        "**Contended machine.** Processes outside the deployment used cores during these "
        "rounds (cpu.json's `contention`; docs/metrics.md), so their figures are below an idle "
        f"machine's. A comparison whose rounds differ in contention reads *{CONTENTION_DIFFERS}* "
        "instead of better or worse."
    )
    return [("p", text), ("ul", items)]


def _background_text(workload: dict[str, Any]) -> str:
    procs = int(workload.get("background_procs") or 0)
    if not procs:
        return ""
    return f", with {_busy_processes(procs)} beside it (busy {workload.get('background_duty', 1.0):.0%})"


def _busy_processes(count: int) -> str:
    return f"{count} busy process" + ("" if count == 1 else "es")


def _contended_item(variant: str, round_number: int, contention: dict[str, Any]) -> str:
    planted = (contention.get("background") or {}).get("procs")
    return (
        f"`{variant}` round {round_number}: {contention['outside_cores']:.2f} of "
        f"{contention['num_cores']} cores used outside the deployment; its services waited for "
        f"a core {contention['wait_share']:.0%} of their runnable time"
        + (f" ({_busy_processes(planted)} planted)" if planted else "")
    )


def _cdf_section(summary: dict[str, Any], figures: dict[str, Path]) -> list[Block]:
    blocks: list[Block] = []
    for factor in _factors(summary):
        blocks.append(("h3", f"Latency distributions: {factor}"))
        for metric, label in plots.CDF_METRICS:
            key = f"cdf:{factor}:{metric}"
            if key in figures:
                blocks.append(("img", (figures[key], f"{label} CDF, {factor}")))
    return [("h2", "Latency distributions per factor"), *blocks] if blocks else []


def _cpu_section(summary: dict[str, Any]) -> list[Block]:
    names = list(dict.fromkeys(n for v in summary["variants"] for n in v["cpu_us_per_token"]))
    if not names:
        return []
    header = ["variant", *names]
    rows = [
        [v["name"], *(_num(v["cpu_us_per_token"].get(n), 0) for n in names)]
        for v in summary["variants"]
    ]
    text = (
        "CPU time of each process during the workload (/proc utime+stime, before/after) per "
        "output token, µs. `client` is the load generator (from its preflight to its exit)."
    )
    return [("h2", "CPU per output token"), ("p", text), ("table", (header, rows))]


MAX_FINDINGS = 2  # per variant: the primary type and the runner-up
MAX_EVIDENCE = 6
MAX_SUGGESTIONS = 3
WHAT_IF_PLOT = "what_if_tpot.png"  # drawn by `hopscope diagnose` into DIR/plots


def _diagnosis_section(summary: dict[str, Any], out: Path) -> list[Block]:
    diagnosed = [
        v
        for v in summary["variants"]
        if v.get("diagnosis") or v.get("prediction") or v.get("disagg_prediction")
    ]
    blocks: list[Block] = []
    if not diagnosed:
        return blocks
    intro = (
        "From `hopscope diagnose`: each variant's bottleneck — the largest share of the mean "
        "request's E2E (the time budget of docs/diagnosis.md) — the evidence measured for it, "
        "and what to try next, with the ratio it predicts. TPOT, TTFT and tokens/s are the "
        "figures of the table above."
    )
    blocks += [("h2", "Diagnosis"), ("p", intro)]
    for v in diagnosed:
        diagnosis = v.get("diagnosis") or {}
        blocks.append(("h3", f"{v['name']}: {diagnosis.get('primary', 'no diagnosis')}"))
        if headline := diagnosis.get("headline"):
            blocks.append(("p", f"**{headline}**"))
        if budget := diagnosis.get("budget"):
            blocks.append(("p", f"Time budget: {_budget_line(budget)}."))
        for finding in (diagnosis.get("findings") or [])[:MAX_FINDINGS]:
            blocks.append(("ul", _finding_items(finding)))
        if skipped := diagnosis.get("not_evaluated"):
            blocks.append(("p", "Rules not evaluated (each with what its inputs lack):"))
            blocks.append(("ul", [f"**{rule}**: {why}" for rule, why in skipped.items()]))
        if server := diagnosis.get("server_metrics"):
            shown = ", ".join(f"{k} {v:g}" for k, v in server.items() if isinstance(v, float))
            blocks.append(("p", f"Server metrics ({server.get('kind')}): {shown or 'none'}."))
        if prediction := v.get("prediction"):
            blocks.append(("p", _prediction_line(prediction)))
        lines = _disaggregation_lines(diagnosis.get("disaggregation"))
        if lines and _is_disaggregation_relevant(diagnosis):
            blocks.append(("p", "Prefill/decode disaggregation, predicted from these spans:"))
            blocks.append(("ul", lines))
        if disagg := v.get("disagg_prediction"):
            blocks.append(("p", _disagg_vs_measured_line(disagg)))
    if step := _next_step_line(summary, out):
        blocks.append(("p", step))
    if (out / "plots" / WHAT_IF_PLOT).exists():
        blocks.append(("img", (out / "plots" / WHAT_IF_PLOT, "predicted TPOT vs link delay")))
    return blocks


def _budget_line(budget: dict[str, Any]) -> str:
    try:
        from diagnose.report import budget_line
    except ImportError:
        return ""
    return budget_line(budget)


def _is_disaggregation_relevant(diagnosis: dict[str, Any]) -> bool:
    try:
        from diagnose.report import is_disaggregation_relevant
    except ImportError:
        return True
    return is_disaggregation_relevant(diagnosis)


def _next_step_line(summary: dict[str, Any], out: Path) -> str:
    from experiment.next_step import next_command, top_step

    step = top_step(summary)
    if step is None:
        return ""
    return (
        f"Next step: `{next_command(out, step)}` tests `{step.suggestion['switch']}` on "
        f"{step.variant} ({step.finding}, {step.share:.0%} of E2E)."
    )


def _finding_items(finding: dict[str, Any]) -> list[str]:
    score = finding.get("score")
    score_text = f" ({score:.0%} of E2E)" if isinstance(score, (int, float)) else ""
    items = [f"**{finding.get('type')}**{score_text}: {finding.get('symptom', '')}"]
    evidence = [
        f"{name} {_value(e)}"
        for name, e in (finding.get("evidence") or {}).items()
        if not (isinstance(e, dict) and e.get("value") is None)
    ]
    if evidence:
        items.append("evidence: " + ", ".join(evidence[:MAX_EVIDENCE]))
    for suggestion in (finding.get("suggestions") or [])[:MAX_SUGGESTIONS]:
        items.append(f"try {_suggestion_line(suggestion)}")
    return items


def _suggestion_line(suggestion: dict[str, Any]) -> str:
    try:
        from diagnose.report import suggestion_line
    except ImportError:
        return f"{suggestion.get('method')} (`{suggestion.get('switch')}`)"
    return suggestion_line(suggestion)


def _prediction_line(prediction: dict[str, Any]) -> str:
    return (
        f"Predicted from the {prediction.get('from')}'s spans: TPOT p50 "
        f"{_num(prediction.get('tpot_p50_ms'), 2)} ms; measured "
        f"{_num(prediction.get('measured_tpot_p50_ms'), 2)} ms (error "
        f"{_pct(prediction.get('error'))})."
    )


def _disaggregation_lines(prediction: dict[str, Any] | None) -> list[str]:
    try:
        from diagnose.report import disaggregation_lines
    except ImportError:
        return []
    return disaggregation_lines(prediction)


def _disagg_vs_measured_line(p: dict[str, Any]) -> str:
    parts = []
    for metric, label in (("ttft_p50_ms", "TTFT p50"), ("tpot_p50_ms", "TPOT p50"),
                          ("goodput", "goodput")):  # fmt: skip
        predicted, measured = p.get(metric), p.get(f"measured_{metric}")
        if predicted is None:
            continue
        parts.append(
            f"{label} predicted {_num(predicted, 2)}, measured {_num(measured, 2)} "
            f"(error {_pct(p.get('error', {}).get(metric))})"
        )
    return (
        f"Predicted from the {p.get('from')}'s spans as `{p.get('as')}`: " + "; ".join(parts) + "."
    )


def _value(evidence: Any) -> str:
    if isinstance(evidence, dict):
        value = evidence.get("value")
        text = f"{value:.3g}" if isinstance(value, (int, float)) else str(value)
        return f"{text} {evidence.get('unit', '')}".strip()
    return str(evidence)


def _pct(value: Any) -> str:
    return f"{value:+.0%}" if isinstance(value, (int, float)) else "-"
