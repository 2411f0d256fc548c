"""AIPerf (NVIDIA's `aiperf profile`) as a second, independent client for benchmarks/peers.py.

`hopscope bench --url` measures every system in the peers table; a client written by the same
people as one of the servers could flatter it (how TTFT is stamped, how tokens are counted). So each
bench point is run again, on the same server, by AIPerf: its own HTTP stack (aiohttp), its own
SSE parser, and output tokens counted by re-tokenizing the streamed text with the model's
tokenizer rather than trusting the server. The two clients' figures sit side by side in
results/peers.json (`points[].aiperf`) and the README.

AIPerf lives in its own venv beside the peers' (`python -m benchmarks.peers --setup`); CI never
runs it. The parser of its `profile_export_aiperf.json` is pure and tested.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

VENV = "aiperf"
VERSION = "0.13.0"
INSTALL = (["install", f"aiperf=={VERSION}"],)
PROBE = "import aiperf"
EXPORT_FILE = "profile_export_aiperf.json"
TIMEOUT_S = 900.0
PACE_PER_S = 500  # request-rate cap over the concurrency limit (see profile_argv)
# (our figure name, AIPerf metric tag, statistic): the same names as the bench figures
FIGURES = (
    ("output_tok_s", "output_token_throughput", "avg"),
    ("ttft_p50_ms", "time_to_first_token", "p50"),
    ("ttft_p99_ms", "time_to_first_token", "p99"),
    # AIPerf's "inter_token_latency" is per request: (e2e - TTFT) / (output tokens - 1), which
    # is hopscope's TPOT, not its per-message ITL
    ("tpot_p50_ms", "inter_token_latency", "p50"),
    ("tpot_p99_ms", "inter_token_latency", "p99"),
    ("e2e_p50_ms", "request_latency", "p50"),
    ("output_len_avg", "output_sequence_length", "avg"),
    ("completed", "request_count", "avg"),
    ("failed", "error_request_count", "avg"),  # absent when none failed
)


def write_dataset(prompts_jsonl: Path, out: Path) -> Path:
    """The peers' prompts (`{"prompt": ...}` lines) as AIPerf's `single_turn` JSONL."""
    lines = [json.loads(ln) for ln in prompts_jsonl.read_text().splitlines() if ln.strip()]
    out.write_text("".join(json.dumps({"text": ln["prompt"]}) + "\n" for ln in lines))
    return out


def profile_argv(
    aiperf_bin: Path,
    *,
    url: str,
    model: str,
    tokenizer_dir: Path,
    dataset: Path,
    concurrency: int,
    measured: int,
    warmup: int,
    output_len: int,
    artifact_dir: Path,
) -> list[str]:
    """One `aiperf profile` run with the bench's load: streamed /v1/completions, the same
    prompts, `max_tokens` and `ignore_eos`, a closed loop of `concurrency`."""
    extra = {"max_tokens": output_len, "ignore_eos": True, "temperature": 0.0}
    return [
        str(aiperf_bin), "profile",
        "--model", model, "--url", url, "--endpoint-type", "completions", "--streaming",
        "--tokenizer", str(tokenizer_dir),
        "--input-file", str(dataset), "--custom-dataset-type", "single_turn",
        # a closed loop of `concurrency`, paced: with --concurrency alone AIPerf 0.13 issues in
        # burst mode, whose timing manager spins on a full loop (~90% of a core, py-spy: the
        # request_rate loop) and halved llama.cpp's tokens/s on these 2 cores (19 vs 45 tok/s);
        # a 500/s rate cap leaves the loop closed (a freed slot waits <= 2 ms) and idle between
        "--concurrency", str(concurrency), "--request-rate", str(PACE_PER_S),
        "--request-count", str(measured),
        "--warmup-request-count", str(warmup),
        "--extra-inputs", json.dumps(extra), "--use-legacy-max-tokens",
        "--random-seed", "0", "--output-artifact-dir", str(artifact_dir),
        "--ui-type", "none", "--no-server-metrics", "--no-gpu-telemetry",
    ]  # fmt: skip


def figures(export: Mapping[str, Any]) -> dict[str, float]:
    """Our figure names from AIPerf's export (`{tag: {"avg": .., "p50": .., ...}}`); a metric it
    did not report is left out."""
    out: dict[str, float] = {}
    for name, tag, stat in FIGURES:
        metric = export.get(tag)
        value = metric.get(stat) if isinstance(metric, Mapping) else None
        if value is not None:
            out[name] = round(float(value), 3)
    return out


def run(argv: Sequence[str], artifact_dir: Path, log_path: Path) -> dict[str, float]:
    """Run AIPerf (its own venv: no PYTHONPATH, cwd its artifact dir) and read its figures;
    RuntimeError with the log's tail when it fails or writes no export."""
    artifact_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # not HF_HUB_OFFLINE: with it AIPerf 0.13 looks a local tokenizer directory up in the hub's
    # cache ("Repo id must be in the form 'repo_name'") instead of loading it
    with log_path.open("w") as log:
        done = subprocess.run(
            list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=artifact_dir, env=env,
            timeout=TIMEOUT_S, check=False,
        )  # fmt: skip
    export = artifact_dir / EXPORT_FILE  # the profiling phase (phases/*/ hold each phase's)
    if done.returncode != 0 or not export.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"aiperf exited {done.returncode} (no {export.name}):\n{tail}")
    return figures(json.loads(export.read_text()))
