"""Planted bottlenecks, scored (issue 31, item 7): does `hopscope diagnose` name the bottleneck
planted on purpose, and does the fix it suggests do what it predicts?

Each scenario is a plan whose baseline carries one planted bottleneck, written down with the
type the diagnosis must name first and the fix expected. For each: `hopscope experiment PLAN`
(2 rounds, diagnosed), then `hopscope experiment next DIR --variant V` (the suggested fix as a
factor, the same workload) — except where the fix is not one serve flag the plan can change, or
is not predicted (nothing to score: `--batching continuous`, `--dtype bfloat16` on a CPU).
The result: each scenario's diagnosed type and shares, a confusion matrix (planted x named), and
each fix's predicted vs measured ratio with the error (target 15 %).

    python -m benchmarks.diagnose_acceptance [--scenarios a,b] [--work DIR [--reuse]]
        [--out benchmarks/results/diagnose_acceptance.json]

Needs a quiet machine: every scenario's timing is what it plants (the contention scenario starts
its own busy processes). `network` needs Ray (a 2-node local cluster with a link delay).
`host_cpu` serves a 1-layer model with random weights (`micro`, written into --work): its step
is as short as a GPU's, so the services' work per step is the time.

Why the plants are what they are (two earlier ones planted something else, their spans showed):
- `compute` ran 8 requests of 1024-token prompts at once: 79% of the decode steps carried other
  requests' prompts (134.7 ms vs 3.0 ms decode-only), which *is* prefill interference. It now
  runs one request at a time: the prompt's arithmetic is the time and no decode shares a step.
- `host_cpu` ran `tiny` at batch 64: the engine's step was 12.2 of a 17.5 ms cycle and grew
  with its tokens (83% of it), so it read compute, host second (28%). It now serves `micro`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.lifecycle import launch
from experiment.background import BackgroundLoad, background_load

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_PREDICTION_ERROR = 0.15
EXPERIMENT_TIMEOUT_S = 3600.0
ROUNDS = 2
ENGINE_TYPES = ("memory_io", "compute")
MICRO_MODEL = "micro"  # a plan's model: the harness writes the checkpoint (write_micro_model)
# 1 layer, hidden 64: a decode step of ~0.3 ms on 2 CPU cores, the shared tokenizer's vocabulary
MICRO_HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 4096,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "eos_token_id": 1,
    "bos_token_id": 0,
    "torch_dtype": "float32",
}


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    plan: dict[str, Any]
    expected: tuple[str, ...]  # the types the diagnosis may name first (one, or the control's)
    fix: str  # the fix expected, as a switch (or what the control expects: none)
    variant: str = "baseline"  # the variant judged (a link scenario judges the delayed one)
    busy_processes: int = 0  # processes burning a core each, outside the deployment
    is_fix_testable: bool = True  # `experiment next` can run it (one serve flag, no link)
    why: str = ""


def _plan(name: str, baseline: dict[str, Any], workload: dict[str, Any],
          factors: dict[str, list[Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """A plan; without factors of its own a harmless one (every plan measures a variant)."""
    return {
        "name": f"accept-{name}",
        "description": f"diagnosis acceptance: {name}",
        "baseline": {"no_ray": True, "model": "tiny", **baseline},
        "workload": workload,
        "factors": factors or {"stream_interval": [2]},
        "repeats": ROUNDS,
    }


SCENARIOS = (
    Scenario(
        "scheduling_small_batch",
        _plan(
            "scheduling_small_batch",
            {"placement": "colocated", "max_num_seqs": 2},
            {"concurrency": 16, "num_requests": 64, "input_len": 64, "output_len": 32},
        ),
        ("scheduling",),
        "--max-num-seqs 16",
        why="16 requests in flight, 2 run: the rest wait in line most of their time",
    ),
    Scenario(
        "scheduling_static",
        _plan(
            "scheduling_static",
            {"placement": "colocated", "batching": "static", "max_num_seqs": 4},
            {
                "concurrency": 16,
                "num_requests": 64,
                "input_len": 64,
                "output_len": 64,
                "output_len_spread": 0.9,
            },
        ),
        ("scheduling",),
        "--batching continuous",
        is_fix_testable=False,  # not predicted (the spread of output lengths): nothing to score
        why="a static batch of 4 waits for its longest request while 12 wait in line",
    ),
    Scenario(
        "memory_io",
        _plan(
            "memory_io",
            {"placement": "colocated", "model": "smollm2-135m"},
            {"concurrency": 1, "num_requests": 12, "input_len": 32, "output_len": 64},
        ),
        ("memory_io",),
        "--dtype bfloat16",
        is_fix_testable=False,  # not predicted on a CPU (docs/diagnosis.md): nothing to score
        why="batch-1 decode: every step reads all the weights for one token",
    ),
    Scenario(
        "compute",
        _plan(
            "compute",
            {"placement": "colocated", "max_num_seqs": 8},
            {"concurrency": 1, "num_requests": 16, "input_len": 1024, "output_len": 4},
        ),
        ("compute",),
        "none predicted on CPU (kernels already native)",
        is_fix_testable=False,
        why="one request at a time, 1024-token prompts, 4 output tokens: the time is the "
        "prompt's arithmetic, and no decode step carries another request's prompt",
    ),
    Scenario(
        "network",
        {
            "name": "accept-network",
            "description": "diagnosis acceptance: split over 2 local Ray nodes, 5 ms link",
            "baseline": {"placement": "split", "model": "tiny", "max_num_seqs": 16},
            "workload": {"concurrency": 4, "num_requests": 48, "input_len": 64, "output_len": 64},
            "factors": {"link_delay_ms": [5]},
            "repeats": ROUNDS,
        },
        ("network",),
        "--placement colocated (or --num-scheduler-steps 4)",
        variant="link_delay_ms=5",
        is_fix_testable=False,  # the plan's baseline cannot hold an emulated link
        why="every decode step crosses a 5 ms (one way) link",
    ),
    Scenario(
        "host_cpu",
        _plan(
            "host_cpu",
            {"placement": "colocated", "model": MICRO_MODEL, "max_num_seqs": 16},
            {"concurrency": 16, "num_requests": 64, "input_len": 8, "output_len": 128},
        ),
        ("host_cpu",),
        "--num-scheduler-steps 4",
        why="a 1-layer model's step is as short as a GPU's: the tokenizer's and scheduler's "
        "Python and the hops per step are the time (a front door under a CPU quota would plant "
        "it too; plans cannot set one)",
    ),
    Scenario(
        "prefill_interference",
        _plan(
            "prefill_interference",
            {"placement": "colocated", "max_num_seqs": 16},
            {"concurrency": 16, "num_requests": 64, "input_len": 1024, "output_len": 128},
        ),
        ("prefill_interference",),
        # smaller chunks come first but are not predicted (docs/diagnosis.md, Predictions):
        # `next` tests the predicted one, the disaggregation prediction's TPOT and TTFT p50
        "--placement disagg (after --max-num-batched-tokens, not predicted)",
        why="1024-token prompts join the running decodes' steps",
    ),
    Scenario(
        "contention",
        _plan(
            "contention",
            {"placement": "colocated", "max_num_seqs": 16},
            {"concurrency": 16, "num_requests": 64, "input_len": 64, "output_len": 64},
        ),
        ("contention",),
        "--placement split (engine threads auto already leave the busy cores)",
        busy_processes=2,
        is_fix_testable=False,  # not predicted: depends on the processes outside
        why="two processes outside the deployment burn a core each",
    ),
    Scenario(
        "healthy",
        _plan(
            "healthy",
            {"placement": "colocated", "model": "smollm2-135m", "max_num_seqs": 16},
            {"concurrency": 4, "num_requests": 16, "input_len": 32, "output_len": 32},
        ),
        ENGINE_TYPES,
        "none (the engine is the work)",
        is_fix_testable=False,
        why="a closed loop the deployment serves without queueing: the engine is the time",
    ),
)
SHORT = ("scheduling_small_batch", "memory_io", "healthy")  # the tests' version


@dataclass(slots=True)
class Outcome:
    scenario: str
    expected: tuple[str, ...]
    named: str | None
    shares: dict[str, float] = field(default_factory=dict)
    fix: dict[str, Any] = field(default_factory=dict)
    is_contended: bool = False  # a round ran on a busy host (summary.json's contended_rounds)

    @property
    def is_named(self) -> bool:
        return self.named in self.expected

    @property
    def is_busy_host(self) -> bool:
        """Not the planted type, but contention on a host that was busy: true, and no verdict
        on the plant (rerun on a quiet machine)."""
        return not self.is_named and self.is_contended and self.named == "contention"

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": list(self.expected),
            "named": self.named,
            "ok": self.is_named,
            "busy_host": self.is_busy_host,
            "shares": self.shares,
            "fix": self.fix,
        }


def _hopscope(argv: list[str], log: Path) -> None:
    child = launch(["-m", "deploy.cli", *argv], name=" ".join(argv[:2]), log_path=log)
    try:
        code = child.process.wait(timeout=EXPERIMENT_TIMEOUT_S)
    finally:
        child.stop()
    if code != 0:
        raise RuntimeError(f"hopscope {' '.join(argv)} exited {code}: {child.last_lines()}")


def judged_variant(scenario: Scenario, summary: dict[str, Any]) -> dict[str, Any]:
    return next((v for v in summary["variants"] if v["name"] == scenario.variant), {})


def judge(scenario: Scenario, summary: dict[str, Any]) -> Outcome:
    """What the diagnosis named for the judged variant, against the planted type."""
    variant = judged_variant(scenario, summary)
    diagnosis = variant.get("diagnosis") or {}
    shares = (diagnosis.get("budget") or {}).get("shares") or {}
    contended = bool(variant.get("contended_rounds"))
    return Outcome(scenario.name, scenario.expected, diagnosis.get("primary"), shares,
                   is_contended=contended)  # fmt: skip


def fix_outcome(
    next_summary: dict[str, Any], fresh: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The fix `experiment next` ran (its plan's one factor): the switch, the predicted and
    measured ratio (the plan's `prediction:` against `vs_baseline`), the error. `fresh`: the
    prediction the current code makes from the same diagnosed spans (a reused run), which then
    is the one scored; the plan's stays as `predicted_at_run`."""
    from experiment.next_step import predicted_vs_measured

    rows = predicted_vs_measured(next_summary)
    row = rows[0] if rows else {}
    factor, values = next(iter((next_summary["plan"].get("factors") or {"": [None]}).items()))
    predicted = {"metric": row["metric"], "ratio": row["predicted"]} if row else None
    measured = row.get("measured_ratio")
    outcome: dict[str, Any] = {
        "switch": f"--{factor.replace('_', '-')} {values[0]}" if factor else None
    }
    if fresh and predicted and fresh.get("metric") == predicted["metric"]:
        outcome["predicted_at_run"] = predicted
        predicted = fresh
    error = predicted["ratio"] / measured - 1 if predicted and measured else None
    also = [
        {k: r[k] for k in ("metric", "predicted", "measured_ratio", "error")} for r in rows[1:]
    ]  # the same model's other metrics (a larger batch: TPOT beside tokens/s)
    # the prediction assumes the cores the diagnosed run had: rounds that processes outside the
    # deployment contended (summary.json's contended_rounds) are no test of it
    busy = any(v.get("contended_rounds") for v in next_summary.get("variants", []))
    return outcome | {
        "predicted": predicted,
        "measured_ratio": measured,
        "error": error,
        "ok": error is not None and abs(error) <= MAX_PREDICTION_ERROR,
        "busy_host": busy,
        "also": also,
    }


def current_prediction(
    summary: dict[str, Any], variant: str, factor: str, value: Any
) -> dict[str, Any] | None:
    """The predicted {metric, ratio} of the suggestion `factor: value` in the variant's
    diagnosis (as diagnosed now)."""
    variant_doc: dict[str, Any] = next((v for v in summary["variants"] if v["name"] == variant), {})
    for finding in (variant_doc.get("diagnosis") or {}).get("findings", []):
        for row in finding.get("suggestions", []):
            if row.get("factor") == factor and str(row.get("value")) == str(value):
                return row.get("predicted")
    return None


def confusion(outcomes: Sequence[Outcome]) -> dict[str, dict[str, int]]:
    """planted (the scenario's first expected type; the control as `healthy`) -> named -> n."""
    matrix: dict[str, dict[str, int]] = {}
    for o in outcomes:
        planted = "healthy" if o.expected == ENGINE_TYPES else o.expected[0]
        row = matrix.setdefault(planted, {})
        row[str(o.named)] = row.get(str(o.named), 0) + 1
    return matrix


def table(outcomes: Sequence[Outcome]) -> str:
    """The markdown table benchmarks/README.md carries. A link scenario's row shows the link
    what-if (TPOT p50 predicted from the undelayed baseline's spans) when no fix was run."""
    lines = [
        "| scenario | planted | named | fix | predicted | measured | error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        fix = o.fix
        predicted = fix.get("predicted") or {}
        cells = (f"{_ratio(predicted.get('ratio'))} {predicted.get('metric', '')}",
                 _ratio(fix.get("measured_ratio")), _pct(fix.get("error")))  # fmt: skip
        what_if = fix.get("link_what_if") or {}
        if not predicted and what_if.get("tpot_p50_ms"):
            cells = (f"TPOT p50 {what_if['tpot_p50_ms']:.1f} ms (link what-if)",
                     f"{what_if['measured_tpot_p50_ms']:.1f} ms", _pct(what_if.get("error")))  # fmt: skip
        if fix.get("busy_host") and fix.get("error") is not None and not fix.get("ok"):
            cells = (*cells[:2], f"{cells[2]} (busy host)")
        lines.append(
            f"| {o.scenario} | {'/'.join(o.expected)} | {o.named}{_mark(o)} "
            f"| {fix.get('switch') or fix.get('expected') or '-'} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def _mark(o: Outcome) -> str:
    return "" if o.is_named else " (busy host)" if o.is_busy_host else " ✗"


def _ratio(value: Any) -> str:
    return f"{value:.2f}×" if isinstance(value, (int, float)) else "-"


def _pct(value: Any) -> str:
    return f"{value:+.0%}" if isinstance(value, (int, float)) else "-"


def write_micro_model(directory: Path) -> Path:
    """The `micro` checkpoint (MICRO_HF_CONFIG, seeded random weights, the presets' tokenizer):
    a local Hugging Face directory `serve --model` reads."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from services.models.checkpoint import preset_weights
    from services.models.config import ModelConfig
    from services.models.presets import PRESET_TOKENIZER_PATH

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(MICRO_HF_CONFIG))
    weights = preset_weights(
        ModelConfig.from_hf(MICRO_HF_CONFIG), 0, torch.float32, torch.device("cpu")
    )
    save_file(weights, str(directory / "model.safetensors"))
    shutil.copy(PRESET_TOKENIZER_PATH, directory / "tokenizer.json")
    return directory


def plan_for_run(scenario: Scenario, work: Path, rounds: int) -> dict[str, Any]:
    """The scenario's plan with its rounds, and `micro` as the checkpoint written into `work`."""
    plan = {**scenario.plan, "repeats": rounds}
    if plan["baseline"].get("model") == MICRO_MODEL:
        model_dir = work / "micro-model"
        if not (model_dir / "model.safetensors").exists():
            write_micro_model(model_dir)
        plan["baseline"] = {**plan["baseline"], "model": str(model_dir)}
    return plan


def _summary_of(exp_dir: Path, is_reused: bool, log: Path) -> dict[str, Any]:
    """summary.json; a reused experiment is diagnosed again with the current code first."""
    if is_reused:
        _hopscope(["diagnose", str(exp_dir)], log)
    return dict(json.loads((exp_dir / "summary.json").read_text()))


def run_scenario(
    scenario: Scenario, work: Path, reuse: bool, rounds: int = ROUNDS, is_fix_run: bool = True
) -> Outcome:
    out, plan_path = work / scenario.name, work / f"{scenario.name}.yaml"
    plan_path.write_text(yaml.safe_dump(plan_for_run(scenario, work, rounds), sort_keys=False))
    is_reused = reuse and (out / "summary.json").exists()
    if not is_reused:
        # processes outside the deployment, each burning a core (stopped however this is left)
        busy = BackgroundLoad(procs=scenario.busy_processes)
        with background_load(busy, work / f"{scenario.name}.busy.log"):
            _hopscope(["experiment", str(plan_path), "--out", str(out), "--quiet"],
                      work / f"{scenario.name}.log")  # fmt: skip
    summary = _summary_of(out, is_reused, work / f"{scenario.name}.diagnose.log")
    outcome = judge(scenario, summary)
    outcome.fix = {"expected": scenario.fix}
    judged = judged_variant(scenario, summary)
    if judged.get("prediction"):  # a link variant: the what-if from the baseline's spans
        outcome.fix["link_what_if"] = judged["prediction"]
    if scenario.is_fix_testable and is_fix_run:
        fixed = work / f"{scenario.name}-next"
        is_fix_reused = reuse and (fixed / "summary.json").exists()
        try:
            if not is_fix_reused:
                _hopscope(["experiment", "next", str(out), "--variant", scenario.variant,
                           "--out", str(fixed), "--quiet"], work / f"{scenario.name}-next.log")  # fmt: skip
        except RuntimeError as exc:  # one failed fix run is a row of the table, not the end
            outcome.fix["failed"] = str(exc)
            return outcome
        next_summary = json.loads((fixed / "summary.json").read_text())
        fresh = None
        if is_reused:  # the prediction the current code makes from the same spans
            factor, values = next(iter(next_summary["plan"]["factors"].items()))
            fresh = current_prediction(summary, scenario.variant, factor, values[0])
        outcome.fix.update(fix_outcome(next_summary, fresh))
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnose_acceptance")
    parser.add_argument("--scenarios", help="comma-separated names (default: all)")
    parser.add_argument("--short", action="store_true", help=f"only {', '.join(SHORT)}")
    parser.add_argument("--work", type=Path, help="where the experiments go (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep experiments done in --work (diagnosed again, fixes predicted "
                        "again, with the current code)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds per experiment")
    parser.add_argument("--no-fix", action="store_true", help="diagnose only; no `next` runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / "diagnose_acceptance.json",
    )
    args = parser.parse_args(argv)
    names = args.scenarios.split(",") if args.scenarios else SHORT if args.short else None
    chosen = [s for s in SCENARIOS if names is None or s.name in names]
    work = args.work or Path(tempfile.mkdtemp(prefix="hopscope-accept-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    outcomes = [run_scenario(s, work, args.reuse, args.rounds, not args.no_fix) for s in chosen]
    document = {
        "benchmark": "diagnose_acceptance",
        "load_avg_at_end": list(os.getloadavg()),
        "wall_s": round(time.monotonic() - started, 1),
        "scenarios": {o.scenario: o.to_json() for o in outcomes},
        "confusion": confusion(outcomes),
        "named_first": f"{sum(o.is_named for o in outcomes)} of {len(outcomes)}",
        "fixes_within_15pct": [o.scenario for o in outcomes if o.fix.get("ok")],
        "fixes_on_a_busy_host": [o.scenario for o in outcomes if o.fix.get("busy_host")],
        "table": table(outcomes),
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(document["table"])
    print(f"named first: {document['named_first']}; confusion: {document['confusion']}")
    return 0 if all(o.is_named for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
