"""`hopscope experiment next DIR [--out DIR2]`: the loop closed. From DIR's diagnosis, the top
suggestion of the largest bottleneck measured (or of `--variant NAME`) becomes a plan: that
variant's deployment as the baseline, the suggestion's setting as the one factor, the same
workload, rounds and warm-up, and the suggestion's predicted ratio as the plan's `prediction:`.
The plan is written to DIR/next-plan.yaml and run into DIR2, whose report shows the prediction
beside the measured ratio (experiment/report.py, like any plan's `prediction:`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiment import layout

PLAN_FILE = "next-plan.yaml"  # in DIR: the plan `next` ran
SHOWN = ("placement", "model")  # written into the plan even at their defaults: read first


class NextError(ValueError):
    """DIR has nothing `next` can test (no diagnosis, no suggestion with a setting)."""


@dataclass(frozen=True, slots=True)
class NextStep:
    variant: str  # DIR's variant whose diagnosis is acted on
    finding: str  # its bottleneck type
    share: float  # of the mean request's E2E
    suggestion: dict[str, Any]

    @property
    def predicted(self) -> dict[str, Any] | None:
        predicted = self.suggestion.get("predicted")
        return predicted if isinstance(predicted, dict) else None


def _diagnosed(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in summary.get("variants", []) if (v.get("diagnosis") or {}).get("findings")]


def steps(summary: dict[str, Any], variant: str | None = None) -> Iterator[NextStep]:
    """The suggestions `next` may test, best first: of the variant named, or of the variants by
    their largest finding's share of E2E (the baseline first among equals); within a variant, its
    findings in order and, in each, the suggestions that set one serve flag, predicted ones
    first. A suggestion its deployment cannot run (a Ray placement under no_ray) is left out."""
    candidates = _diagnosed(summary)
    if variant is not None:
        candidates = [v for v in candidates if v["name"] == variant]
    candidates.sort(key=lambda v: -v["diagnosis"]["findings"][0]["score"])  # stable: baseline
    for v in candidates:
        for finding in v["diagnosis"]["findings"]:
            rows = [r for r in finding.get("suggestions", []) if r.get("factor")]
            rows.sort(key=lambda r: r.get("predicted") is None)
            for row in rows:
                if _can_run(row, v.get("deployment") or {}):
                    yield NextStep(v["name"], finding["type"], float(finding["score"]), row)


def top_step(summary: dict[str, Any], variant: str | None = None) -> NextStep | None:
    """The suggestion `next` tests first (see `steps`)."""
    return next(steps(summary, variant), None)


def _can_run(suggestion: dict[str, Any], deployment: dict[str, Any]) -> bool:
    from deploy.spec import NO_RAY_PLACEMENTS

    if suggestion["factor"] == "placement" and deployment.get("no_ray"):
        return str(suggestion["value"]) in NO_RAY_PLACEMENTS
    return True


def next_command(out: Path, step: NextStep) -> str:
    """The command line that tests `step` (`--variant` only where the default would not pick it)."""
    return f"hopscope experiment next {out} --variant {step.variant}"


def _non_default(
    resolved: dict[str, Any], flags: dict[str, Any], defaults: dict[str, Any]
) -> dict[str, Any]:
    """The settings of a resolved flag set that differ from the same parser's resolved defaults
    (a plan's keys; compared resolved to resolved, so a flag whose default is filled in later,
    e.g. bench's endpoint, is not taken for a setting)."""
    settings = {}
    for key, value in resolved.items():
        if key not in flags or value is None:
            continue
        if value == defaults.get(key) and key not in SHOWN:
            continue
        if isinstance(value, list):  # bench's sweep flags hold the one load point as a list
            if len(value) != 1:
                continue
            value = value[0]
        settings[key] = value
    return settings


def plan_data(exp_dir: Path, step: NextStep) -> dict[str, Any]:
    """The plan that tests `step` (a YAML-ready mapping)."""
    from experiment.flags import bench_flags, bench_parser, resolve, serve_flags, serve_parser
    from experiment.plan import variant_name

    plan = layout.read_json(exp_dir / layout.PLAN)
    variant = layout.read_json(exp_dir / _dirname(step.variant) / "variant.json")
    deployment = dict(variant["deployment"])
    if deployment.get("link_delay_ms") or deployment.get("link_rate_mbit"):
        raise NextError(
            f"{step.variant} ran over an emulated link, which a plan's baseline cannot hold; "
            f"test `{step.suggestion['switch']}` with a plan of your own"
        )
    baseline = _non_default(deployment, serve_flags(), resolve(serve_parser(), []))
    factor, value = str(step.suggestion["factor"]), step.suggestion["value"]
    predicted = step.predicted
    expect = (
        f"predicted {predicted['metric']} {predicted['ratio']:.2f}x"
        if predicted
        else "not predicted"
    )
    why = (
        f"`hopscope experiment next` on {exp_dir}: {step.variant}'s {step.finding} is "
        f"{step.share:.0%} of its mean E2E; `{step.suggestion['switch']}` predicted from its spans "
        "and step-time fit (docs/diagnosis.md, Predictions)"
    )
    ratios = {predicted["metric"]: predicted["ratio"]} if predicted else {}
    for extra in step.suggestion.get("also_predicted") or []:  # the same model's other metrics
        ratios.setdefault(extra["metric"], extra["ratio"])
    prediction: dict[str, Any] | str = (
        {variant_name(factor, value): ratios, "why": why}
        if predicted
        else f"{why}: not predicted ({step.suggestion.get('not_predicted')})"
    )
    return {
        "name": _slug(f"next-{step.variant}-{factor}"),
        "description": f"tests `{step.suggestion['switch']}` on {step.variant} of {exp_dir} "
        f"({step.finding}, {step.share:.0%} of E2E; {expect})",
        "baseline": baseline,
        "workload": _non_default(
            plan["workload"], bench_flags(), resolve(bench_parser(), ["--address", "-"])
        ),
        "factors": {factor: [value]},
        "repeats": plan.get("repeats", 1),
        "warmup": plan.get("warmup", 0),
        "timeout_s": plan.get("timeout_s", 900.0),
        "prediction": prediction,
    }


def _dirname(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def write_plan(exp_dir: Path, step: NextStep) -> Path:
    path = exp_dir / PLAN_FILE
    path.write_text(yaml.safe_dump(plan_data(exp_dir, step), sort_keys=False), encoding="utf-8")
    return path


def predicted_vs_measured(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant and metric the plan's `prediction:` names: predicted and measured
    ratio (summary.json's `vs_baseline`, with its interval) and the error, predicted /
    measured − 1."""
    prediction = (summary.get("plan") or {}).get("prediction")
    if not isinstance(prediction, dict):
        return []
    measured = {v["name"]: v.get("vs_baseline") or {} for v in summary.get("variants", [])}
    rows = []
    for name, ratios in prediction.items():
        if not isinstance(ratios, dict):
            continue  # the `why:` text
        for metric, ratio in ratios.items():
            entry = measured.get(name, {}).get(metric) or {}
            value = entry.get("ratio")
            rows.append(
                {
                    "variant": name,
                    "metric": metric,
                    "predicted": ratio,
                    "measured_ratio": value,
                    "ci95": entry.get("ci95"),
                    "error": ratio / value - 1 if value else None,
                }
            )
    return rows
