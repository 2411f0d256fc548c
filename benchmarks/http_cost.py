"""What the HTTP front door costs per token, against the gRPC front door (issue 13; a benchmark).

One `hopscope serve --no-ray --placement colocated --http-port 0` (tiny model; the tokenizer is
its own process, serving both front doors on one event loop), driven in alternating rounds by
`hopscope bench --address` (gRPC Generate, server-streaming) and `hopscope bench --url` (HTTP,
streaming /v1/completions, SSE) with the same seeded closed-loop load. Per round: CPU time of the
tokenizer process (/proc) and of the bench client process (rusage) per output token (all of the
round's requests), and output tokens/s. The pipeline behind the front door is the same process
tree in both arms, so the difference is the front door's protocol stack.

    .venv/bin/python -m benchmarks.http_cost [--rounds 4] [--num-requests 128] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common
from deploy.spec import HTTP_RE

PREDICTION = (
    "per streamed token the gRPC front door serialises one small protobuf message through "
    "grpc.aio's C core; the HTTP front door builds one SSE frame (a string join + json.dumps "
    "of the delta) and writes it through uvicorn/httptools and Starlette's streaming response, "
    "all in Python. Expect HTTP to cost the tokenizer ~1.2-2x gRPC's CPU per token, and the "
    "bench client more too (httpx + one json.loads per frame vs protobuf parsing in C); "
    "tokens/s within ~10% since the worker, not the front door, bounds throughput on 2 cores."
)
ARMS = ("grpc", "http")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_load_args(parser, rounds=4, num_requests=128, warmup_requests=8, concurrency=16)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "http_cost.json")
    args = parser.parse_args()
    load = [*common.load_bench_args(args), "--output-len", str(args.output_len)]
    with tempfile.TemporaryDirectory(prefix="hopscope-http-cost-") as tmp:
        work_dir = Path(tmp)
        serve_args = ["--placement", "colocated", "--model", args.model, "--http-port", "0"]
        with common.serve(serve_args, work_dir) as server:
            url = _http_url(server)
            tokenizer_pid = _tokenizer_pid(server)
            rounds = []
            for round_index in range(args.rounds):
                for arm in common.rotated(list(ARMS), round_index):
                    target = ["--address", server.address] if arm == "grpc" else ["--url", url]
                    record = _run_arm(arm, round_index, target, load, tokenizer_pid, work_dir)
                    common.log(f"round {round_index} {arm}: {record['figures']}")
                    rounds.append(record)
    result = _result(args, rounds)
    common.write_json(args.out, result)
    print(json.dumps(result["medians"], indent=2))
    print(result["notes"])
    return 0


def _http_url(server: common.Server) -> str:
    for line in server.child.child.last_lines(50):
        if match := HTTP_RE.search(line):
            return match["url"]
    raise RuntimeError("serve printed no `hopscope http:` line")


def _tokenizer_pid(server: common.Server) -> int:
    services = server.child.describe()["services"]
    return int(next(s["pid"] for s in services if s["name"] == "tokenizer"))


def _process_cpu_s(pid: int) -> float:
    """utime + stime of one process (/proc/PID/stat fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_arm(
    arm: str, round_index: int, target: list[str], load: list[str], pid: int, work_dir: Path
) -> dict[str, Any]:
    out = work_dir / f"r{round_index}-{arm}.json"
    argv = common.hopscope_argv(
        "bench", *target, *load, "--out", str(out), "--no-live", "--no-plots", "--label", arm
    )
    tokenizer_before = _process_cpu_s(pid)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, cwd=common.REPO, capture_output=True, text=True, check=False)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tokenizer_cpu_s = _process_cpu_s(pid) - tokenizer_before
    if done.returncode != 0:
        raise RuntimeError(f"bench {arm} failed:\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
    client_cpu_s = (client_after.ru_utime + client_after.ru_stime) - (
        client_before.ru_utime + client_before.ru_stime
    )
    result = json.loads(out.read_text())
    records = [json.loads(ln) for ln in Path(result["requests_file"]).read_text().splitlines()]
    num_tokens = sum(int(r["n_out"]) for r in records)  # every request: the CPU window's
    figures = common.figures(result)
    figures["tokenizer_cpu_us_per_token"] = round(tokenizer_cpu_s / num_tokens * 1e6, 2)
    figures["client_cpu_us_per_token"] = round(client_cpu_s / num_tokens * 1e6, 2)
    return {
        "round": round_index,
        "variant": arm,
        "output_tokens": num_tokens,
        "tokenizer_cpu_s": round(tokenizer_cpu_s, 3),
        "client_cpu_s": round(client_cpu_s, 3),
        "figures": figures,
    }


def _result(args: argparse.Namespace, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    medians = common.medians(rounds, ARMS)
    ratios = {
        figure: common.paired_ratios(rounds, "http", "grpc", figure)
        for figure in ("tokenizer_cpu_us_per_token", "client_cpu_us_per_token", "output_tok_s")
    }
    median_ratios = {k: round(statistics.median(v), 3) for k, v in ratios.items() if v}
    return {
        "benchmark": "http_cost",
        "command": "python -m benchmarks.http_cost "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": common.machine_info(),
        "load": {k: v for k, v in vars(args).items() if k != "out"},
        "rounds": rounds,
        "medians": medians,
        "http_over_grpc_per_round": ratios,
        "http_over_grpc_median": median_ratios,
        "notes": _notes(medians, median_ratios),
    }


def _notes(medians: dict[str, dict[str, float]], ratios: dict[str, float]) -> str:
    grpc, http = medians["grpc"], medians["http"]
    return re.sub(
        r"\s+",
        " ",
        f"""Prediction: {PREDICTION} Result (medians of alternating rounds; indicative only:
        a 2-core machine shared with other work): tokenizer CPU per output token gRPC
        {grpc.get("tokenizer_cpu_us_per_token")} us vs HTTP {http.get("tokenizer_cpu_us_per_token")}
        us (HTTP/gRPC {ratios.get("tokenizer_cpu_us_per_token")} median of per-round ratios);
        bench client {grpc.get("client_cpu_us_per_token")} vs {http.get("client_cpu_us_per_token")}
        us/token ({ratios.get("client_cpu_us_per_token")}); output tokens/s
        {grpc.get("output_tok_s")} vs {http.get("output_tok_s")} ({ratios.get("output_tok_s")}).""",
    ).strip()


if __name__ == "__main__":
    raise SystemExit(main())
