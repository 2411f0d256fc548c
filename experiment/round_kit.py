"""What every kind of variant-round shares, whoever serves it (a hopscope deployment,
experiment/rounds.py, or an external server, experiment/target.py): the round's context and
error, its fresh directory, its OTLP collector and the tracing environment of its children, the
`hopscope bench` child and its results, cpu.json, round.json, the warm-up request's shape, and
the stop that a second Ctrl-C cannot cut short."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.lifecycle import Child, LaunchError, launch
from experiment import layout
from experiment.cpu import cpu_document
from experiment.plan import Plan, Variant

TARGET_RE = re.compile(r"^target ")  # `hopscope bench` prints it once the server answered
COLLECTOR_RE = re.compile(r"collecting OTLP/gRPC traces on \S+:(?P<port>\d+)")
BENCH_START_TIMEOUT_S = 120.0


class RoundError(RuntimeError):
    """A variant-round could not run; the message names it and points at its logs."""


@dataclass(slots=True)
class RoundContext:
    plan: Plan
    variant: Variant
    round_index: int
    position: int  # order within the round
    out: Path
    ray_address: str = ""  # "" = no Ray, or serve starts its own local Ray instance

    def error(self, exc: BaseException) -> RoundError:
        return RoundError(f"{self.variant.name} round {self.round_index + 1}: {exc}")


@contextmanager
def uninterruptible() -> Iterator[None]:
    """While stopping children, a Ctrl-C (or SIGTERM) must not abandon them half-stopped: it is
    held until they are stopped, then delivered (never dropped: a round that had just finished
    its workload once swallowed the user's Ctrl-C and the experiment ran on)."""
    held: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _frame: held.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        signal.raise_signal(held[0])


def fresh_round_dir(ctx: RoundContext) -> Path:
    """DIR/<variant>/round-<k>/ with an empty logs/ (an interrupted attempt starts over)."""
    round_dir = layout.round_dir(ctx.out, ctx.variant, ctx.round_index)
    if round_dir.exists():
        shutil.rmtree(round_dir)
    (round_dir / "logs").mkdir(parents=True)
    return round_dir


def launch_bench(
    ctx: RoundContext, round_dir: Path, server_argv: list[str], env: dict[str, str]
) -> Child:
    """`hopscope bench SERVER_ARGV` (`--address A` or `--url U`) with the plan's workload,
    writing the round's bench.json; the caller waits for TARGET_RE, then wait_bench."""
    argv = ["-m", "deploy.cli", "bench", *server_argv, *ctx.plan.bench_argv()]
    argv += ["--out", str(round_dir / "bench.json"), "--label", ctx.variant.name]
    argv += ["--no-live", "--no-plots"]
    return launch(argv, name="hopscope bench", log_path=round_dir / "logs" / "bench.log", env=env)


def wait_bench(bench: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while bench.is_alive:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workload did not finish within {timeout_s:.0f} s (timeout_s)")
        time.sleep(0.1)
    if bench.returncode != 0:
        lines = "\n  ".join(bench.last_lines(8))
        raise LaunchError(f"hopscope bench exited with {bench.returncode}:\n  {lines}")


def move_requests(round_dir: Path) -> None:
    """bench writes `bench.requests.jsonl` next to `bench.json`; the layout names it
    `requests.jsonl`."""
    bench_path = round_dir / "bench.json"
    bench = layout.read_json(bench_path)
    source = Path(bench["requests_file"])
    target = round_dir / "requests.jsonl"
    source.replace(target)
    bench["requests_file"] = str(target)
    layout.write_json(bench_path, bench)


def write_cpu(
    round_dir: Path,
    processes: dict[str, dict[str, float | int]],
    contention: dict[str, Any] | None = None,
) -> None:
    """cpu.json from each process's {"pid", "cpu_s"} and the round's OK output tokens, with the
    round's "contention" when it was measured (services/common/procfs.py)."""
    records = layout.read_requests(round_dir)
    output_tokens = sum(int(r.get("n_out") or 0) for r in records if r.get("status") == "OK")
    bench = layout.read_json(round_dir / "bench.json")
    document = cpu_document(processes, output_tokens, float(bench["summary"]["duration_s"]))
    if contention is not None:
        document["contention"] = contention
    layout.write_json(round_dir / "cpu.json", document)


def write_round_done(
    ctx: RoundContext, round_dir: Path, started: float, extra: dict[str, object]
) -> None:
    """round.json, written last: its `complete` is what --resume trusts."""
    document: dict[str, object] = {
        "variant": ctx.variant.name,
        "round": ctx.round_index + 1,
        "position": ctx.position,
        "started": started,
        "finished": time.time(),
    }
    layout.write_json(round_dir / "round.json", document | extra | {"complete": True})


def warm_up_shape(plan: Plan) -> tuple[str, int]:
    """(prompt, max_tokens) of a warm-up request: about the workload's input and output length."""
    words = max(1, int(plan.workload.get("input_len", 64)) // 2)
    return " ".join(["warm"] * words), int(plan.workload.get("output_len", 64))


# ---------------------------------------------------------------------------- the round's spans
def tracing_env(collector_port: int) -> dict[str, str]:
    """Children export spans to the experiment's collector, often and without dropping any (the
    SDK's 2048-span queue and 5 s delay lost a service's last spans in the benchmarks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HOPSCOPE_TRACE"))}
    return env | {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BSP_MAX_QUEUE_SIZE": "262144",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2048",
    }


def start_collector(round_dir: Path) -> Child:
    """`hopscope traces collect` for this round's spans, as a child: its gRPC threads stay out
    of this process (which forks the serve and bench children) and off its GIL."""
    argv = ["-m", "deploy.cli", "traces", "collect", "--listen", "127.0.0.1:0"]
    argv += ["--out", str(round_dir / "spans.jsonl")]
    return launch(
        argv, name="hopscope traces collect", log_path=round_dir / "logs" / "collector.log"
    )


def collector_port(collector: Child) -> int:
    return int(collector.wait_for_line(COLLECTOR_RE, BENCH_START_TIMEOUT_S).group("port"))


def count_spans(path: Path) -> int:
    from tracing.readers import TraceReadError, read_file

    try:
        return len(read_file(path))
    except TraceReadError:
        return 0
