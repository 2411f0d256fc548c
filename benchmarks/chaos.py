"""The chaos suite: faults, bad input and abuse against real `hopscope serve --no-ray` pipelines.

Per placement (colocated, colocated-tcp), on one pipeline (`--max-num-seqs 8 --max-queue-len
24`: 32 requests admitted at most):

- fuzz: N requests with random field values and random bytes -> 0 INTERNAL/UNKNOWN, no restart;
- cancels: N streams cancelled at random points -> 0 leaked KV blocks (Describe);
- overload: 5x what is admitted at once -> RESOURCE_EXHAUSTED at once (reject latency p99), only
  OK/RESOURCE_EXHAUSTED, served again right after;
- non-reader: a client that never reads its stream -> every other request completes;
- RSS of each service before and after those;
- RSS soak: more waves of fuzz + overload; fails when a service's RSS grows more than
  RSS_GROWTH_BOUND_MB from after the first wave to after the last (flat after the first = OK);
- kill worker / scheduler / tokenizer (SIGKILL) under 16 seeded requests -> failed/total, time to
  recover (kill -> first request served again), tokens equal to a no-kill run (worker and
  scheduler kills lose none; a killed front door fails its own streams).

Then idle: one pipeline per placement sits idle for --idle-s (full mode 600 s) and must serve.

On Ray (`--placement split` / `remote`, or both): the same rows against `hopscope serve
--placement P --ray-address ADDR` on a local 3-node Ray cluster that the run starts (the code of
`hopscope cluster up`, not recorded) and stops at the end; each kill is a SIGKILL of that
service's actor process (its pid from Describe), which Ray restarts on its node and address.
A Ray run's result goes under the `ray` key of the results file (the local rows are kept, and a
local run keeps the `ray` key); a run does not mix Ray and `--no-ray` placements.

`python -m benchmarks.chaos` (full, ~15 min) or `--short` (one placement, small counts, idle on
the same pipeline, about a minute: run by tests/integration/test_hardening.py). Prints a table; writes benchmarks/results/
chaos.json (`--out`). Exit 1 when any check fails. Not a timing benchmark: latencies are
indicative (shared 2-core machine); the checks are about correctness only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from deploy.cluster import ClusterRecord, start_cluster, stop_cluster
from deploy.lifecycle import ServeChild, start_serve, wait_serving
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common.channels import create_channel

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO / "benchmarks" / "results" / "chaos.json"
MAX_NUM_SEQS, MAX_QUEUE_LEN = 8, 24
ADMITTED = MAX_NUM_SEQS + MAX_QUEUE_LEN
SERVE_FLAGS = ["--max-num-seqs", str(MAX_NUM_SEQS), "--max-queue-len", str(MAX_QUEUE_LEN)]
GENERATE = "/hopscope.v1.Tokenizer/Generate"
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
KILL_REQUESTS, KILL_TOKENS = 16, 48
RECOVERY_TIMEOUT_S = 120.0
RAY_PLACEMENTS = ("split", "remote")  # across the nodes of a local Ray cluster
RAY_NODES = 3
# growth allowed from after the first soak wave (which fills the caches and the allocator's
# arenas) to after the last; the growth it catches was ~340 MB over the full mode's abuse
RSS_GROWTH_BOUND_MB = 64.0


@dataclass
class Row:
    scenario: str
    placement: str
    total: int
    failed: int
    ok: bool
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    token_ids: list[int]
    code: grpc.StatusCode
    latency_s: float


# ---------------------------------------------------------------------------- client helpers
async def generate(
    stub: pb_grpc.TokenizerStub, request: pb.GenerateRequest, timeout_s: float = 60.0
) -> Outcome:
    started = time.monotonic()
    ids: list[int] = []
    try:
        async for response in stub.Generate(request, timeout=timeout_s):
            ids.extend(response.token_ids)
    except grpc.aio.AioRpcError as exc:
        return Outcome(ids, exc.code(), time.monotonic() - started)
    return Outcome(ids, grpc.StatusCode.OK, time.monotonic() - started)


def seeded(i: int, max_tokens: int = KILL_TOKENS) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt=f"chaos request {i}: the quick brown fox",
        max_tokens=max_tokens,
        temperature=0.8,
        seed=7000 + i,
        ignore_eos=True,
    )


def pids(served: ServeChild) -> dict[str, int]:
    return {s["name"]: int(s.get("pid", 0)) for s in served.describe()["services"]}


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def kv_stats(served: ServeChild) -> dict[str, int]:
    stats = served.describe().get("scheduler_stats", {})
    return {
        k: int(stats.get(k, 0))
        for k in ("num_waiting", "num_running", "num_free_blocks", "num_blocks")
    }


def wait_idle(served: ServeChild, timeout_s: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = kv_stats(served)
        idle = stats["num_running"] == 0 and stats["num_waiting"] == 0
        if (
            idle and stats["num_free_blocks"] == stats["num_blocks"]
        ) or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


# ---------------------------------------------------------------------------- fuzz
def fuzz_request(rng: random.Random) -> pb.GenerateRequest:
    def text(n: int) -> str:
        alphabet = "ab \n\t\x00é🙂日本語" + "".join(chr(rng.randint(32, 0xD7FF)) for _ in range(8))
        return "".join(rng.choice(alphabet) for _ in range(n))

    def pick(valid: list[Any], invalid: list[Any]) -> Any:
        # mostly valid values, so requests also get past validation into the pipeline
        return rng.choice(valid if rng.random() < 0.85 else invalid)

    fields: dict[str, Any] = {}
    if rng.random() < 0.85:
        fields["prompt"] = text(pick([1, 5, 50, 300], [0, 3000, 200_000]))
    else:
        fields["prompt_token_ids"] = [
            pick([0, 1, 100, 4095], [-1, 4096, 2**31 - 1]) for _ in range(pick([1, 3], [3000]))
        ]
    fields["max_tokens"] = pick([1, 4, 8, 16], [-5, 0, 2048, 2**31 - 1])
    fields["temperature"] = pick([0.0, 0.7, 1.5, 1e30], [-1.0, math.nan, math.inf])
    fields["top_p"] = pick([0.0, 0.5, 1.0], [1.5, -0.1, math.nan])
    fields["top_k"] = pick([0, 1, 50, 2**31 - 1], [-3])
    if rng.random() < 0.5:
        fields["seed"] = rng.choice([0, 1, 2**63 - 1, -(2**63)])
    fields["ignore_eos"] = rng.random() < 0.5
    fields["stop"] = [text(pick([1, 3], [0, 300])) for _ in range(pick([0, 1, 2], [17]))]
    if rng.random() < 0.3:
        fields["request_id"] = pick(["dup", text(10), ""], ["x" * 200])
    return pb.GenerateRequest(**fields)


def fuzz_bytes(rng: random.Random) -> bytes:
    good = seeded(rng.randint(0, 99), 4).SerializeToString()
    kind = rng.randrange(3)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    if kind == 1:
        return good[: rng.randint(1, max(1, len(good) - 1))]  # truncated
    data = bytearray(good)
    for _ in range(3):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


async def scenario_fuzz(served: ServeChild, num: int, seed: int = 0) -> Row:
    rng = random.Random(seed)
    before = pids(served)
    codes: Counter[str] = Counter()
    async with create_channel(served.address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        raw = channel.unary_stream(GENERATE)  # no serializers: the bytes go as they are

        async def one_raw(data: bytes) -> grpc.StatusCode:
            try:
                async for _ in raw(data, timeout=30):
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        semaphore = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with semaphore:
                if rng.random() < 0.25:
                    code = await one_raw(fuzz_bytes(rng))
                else:
                    code = (await generate(stub, fuzz_request(rng), timeout_s=30)).code
                codes[code.name] += 1

        await asyncio.gather(*(one(i) for i in range(num)))
    bad = sum(codes[c.name] for c in BAD_CODES)
    restarted = sorted(name for name, pid in pids(served).items() if before.get(name) != pid)
    return Row(
        "fuzz",
        "",
        num,
        bad,
        bad == 0 and not restarted,
        {"codes": dict(codes), "internal_or_unknown": bad, "restarted": restarted},
    )


# ---------------------------------------------------------------------------- cancels
async def scenario_cancels(served: ServeChild, num: int, seed: int = 1) -> Row:
    rng = random.Random(seed)
    async with create_channel(served.address) as channel:
        stub = pb_grpc.TokenizerStub(channel)

        async def one(i: int) -> bool:
            await asyncio.sleep(rng.random() * 2.0)
            call = stub.Generate(seeded(i, rng.randint(1, 60)))
            cancel_after = rng.randint(0, 8)
            n = 0
            try:
                async for _ in call:
                    n += 1
                    if n >= cancel_after:
                        call.cancel()
                        return True
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                return True
            return False

        cancelled = sum(await asyncio.gather(*(one(i) for i in range(num))))
    stats = await asyncio.to_thread(wait_idle, served)
    leaked = stats["num_blocks"] - stats["num_free_blocks"]
    return Row(
        "cancels",
        "",
        num,
        leaked,
        leaked == 0 and stats["num_running"] == 0,
        {"cancelled": cancelled, "leaked_kv_blocks": leaked, **stats},
    )


# ---------------------------------------------------------------------------- overload
async def scenario_overload(served: ServeChild) -> Row:
    num = 5 * ADMITTED
    async with create_channel(served.address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        outcomes = await asyncio.gather(*(generate(stub, seeded(i, 24)) for i in range(num)))
        after = await generate(stub, seeded(999, 4))
    codes = Counter(o.code.name for o in outcomes)
    rejects = [o.latency_s * 1e3 for o in outcomes if o.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    allowed = {"OK", "RESOURCE_EXHAUSTED"}
    ok = bool(rejects) and set(codes) <= allowed and after.code == grpc.StatusCode.OK
    return Row(
        "overload 5x",
        "",
        num,
        num - codes["OK"] - codes["RESOURCE_EXHAUSTED"],
        ok,
        {
            "codes": dict(codes),
            "reject_latency_p50_ms": round(statistics.median(rejects), 1) if rejects else None,
            "reject_latency_p99_ms": round(p99(rejects) or 0.0, 1) if rejects else None,
            "served_after": after.code.name,
        },
    )


# ---------------------------------------------------------------------------- non-reader
async def scenario_non_reader(served: ServeChild) -> Row:
    async with create_channel(served.address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        baseline = await asyncio.gather(*(generate(stub, seeded(i, 32)) for i in range(8)))
        async with create_channel(served.address) as lazy_channel:
            lazy = pb_grpc.TokenizerStub(lazy_channel).Generate(
                pb.GenerateRequest(prompt="never read", max_tokens=1900, ignore_eos=True)
            )
            await asyncio.sleep(0.5)
            others = await asyncio.gather(*(generate(stub, seeded(i, 32)) for i in range(8)))
            lazy.cancel()
    stats = await asyncio.to_thread(wait_idle, served)
    failed = sum(o.code != grpc.StatusCode.OK for o in others)
    same = [o.token_ids for o in others] == [o.token_ids for o in baseline]
    return Row(
        "non-reader",
        "",
        len(others),
        failed,
        failed == 0 and same and stats["num_free_blocks"] == stats["num_blocks"],
        {
            "others_e2e_p50_ms": round(statistics.median(o.latency_s for o in others) * 1e3, 1),
            "baseline_e2e_p50_ms": round(statistics.median(o.latency_s for o in baseline) * 1e3, 1),
            "tokens_equal": same,
        },
    )


# ---------------------------------------------------------------------------- kills
async def recovery_probe(address: str, killed_at: float) -> float:
    """Seconds from the kill to the first request served after it."""
    async with create_channel(address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        while time.monotonic() - killed_at < RECOVERY_TIMEOUT_S:
            outcome = await generate(stub, pb.GenerateRequest(prompt="probe", max_tokens=1), 30)
            if outcome.code == grpc.StatusCode.OK:
                return time.monotonic() - killed_at
            await asyncio.sleep(0.1)
    return math.inf


async def scenario_kill(served: ServeChild, service: str, reference: list[list[int]]) -> Row:
    pid = pids(served)[service]
    received = [0]

    async def tracked(stub: pb_grpc.TokenizerStub, i: int) -> Outcome:
        started = time.monotonic()
        ids: list[int] = []
        try:
            async for response in stub.Generate(seeded(i), timeout=RECOVERY_TIMEOUT_S):
                ids.extend(response.token_ids)
                received[0] += len(response.token_ids)
        except grpc.aio.AioRpcError as exc:
            return Outcome(ids, exc.code(), time.monotonic() - started)
        return Outcome(ids, grpc.StatusCode.OK, time.monotonic() - started)

    async with create_channel(served.address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        calls = [asyncio.ensure_future(tracked(stub, i)) for i in range(KILL_REQUESTS)]
        while received[0] < KILL_REQUESTS * KILL_TOKENS // 4 and not all(c.done() for c in calls):
            await asyncio.sleep(0.01)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        probe = asyncio.ensure_future(recovery_probe(served.address, killed_at))
        outcomes = await asyncio.gather(*calls)
        recover_s = await probe
    await asyncio.to_thread(wait_serving, served.address, RECOVERY_TIMEOUT_S)
    failed = sum(o.code != grpc.StatusCode.OK for o in outcomes)
    completed = [(o.token_ids, ref) for o, ref in zip(outcomes, reference) if o.code.name == "OK"]
    equal = all(ids == ref for ids, ref in completed)
    must_lose_none = service in ("worker", "scheduler")
    return Row(
        f"kill {service}",
        "",
        KILL_REQUESTS,
        failed,
        equal and math.isfinite(recover_s) and (failed == 0 or not must_lose_none),
        {
            "recover_s": round(recover_s, 2),
            "tokens_equal_no_kill": equal,
            "completed_compared": len(completed),
            "codes": dict(Counter(o.code.name for o in outcomes)),
            "new_pid": pids(served).get(service) != pid,
        },
    )


async def no_kill_reference(served: ServeChild) -> list[list[int]]:
    async with create_channel(served.address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        outcomes = await asyncio.gather(*(generate(stub, seeded(i)) for i in range(KILL_REQUESTS)))
    assert all(o.code == grpc.StatusCode.OK for o in outcomes), "the no-kill run failed"
    return [o.token_ids for o in outcomes]


# ---------------------------------------------------------------------------- runs
def rss_of(served: ServeChild) -> dict[str, float | None]:
    return {name: rss_mb(pid) for name, pid in pids(served).items()}


def serve_args(placement: str, ray_address: str) -> list[str]:
    """`hopscope serve` of one placement: local processes, or Ray actors on the cluster."""
    if placement in RAY_PLACEMENTS:
        return ["--placement", placement, "--ray-address", ray_address]
    return ["--no-ray", "--placement", placement]


def run_placement(
    placement: str, args: argparse.Namespace, log_dir: Path, ray_address: str = ""
) -> list[Row]:
    served = start_serve(
        [*serve_args(placement, ray_address), *SERVE_FLAGS],
        log_path=log_dir / f"serve-{placement}.log",
    )
    rows: list[Row] = []

    def add(row: Row) -> None:
        row.placement = placement
        rows.append(row)
        print(f"  {placement:14s} {row.scenario:12s} {'ok' if row.ok else 'FAILED'} {row.figures}")

    try:
        reference = asyncio.run(no_kill_reference(served))
        rss_before = rss_of(served)
        add(asyncio.run(scenario_fuzz(served, args.fuzz)))
        add(asyncio.run(scenario_cancels(served, args.cancels)))
        add(asyncio.run(scenario_overload(served)))
        add(asyncio.run(scenario_non_reader(served)))
        rss_after = rss_of(served)
        rows.append(
            Row("rss", placement, 0, 0, True, {"before_mb": rss_before, "after_mb": rss_after})
        )
        if args.soak_waves:
            add(rss_soak(served, args.soak_waves, args.fuzz))
        for service in args.kill:
            add(asyncio.run(scenario_kill(served, service, reference)))
        if args.short:  # the idle check on this pipeline (full mode: fresh ones, side by side)
            time.sleep(args.idle_s)
            rows.append(idle_row(placement, served, args.idle_s))
    finally:
        served.stop()
    return rows


def rss_soak(served: ServeChild, waves: int, num_fuzz: int) -> Row:
    """`waves` waves of fuzz (`num_fuzz` requests, a new seed each) + 5x overload, RSS of every
    service after each; fails when one grows more than RSS_GROWTH_BOUND_MB after the first."""
    before = pids(served)
    after_wave: list[dict[str, float | None]] = []
    bad = 0
    for wave in range(waves):
        fuzz = asyncio.run(scenario_fuzz(served, num_fuzz, seed=100 + wave))
        overload = asyncio.run(scenario_overload(served))
        bad += fuzz.failed + overload.failed
        wait_idle(served)
        after_wave.append(rss_of(served))
    restarted = sorted(name for name, pid in pids(served).items() if before.get(name) != pid)
    growth = {
        name: round((after_wave[-1].get(name) or 0.0) - (mb or 0.0), 1)
        for name, mb in after_wave[0].items()
    }
    flat = all(g <= RSS_GROWTH_BOUND_MB for g in growth.values())
    return Row(
        "rss soak",
        "",
        waves,
        bad,
        flat and bad == 0 and not restarted,
        {
            "waves": waves,
            "fuzz_per_wave": num_fuzz,
            "rss_mb_after_each_wave": after_wave,
            "growth_after_first_wave_mb": growth,
            "bound_mb": RSS_GROWTH_BOUND_MB,
            "restarted": restarted,
        },
    )


async def idle_traffic(address: str) -> list[Outcome]:
    async with create_channel(address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        return await asyncio.gather(*(generate(stub, seeded(i, 8)) for i in range(8)))


def idle_row(placement: str, served: ServeChild, idle_s: float) -> Row:
    """Traffic after `idle_s` without any (the keepalive / GOAWAY defect showed after 2-6 min)."""
    outcomes = asyncio.run(idle_traffic(served.address))
    failed = sum(o.code != grpc.StatusCode.OK for o in outcomes)
    codes = dict(Counter(o.code.name for o in outcomes))
    print(f"  {placement:14s} idle {idle_s:.0f}s: {failed} of {len(outcomes)} failed")
    return Row(
        f"idle {idle_s:.0f}s", placement, len(outcomes), failed, failed == 0, {"codes": codes}
    )


def run_idle(
    placements: list[str], idle_s: float, log_dir: Path, ray_address: str = ""
) -> list[Row]:
    """Fresh pipelines, one per placement, idle side by side for `idle_s`, then traffic."""
    servers: list[tuple[str, ServeChild]] = []
    try:
        for placement in placements:
            log_path = log_dir / f"serve-idle-{placement}.log"
            args = serve_args(placement, ray_address)
            servers.append((placement, start_serve(args, log_path=log_path)))
        time.sleep(idle_s)
        return [idle_row(placement, served, idle_s) for placement, served in servers]
    finally:
        for _, served in servers:
            served.stop()


def print_table(rows: list[Row]) -> None:
    table = Table(title="hopscope chaos")
    for column in ("placement", "scenario", "failed / total", "ok", "figures"):
        table.add_column(column)
    for row in rows:
        figures = ", ".join(f"{k}={v}" for k, v in row.figures.items())
        total = f"{row.failed} / {row.total}" if row.total else ""
        table.add_row(
            row.placement, row.scenario, total, "ok" if row.ok else "[red]FAILED", figures
        )
    Console(width=200).print(table)


def merge_results(result: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """The results file: the latest local run at the top level and the latest Ray run under
    `ray`; a run replaces its own kind and keeps the other's."""
    if result["on_ray"]:
        local = {k: v for k, v in previous.items() if k != "ray"}
        return {**(local or {"benchmark": "chaos"}), "ray": result}
    return {**result, **({"ray": previous["ray"]} if "ray" in previous else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--short", action="store_true", help="one placement, small counts (< 60 s)")
    parser.add_argument(
        "--placements",
        nargs="+",
        default=None,
        help="colocated, colocated-tcp (--no-ray) or "
        f"{' / '.join(RAY_PLACEMENTS)} (Ray: a local {RAY_NODES}-node cluster)",
    )
    parser.add_argument(
        "--placement",
        action="append",
        dest="placement",
        default=None,
        help="one placement "
        "(repeatable), as in --placements: `--placement split` runs the rows on Ray",
    )
    parser.add_argument("--fuzz", type=int, default=None, help="fuzzed requests (full 2000)")
    parser.add_argument("--cancels", type=int, default=None, help="cancelled streams (full 500)")
    parser.add_argument("--idle-s", type=float, default=None, help="idle time (full 600 s)")
    parser.add_argument(
        "--soak-waves",
        type=int,
        default=None,
        help="RSS soak: waves of fuzz + overload (full 5, short 3; 0: none)",
    )
    parser.add_argument("--kill", nargs="*", default=None, help="services to SIGKILL under load")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    short = args.short
    args.placements = [*(args.placements or []), *(args.placement or [])] or (
        ["colocated"] if short else ["colocated", "colocated-tcp"]
    )
    del args.placement
    on_ray = [p in RAY_PLACEMENTS for p in args.placements]
    if any(on_ray) and not all(on_ray):
        parser.error("run Ray placements (split, remote) apart from --no-ray ones")
    is_ray = all(on_ray)
    args.fuzz = args.fuzz if args.fuzz is not None else (60 if short else 2000)
    args.cancels = args.cancels if args.cancels is not None else (40 if short else 500)
    args.soak_waves = args.soak_waves if args.soak_waves is not None else (3 if short else 5)
    args.idle_s = args.idle_s if args.idle_s is not None else (2.0 if short else 600.0)
    if args.kill is None:
        args.kill = ["scheduler"] if short else ["worker", "scheduler", "tokenizer"]
    started = time.monotonic()
    rows: list[Row] = []
    cluster: ClusterRecord | None = None
    with tempfile.TemporaryDirectory(prefix="hopscope-chaos-") as tmp:
        log_dir = Path(tmp)
        try:
            if is_ray:
                cluster = start_cluster(RAY_NODES, is_recorded=False)
                print(f"local Ray cluster: {RAY_NODES} nodes at {cluster.address}")
            address = cluster.address if cluster is not None else ""
            for placement in args.placements:
                rows += run_placement(placement, args, log_dir, address)
            if not short:
                rows += run_idle(args.placements, args.idle_s, log_dir, address)
        except Exception:
            for log in sorted(log_dir.glob("*.log")):
                print(
                    f"--- {log.name}\n"
                    + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                )
            raise
        finally:
            if cluster is not None:
                stop_cluster(cluster)
    print_table(rows)
    result = {
        "benchmark": "chaos",
        "mode": "short" if short else "full",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "serve_flags": SERVE_FLAGS,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
        },
        "on_ray": is_ray,
        "rows": [asdict(r) for r in rows],
        "passed": all(r.ok for r in rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    merged = merge_results(result, json.loads(args.out.read_text()) if args.out.exists() else {})
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {args.out} ({result['duration_s']} s): {'PASS' if result['passed'] else 'FAIL'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
