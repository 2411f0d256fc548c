"""The experiment directory (the contract other tools read, e.g. `hopscope diagnose`):

DIR/summary.json, DIR/report.md, DIR/report.html, DIR/plots/*.png
DIR/plan.json                              the plan as resolved (checked by --resume)
DIR/<variant>/variant.json                 name, factor, value, deployment, workload
DIR/<variant>/round-<k>/bench.json         `hopscope bench --out` summary ("requests_file")
DIR/<variant>/round-<k>/requests.jsonl     per-request records (trace_id per record)
DIR/<variant>/round-<k>/spans.jsonl        this round's spans (OTLP JSON lines)
DIR/<variant>/round-<k>/describe.json      Describe (MessageToDict) after the workload
DIR/<variant>/round-<k>/metrics/<service>.prom
DIR/<variant>/round-<k>/cpu.json           CPU time per process, µs per output token
DIR/<variant>/round-<k>/pids.json          every process the round started or measured
DIR/<variant>/round-<k>/round.json         written last: the round is complete
DIR/<variant>/round-<k>/logs/*.log         serve (and the services it started), bench
DIR/<variant>/diagnosis.json               written by `hopscope diagnose`
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiment.plan import Variant

SUMMARY = "summary.json"
PLAN = "plan.json"


def variant_dir(out: Path, variant: Variant | str) -> Path:
    name = variant if isinstance(variant, str) else variant.dirname
    return out / name


def round_dir(out: Path, variant: Variant | str, round_index: int) -> Path:
    return variant_dir(out, variant) / f"round-{round_index + 1}"


def is_complete(path: Path) -> bool:
    try:
        return bool(json.loads((path / "round.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def complete_rounds(variant_path: Path) -> list[Path]:
    rounds = [p for p in variant_path.glob("round-*") if p.is_dir() and is_complete(p)]
    return sorted(rounds, key=lambda p: int(p.name.split("-")[1]))


def write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # readers never see half a file


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_requests(path: Path) -> list[dict[str, Any]]:
    """The per-request records of a round (`requests.jsonl`, named by bench.json)."""
    bench = read_json(path / "bench.json")
    requests_file = Path(bench.get("requests_file") or path / "requests.jsonl")
    if not requests_file.is_absolute() or not requests_file.exists():
        requests_file = path / requests_file.name
    with requests_file.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
