"""Does `hopscope diagnose` name the right bottleneck on runs whose bottleneck is known, and does
the network what-if predict measured link delays? (issue 12, "Done when")

Runs three experiments with `hopscope experiment` (each diagnosed by it), then reads the verdicts:

- benchmarks/diagnose_plans/busy.yaml: colocated at concurrency 32 (all CPUs busy) -> not
  network; with `max_num_seqs: 2` -> scheduling
- benchmarks/diagnose_plans/alone.yaml: inproc at concurrency 1 -> neither scheduling nor network
- benchmarks/diagnose_plans/whatif.yaml: split over a 2-node local Ray cluster at concurrency 4,
  link delays 1 and 3 ms, 4 rounds -> network at 3 ms; TPOT p50 predicted from the zero-delay
  baseline within 15 %

    python -m benchmarks.diagnose_acceptance [--skip-network] [--work DIR [--reuse]]
        [--out benchmarks/results/diagnose.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.lifecycle import launch

REPO_ROOT = Path(__file__).resolve().parents[1]
PLANS = {
    "busy": str(REPO_ROOT / "benchmarks" / "diagnose_plans" / "busy.yaml"),
    "alone": str(REPO_ROOT / "benchmarks" / "diagnose_plans" / "alone.yaml"),
    "network": str(REPO_ROOT / "benchmarks" / "diagnose_plans" / "whatif.yaml"),
}
EXPECT = {  # variant -> (must be, must not be)
    ("busy", "baseline"): (None, {"network"}),
    ("busy", "max_num_seqs=2"): ("scheduling", set()),
    ("alone", "baseline"): (None, {"scheduling", "network"}),
    ("alone", "max_num_seqs=8"): (None, {"scheduling", "network"}),
    ("network", "link_delay_ms=3"): ("network", set()),
}
MAX_PREDICTION_ERROR = 0.15
EXPERIMENT_TIMEOUT_S = 1800.0


def run_experiment(plan: str, out: Path) -> float:
    started = time.monotonic()
    argv = ["-m", "deploy.cli", "experiment", plan, "--out", str(out), "--quiet"]
    child = launch(argv, name=f"experiment {plan}", log_path=out.with_suffix(".log"))
    try:
        code = child.process.wait(timeout=EXPERIMENT_TIMEOUT_S)
    finally:
        child.stop()
    if code != 0:
        raise RuntimeError(f"experiment {plan} exited {code}: {child.last_lines()}")
    return time.monotonic() - started


def verdicts(name: str, out: Path) -> dict[str, Any]:
    summary = json.loads((out / "summary.json").read_text())
    rows = {}
    for variant in summary["variants"]:
        diagnosis = variant.get("diagnosis") or {}
        row: dict[str, Any] = {
            "primary": diagnosis.get("primary"),
            "scores": diagnosis.get("scores"),
            "tpot_p50_ms": diagnosis.get("measured", {}).get("tpot_p50_ms"),
        }
        must, must_not = EXPECT.get((name, variant["name"]), (None, set()))
        row["ok"] = (must is None or row["primary"] == must) and row["primary"] not in must_not
        if prediction := variant.get("prediction"):
            row["prediction"] = prediction
            row["ok"] = row["ok"] and abs(prediction["error"]) <= MAX_PREDICTION_ERROR
        rows[variant["name"]] = row
    return rows


def paired_rounds(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Each link variant's round k predicted from the baseline's round k (the same minute of a
    shared machine): how much of the pooled error is the machine's drift between rounds."""
    from diagnose.calibrate import get_calibration
    from diagnose.inputs import load_bench_run
    from diagnose.signals import extract
    from diagnose.whatif import predict

    calibration = get_calibration()
    result: dict[str, list[dict[str, Any]]] = {}
    for variant in sorted(out.glob("link_delay_ms=*")):
        delay_ms = float(variant.name.split("=", 1)[1])
        rows = []
        for round_dir in sorted(variant.glob("round-*")):
            base_dir = out / "baseline" / round_dir.name
            if not (round_dir / "bench.json").exists() or not (base_dir / "bench.json").exists():
                continue
            base = extract(load_bench_run(base_dir / "bench.json", base_dir / "spans.jsonl"))
            measured = extract(load_bench_run(round_dir / "bench.json", round_dir / "spans.jsonl"))
            predicted = predict(base, calibration, base.link.with_delay(delay_ms))["tpot_p50_ms"]
            rows.append({
                "round": round_dir.name,
                "baseline_tpot_p50_ms": round(base.tpot_p50_ms, 3),
                "predicted_tpot_p50_ms": round(predicted, 3),
                "measured_tpot_p50_ms": round(measured.tpot_p50_ms, 3),
                "error": round(predicted / measured.tpot_p50_ms - 1, 4),
            })  # fmt: skip
        result[variant.name] = rows
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnose_acceptance")
    parser.add_argument("--skip-network", action="store_true", help="no Ray cluster run")
    parser.add_argument("--work", type=Path, help="where the experiments go (default: a temp dir)")
    parser.add_argument(
        "--reuse", action="store_true", help="keep experiments already finished in --work"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "diagnose.json"
    )
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="hopscope-diagnose-"))
    results: dict[str, Any] = {}
    for name, plan in PLANS.items():
        if name == "network" and args.skip_network:
            continue
        out = work / name
        if args.reuse and (out / "summary.json").exists():
            wall_s = 0.0  # not rerun
        else:
            wall_s = run_experiment(plan, out)
        results[name] = {"plan": plan, "wall_s": round(wall_s, 1), "variants": verdicts(name, out)}
        if name == "network":
            results[name]["paired_rounds"] = paired_rounds(out)
    document = {"results": results, "ok": all(
        row["ok"] for r in results.values() for row in r["variants"].values())}  # fmt: skip
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
