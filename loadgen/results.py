"""Result files: per-request JSONL and the summary JSON (the contract the rest of hopscope reads).

Summary document: `config` (every flag, the resolved point, seed, git sha, label),
`requests_file` (path of the JSONL; each row's `meets_slo` says whether it counts toward goodput),
`summary` (counts, duration, throughputs, goodput with `goodput_requests`, `slo_attainment` and
the `slo` it was measured against, the
client's own CPU (`client_cpu_s`, `client_cpu_us_per_token`) and the
statistics of ttft_ms tpot_ms itl_ms e2e_ms e2e_from_schedule_ms schedule_lag_ms), and
`failed_by_status` (failed requests per gRPC status code name).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from loadgen.config import SloConfig
from loadgen.metrics import (
    RequestRecord,
    e2e_from_schedule_ms,
    e2e_ms,
    itl_ms,
    meets_slo,
    schedule_lag_ms,
    tpot_ms,
    ttft_ms,
)


def git_sha(cwd: Path | None = None) -> str:
    """The checkout's commit ("unknown" outside git), with "-dirty" when files are modified."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not sha:
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def point_paths(
    out: Path, point_tag: str, repeat_index: int, num_repeats: int
) -> tuple[Path, Path]:
    """(summary, requests) paths of one point of one repeat; one point, one repeat -> `out`."""
    stem = out.with_suffix("") if out.suffix == ".json" else out
    name = stem.name + (f".{point_tag}" if point_tag else "")
    name += f".r{repeat_index + 1}" if num_repeats > 1 else ""
    summary = stem.with_name(name + ".json")
    return summary, stem.with_name(name + ".requests.jsonl")


def record_row(r: RequestRecord, is_measured: bool, slo: SloConfig | None = None) -> dict[str, Any]:
    return {
        "index": r.index,
        "request_id": r.request_id,
        "trace_id": r.trace_id,
        "worker": r.worker,
        "t_sched_s": r.t_sched,
        "t_send_s": r.t_send,
        "ttft_ms": ttft_ms(r),
        "tpot_ms": tpot_ms(r),
        "e2e_ms": e2e_ms(r),
        "e2e_from_schedule_ms": e2e_from_schedule_ms(r),
        "schedule_lag_ms": schedule_lag_ms(r),
        "itl_ms": itl_ms(r),
        "n_in": r.num_prompt_tokens,
        "n_out": r.num_output_tokens,
        "tokens_per_message": r.tokens_per_message,
        "status": r.status,
        "error": r.error,
        "is_measured": is_measured,
        "meets_slo": meets_slo(r, slo or SloConfig()),  # counts toward goodput
    }


def write_requests(
    path: Path,
    records: list[RequestRecord],
    measured_ids: set[int],
    slo: SloConfig | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(record_row(r, r.index in measured_ids, slo)) + "\n")


def write_summary(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def read_summary(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable summary JSON ({exc})") from None
    if not isinstance(document, dict) or "summary" not in document or "config" not in document:
        raise ValueError(f"{path}: not a hopscope bench summary (no config/summary)")
    return document
