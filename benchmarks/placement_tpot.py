"""TPOT per placement under identical load, on a local 3-node Ray cluster (issue 4).

For each link configuration (unshaped, then `--delay-ms 0.5` one-way between nodes through the
relay) the script starts its own cluster with `hopscope cluster up --nodes 3 --json`, records
`hopscope cluster status --json` (the link mechanism in force), and for every placement (inproc,
colocated, colocated-tcp, split, remote) runs `hopscope serve --placement P --ray-address ADDR
--port 0`, drives it with the same seeded closed-loop load (`hopscope bench --seed 0`), records
TPOT p50/p90/p99, TTFT p50/p99, ITL p50, output tokens/s and Describe's services (node ids) and
edges (transport, link), and drains it (SIGTERM to its process group) before the next one starts.
Placements alternate in rounds (order rotated each round); medians and per-round ratios vs
inproc. After the measured rounds, one traced run per placement (OTLP to a receiver in this
process) gives `hopscope traces summarize --json`'s per-token scheduler->worker network time: the
hop cost apart from compute. The cluster is always torn down (`hopscope cluster down`).

    .venv/bin/python -m benchmarks.placement_tpot [--rounds 2] [--num-requests 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from benchmarks import common
from loadgen.frontdoor import check_reachable
from tracing.collector import OtlpCollector

PLACEMENTS = ("inproc", "colocated", "colocated-tcp", "split", "remote")
# figures copied out of each bench summary (path into summary JSON)
FIGURES = {
    "tpot_p50_ms": ("tpot_ms", "p50"),
    "tpot_p90_ms": ("tpot_ms", "p90"),
    "tpot_p99_ms": ("tpot_ms", "p99"),
    "ttft_p50_ms": ("ttft_ms", "p50"),
    "ttft_p99_ms": ("ttft_ms", "p99"),
    "itl_p50_ms": ("itl_ms", "p50"),
    "output_tok_s": ("output_token_throughput",),
    "completed": ("completed",),
    "failed": ("failed",),
    "incomplete": ("incomplete",),
    "duration_s": ("duration_s",),
}
RATIO_FIGURES = ("tpot_p50_ms", "tpot_p99_ms", "ttft_p50_ms", "itl_p50_ms", "output_tok_s")
PREDICTION = (
    "Written before running. Tiny model on 2 shared cores, closed loop of 8, 64/64 tokens: a "
    "decode step of 8 sequences is a few ms of torch, and the scheduler<->worker hop is one "
    "bidi-stream message each way per step (~150-400 us on this box, UDS ~ TCP). Expect TPOT p50 "
    "in the 8-20 ms range; colocated and colocated-tcp within +-15% of inproc (the hop is small "
    "vs compute and the 3 processes spread over 2 cores; noise on the shared box is +-30%), "
    "split and remote a few % above colocated-tcp unshaped (cross-IP loopback TCP costs the same "
    "as same-IP). With --delay-ms 0.5 each cross-node message pays 0.5 ms one way plus the "
    "relay's own Python hop, so split and remote should gain ~1-1.5 ms per step on the "
    "scheduler->worker edge (~+1-1.5 ms TPOT, i.e. +5-15%), remote a little more than split "
    "(its tokenizer->scheduler edge is also delayed but carries one batched message per step, "
    "overlapped with the next step), while inproc/colocated/colocated-tcp do not move. The "
    "traced network.scheduler_worker per-token time should be ~0.2-0.6 ms unshaped for every "
    "out-of-process placement and ~1.2-2 ms for split/remote with the delay."
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_load_args(parser, rounds=2, num_requests=64, warmup_requests=8, concurrency=8)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--placements", default=",".join(PLACEMENTS))
    parser.add_argument("--delays-ms", default="0,0.5", help="one cluster per one-way delay")
    parser.add_argument(
        "--traced-runs", type=int, default=1, help="traced runs per placement per link (0 = none)"
    )
    parser.add_argument("--traced-num-requests", type=int, default=32)
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "placement_tpot.json")
    parser.add_argument("--notes", default="", help="what was found, stored in notes.result")
    return parser.parse_args()


def bench_args(args: argparse.Namespace, label: str) -> list[str]:
    return [
        *common.load_bench_args(args),
        "--output-len", str(args.output_len),
        "--label", label,
    ]  # fmt: skip


# ------------------------------------------------------------------------------ cluster
def hopscope(*argv: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        common.hopscope_argv(*argv),
        cwd=common.REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
        env=common._child_env(None),
    )


@contextmanager
def cluster(delay_ms: float) -> Iterator[dict[str, Any]]:
    """`hopscope cluster up --nodes 3 [--delay-ms D] --json`; always `cluster down` after."""
    argv = ["cluster", "up", "--nodes", "3", "--json"]
    if delay_ms > 0:
        argv += ["--link-delay-ms", f"{delay_ms:g}"]
    started = time.monotonic()
    done = hopscope(*argv)
    if done.returncode != 0:
        raise RuntimeError(f"cluster up failed ({done.returncode}): {done.stderr[-2000:]}")
    address = json.loads(done.stdout.strip().splitlines()[-1])["address"]
    info: dict[str, Any] = {"address": address, "up_s": round(time.monotonic() - started, 1)}
    try:
        status = hopscope("cluster", "status", "--address", address, "--json", timeout_s=60)
        info["status"] = json.loads(status.stdout)[0] if status.returncode == 0 else status.stderr
        common.log(f"cluster {address} up in {info['up_s']} s; link {info['status'].get('link')}")
        yield info
    finally:
        down = hopscope("cluster", "down", "--address", address, timeout_s=120)
        common.log(f"cluster {address} down (rc {down.returncode}) {down.stderr.strip()[-300:]}")


# ------------------------------------------------------------------------------- serving
def serve(
    placement: str, ray_address: str, model: str, log_dir: Path, env: Mapping[str, str] | None
) -> AbstractContextManager[common.Server]:
    """`hopscope serve --placement P --ray-address A --port 0`, through the lifecycle kit."""
    args = ["--placement", placement, "--ray-address", ray_address, "--model", model]
    return common.serving(args, log_dir, env)


def describe(address: str) -> dict[str, Any]:
    response = asyncio.run(check_reachable(address, timeout_s=10.0))
    if response is None:
        return {}
    data = MessageToDict(response, preserving_proto_field_name=True)
    return {
        "placement": data.get("placement"),
        "ray": data.get("ray", False),
        "services": [
            {k: s.get(k) for k in ("name", "node_id", "host", "pid", "address")}
            for s in data.get("services", [])
        ],
        "edges": data.get("edges", []),
    }


def figures(result: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, path in FIGURES.items():
        value: Any = result["summary"]
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is not None:
            out[name] = round(float(value), 3)
    return out


def run_one(
    placement: str,
    ray_address: str,
    args: argparse.Namespace,
    work_dir: Path,
    tag: str,
    env: Mapping[str, str] | None = None,
    settle_s: float = 0.0,
) -> dict[str, Any]:
    """One fresh serve, one bench; a failure is retried once, then recorded without figures."""
    errors = []
    for _ in range(2):
        out = work_dir / f"{tag}-{placement}-{time.monotonic_ns()}.json"
        try:
            with serve(placement, ray_address, args.model, work_dir, env) as server:
                started = time.monotonic()
                described = describe(server.address)
                try:
                    result = common.run_bench(server.address, bench_args(args, placement), out, env)
                except RuntimeError as exc:
                    tail = server.log_path.read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"{exc}\nserver log tail:\n{tail}") from exc
                wall_s = time.monotonic() - started
                time.sleep(settle_s)  # traced: let every actor export before the drain
        except (RuntimeError, OSError) as exc:
            common.log(f"{tag} {placement} failed: {str(exc)[-800:]}")
            errors.append(str(exc)[-3000:])
            continue
        record = {
            "variant": placement,
            "bench_wall_s": round(wall_s, 2),
            "figures": figures(result),
            "describe": described,
            "loadgen_cpu_s": round(result["loadgen_cpu_s"], 2),
        }
        if errors:
            record["failed_attempts"] = errors
        common.log(f"{tag} {placement}: {record['figures']}")
        return record
    return {"variant": placement, "failed_attempts": errors}


# ------------------------------------------------------------------------------- tracing
def tracing_env(port: int) -> dict[str, str]:
    # Export often and never drop: with the SDK defaults (5 s delay, 2048-span queue) a Ray
    # actor's last spans were sometimes missing (a whole service's, in a smoke run), so the
    # summary had no Step spans for that run.
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BSP_MAX_QUEUE_SIZE": "262144",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2048",
    }


def spans_per_service(trace_path: Path) -> dict[str, int]:
    """How many spans each service exported (a missing service explains a bad summary)."""
    counts: dict[str, int] = {}
    if not trace_path.exists():
        return counts
    for line in trace_path.open():
        for resource_spans in json.loads(line).get("resourceSpans", []):
            attributes = resource_spans.get("resource", {}).get("attributes", [])
            name = next(
                (a["value"].get("stringValue") for a in attributes if a["key"] == "service.name"),
                "?",
            )
            num = sum(len(s.get("spans", [])) for s in resource_spans.get("scopeSpans", []))
            counts[name] = counts.get(name, 0) + num
    return counts


def run_traced(
    placement: str, ray_address: str, args: argparse.Namespace, work_dir: Path, tag: str
) -> dict[str, Any]:
    trace_path = work_dir / f"traces-{tag}-{placement}.jsonl"
    collector = OtlpCollector(trace_path, listen="127.0.0.1:0").start()
    try:
        traced_args = argparse.Namespace(**{**vars(args), "num_requests": args.traced_num_requests})
        record = run_one(
            placement, ray_address, traced_args, work_dir, tag, tracing_env(collector.port), 2.0
        )
        time.sleep(1.0)  # actors export on drain; give the last batch a moment to land
    finally:
        collector.stop(grace_s=5.0)
    record["spans_per_service"] = spans_per_service(trace_path)
    done = hopscope("traces", "summarize", "--input", str(trace_path), "--json", timeout_s=180)
    if done.returncode != 0:
        record["trace_summary_error"] = done.stderr[-1500:]
        return record
    summary = json.loads(done.stdout)
    record["trace"] = hop_figures(summary)
    common.log(f"{tag} {placement} traced: {record['trace']}")
    return record


def hop_figures(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Per-token network time of each hop (the tpot decomposition) and its e2e share."""
    tpot = summary.get("tpot", {})
    per_token = tpot.get("components", {})
    components = summary.get("components", {})
    hops = {}
    for name in ("network.client_tokenizer", "network.tokenizer_scheduler",
                 "network.scheduler_worker"):  # fmt: skip
        hops[name] = {
            "per_token_mean_ms": _r(per_token.get(name, {}).get("mean_ms")),
            "per_token_p50_ms": _r(per_token.get(name, {}).get("p50_ms")),
            "share_of_tpot": _r(per_token.get(name, {}).get("share")),
            "share_of_e2e": _r(components.get(name, {}).get("share")),
        }
    return {
        "requests": summary.get("requests"),
        "tpot_traced_p50_ms": _r(tpot.get("p50_ms")),
        "hops": hops,
        "tpot_components": {
            name: {"mean_ms": _r(c.get("mean_ms")), "share": _r(c.get("share"))}
            for name, c in per_token.items()
        },
        "other_share_of_e2e": _r(summary.get("checks", {}).get("other_share")),
        "warnings": summary.get("checks", {}).get("warnings", []),
    }


def _r(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, int | float) else value


# ------------------------------------------------------------------------------ analysis
def medians(runs: Sequence[Mapping[str, Any]], placements: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for placement in placements:
        got = [r["figures"] for r in runs if r["variant"] == placement and "figures" in r]
        names = sorted({n for f in got for n in f})
        out[placement] = {
            n: round(statistics.median(f[n] for f in got if n in f), 3) for n in names
        }
    return out


def ratios_vs_inproc(
    runs: Sequence[Mapping[str, Any]], placements: Sequence[str]
) -> dict[str, Any]:
    """Per-round ratio placement/inproc for each figure (same round = same machine load)."""
    out: dict[str, Any] = {}
    for placement in placements:
        if placement == "inproc":
            continue
        per_figure: dict[str, Any] = {}
        for figure in RATIO_FIGURES:
            values = []
            for index in sorted({r["round"] for r in runs}):
                by = {r["variant"]: r["figures"] for r in runs
                      if r["round"] == index and "figures" in r}  # fmt: skip
                if placement in by and "inproc" in by and by["inproc"].get(figure):
                    values.append(round(by[placement][figure] / by["inproc"][figure], 4))
            per_figure[figure] = {
                "per_round": values,
                "median": round(statistics.median(values), 4) if values else None,
            }
        out[f"{placement}/inproc"] = per_figure
    return out


def run_link(
    delay_ms: float, placements: Sequence[str], args: argparse.Namespace, work_dir: Path
) -> dict[str, Any]:
    tag = f"d{delay_ms:g}"
    with cluster(delay_ms) as info:
        runs: list[dict[str, Any]] = []
        for round_index in range(args.rounds):
            for placement in common.rotated(placements, round_index):
                record = run_one(
                    placement, info["address"], args, work_dir, f"{tag}-r{round_index}"
                )
                runs.append({"round": round_index, **record})
        traced = [
            {"round": k, **run_traced(p, info["address"], args, work_dir, f"{tag}-t{k}")}
            for k in range(args.traced_runs)
            for p in common.rotated(placements, k)
        ]
    link = info.get("status", {}).get("link", {}) if isinstance(info.get("status"), dict) else {}
    return {
        "delay_ms_one_way": delay_ms,
        "cluster": info,
        "link_mechanism": link.get("mechanism") or "none (unshaped)",
        "rounds": runs,
        "medians": medians(runs, placements),
        "ratios_vs_inproc": ratios_vs_inproc(runs, placements),
        "traced_runs": traced,
        "scheduler_worker_per_token_ms": {
            r["variant"]: r["trace"]["hops"]["network.scheduler_worker"]["per_token_mean_ms"]
            for r in traced
            if "trace" in r
        },
    }


def main() -> int:
    args = parse_args()
    placements = args.placements.split(",")
    delays = [float(d) for d in args.delays_ms.split(",")]
    machine = common.machine_info()
    started = time.monotonic()
    links = []
    with tempfile.TemporaryDirectory(prefix="placement-tpot-") as tmp:
        for delay_ms in delays:
            links.append(run_link(delay_ms, placements, args, Path(tmp)))
    machine["load_avg_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    payload = {
        "benchmark": "TPOT per placement under identical load, 3-node local Ray cluster",
        "issue": 4,
        "command": "python -m benchmarks.placement_tpot "
        f"--rounds {args.rounds} --num-requests {args.num_requests} --delays-ms {args.delays_ms}",
        "config": {
            "model": args.model,
            "placements": placements,
            "rounds": args.rounds,
            "load": "closed loop, hopscope bench --seed 0 (identical seeded workload per run)",
            "concurrency": args.concurrency,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "num_requests_measured_per_run": args.num_requests,
            "warmup_requests_per_run": args.warmup_requests,
            "servers": "fresh `hopscope serve --placement P --ray-address ADDR --port 0` per run, "
            "one alive at a time, drained by SIGTERM to its process group",
            "order": "rotated every round",
            "tracing": f"off in measured rounds; {args.traced_runs} traced run(s) per placement "
            f"per link after them ({args.traced_num_requests} measured requests, same load "
            "otherwise; OTLP gRPC to tracing.collector.OtlpCollector in this process, every "
            "request sampled, batch processor every 200 ms)",
            "cluster": "hopscope cluster up --nodes 3 --json, one per link configuration",
        },
        "machine": machine,
        "total_wall_s": round(time.monotonic() - started, 1),
        "links": links,
        "notes": {"prediction": PREDICTION, "result": args.notes},
    }
    common.write_json(args.out, payload)
    common.log(f"wrote {args.out} in {payload['total_wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
