"""The GPU step loop's switches, measured (issue 14 part 5); benchmarks/gpu_check.sh runs it.

    python -m benchmarks.gpu_step [--model llama-1b] [--device cuda] [--dtype bfloat16]
        [--sections roofline,dtypes,compile] [--rounds 3] [--out FILE]

Sections (each written to the JSON as soon as it ends, so a time limit keeps the finished ones):

- `roofline`: decode steps at batch 1 and 32 with CUDA graphs off and on, against the memory
  roofline (weight bytes / the copy bandwidth of a large device-to-device copy), and batch 32 (and
  1) against transformers' greedy `generate` on the same weights (`vs_transformers`).
- `dtypes`: float32 / bfloat16 / float16, graphs off and on, batch 1 and 32.
- `compile`: `--compile` off and on, each with graphs off and on.

Variants alternate within each round (order rotated per round); figures are medians of per-step
wall times (`Engine.step`, which ends in the step's one device sync) and of the steps' device
times (CUDA events), with per-round ratios. Every variant decodes the same greedy batch, and the
JSON says whether its tokens equal the first variant's. On CPU (the dry run) the CUDA-only parts
are skipped and say so, and "graphs on" is the graphs' fixed-shape decode path without capture
(`captured: false`). Imports neither Ray nor OpenTelemetry (the GPU machine has neither).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from benchmarks.engine_bench import (
    GREEDY,
    StepTimer,
    build_reference,
    copy_bandwidth_bytes_per_s,
    hf_generate_s,
    prompts,
)
from services.common.types import SeqStep
from services.config import HopscopeConfig
from services.models import checkpoint
from services.models.config import ModelConfig
from services.worker.engine import Engine

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_step.json"
SECTIONS = ("roofline", "dtypes", "compile")
DTYPES = ("float32", "bfloat16", "float16")
PREDICTION = (
    "Prediction (written before any GPU run; llama-1b, bfloat16, H200): the roofline is ~2.47 GB "
    "of weights / ~4 TB/s of copy bandwidth = ~0.6 ms. Eager batch-1 steps are bound by ~40 "
    "kernel launches a layer and their Python (~6-10 ms, 10-15x the roofline). CUDA graphs "
    "remove the launches but not the kernels: ~650 small ones at ~2 us each on top of the weight "
    "reads, plus building inputs, the copy in, sampling and the sync outside the graph, so "
    "~1.3-1.8 ms (2-3x the roofline); with --compile as well (rotary, add + RMSNorm and SiLU x "
    "mul fused: ~15 kernels a layer) ~1.0-1.3 ms (1.6-2.2x). Batch 32: graphs 1.5-2x eager; "
    "transformers' generate (dynamic cache, eager, CPU-bound, ~20-30 ms a step) 3-4x slower "
    "than the eager engine and 10-15x than with graphs. float32 ~2x the bfloat16 step with "
    "graphs (twice the bytes), float16 = bfloat16. --compile 1.2-1.5x at batch 1 without "
    "graphs (fewer launches), 1.2-1.4x with graphs (fewer kernels)."
)


@dataclass
class Run:
    """One variant's decode of one batch: per-step wall and device ms, and its greedy tokens."""

    wall_ms: list[float]
    device_ms: list[float]
    tokens: list[list[int]]


Runner = Callable[[int], Run]  # batch size -> Run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    is_cuda = args.device.startswith("cuda")
    results: dict[str, Any] = {"setup": setup(args), "sections": {}, "skipped": {}, "errors": {}}
    use_cached_preset_weights()
    if not is_cuda:
        results["skipped"]["graph capture"] = (
            "CUDA graphs need CUDA: the graphs_on variants ran their fixed-shape decode path "
            "uncaptured"
        )
    for section in args.sections:
        try:
            SECTION_RUNNERS[section](args, results)
        except Exception:  # noqa: BLE001 - one section's failure must not lose the others
            results["errors"][section] = traceback.format_exc()[-3000:]
            print(f"section {section} failed:\n{results['errors'][section]}", flush=True)
        free_device_memory(is_cuda)
        results["notes"] = notes(results)
        write(args.out, results)
    print(f"wrote {args.out}\n{results['notes']}")
    return 1 if results["errors"] else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CUDA graphs, --compile and dtypes, measured")
    parser.add_argument("--model", default="llama-1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", help="of the roofline and compile sections")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        type=lambda s: [x for x in s.split(",") if x],
        help=f"comma-separated, of {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--batch-sizes", default="1,32", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--max-graph-batch", type=int, default=64, help="--cuda-graph-max-batch")
    parser.add_argument(
        "--memory-fraction",
        type=float,
        default=0.3,
        help="each engine's share of the GPU memory free when it starts (up to four engines live "
        "at once; each also leaves its activation and graph reserve, ~12 GB for llama-1b in "
        "bfloat16, ~24 GB in float32 with graphs, outside its KV cache)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def setup(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    is_cuda = args.device.startswith("cuda")
    return {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "batch_sizes": args.batch_sizes,
        "rounds": args.rounds,
        "prompt_len": args.prompt_len,
        "decode_steps": args.decode_steps,
        "max_graph_batch": args.max_graph_batch,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(args.device) if is_cuda else None,
        "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def use_cached_preset_weights() -> None:
    """Seed a preset's random weights once per process (float32, host) and convert per engine:
    llama-1b's 1.24 B normal draws take seconds, and every variant needs the same ones."""
    original = checkpoint.preset_weights

    @cache
    def host_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
        return original(config, seed, torch.float32, torch.device("cpu"))

    def preset_weights(
        config: ModelConfig, seed: int, dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        weights = host_weights(config, seed)
        return {name: t.to(device=device, dtype=dtype, copy=True) for name, t in weights.items()}

    checkpoint.preset_weights = preset_weights  # type: ignore[assignment]


# ---------------------------------------------------------------------------- engines and runs
def build_engine(
    args: argparse.Namespace, dtype: str, graphs: bool = False, compile: bool = False
) -> Engine:
    """On CPU, `graphs` runs the fixed-shape decode path uncaptured (CUDA graphs need CUDA)."""
    is_cuda = args.device.startswith("cuda")
    config = HopscopeConfig.of(
        model=args.model,
        device=args.device,
        dtype=dtype,
        cuda_graphs=graphs and is_cuda,
        cuda_graph_max_batch=args.max_graph_batch,
        compile=compile,
        kernels="torch",  # the op set graphs capture and --compile compiles, on CPU too
        gpu_memory_fraction=args.memory_fraction,
        kv_cache_mb=64,
    )
    return Engine(config, static_decode=graphs)


def engine_runner(engine: Engine, args: argparse.Namespace) -> Runner:
    def run(batch_size: int) -> Run:
        batch, block_size = prompts(batch_size, args.prompt_len), engine.info.block_size
        num_blocks = -(-(args.prompt_len + args.decode_steps + 1) // block_size)
        tables = [list(range(i * num_blocks, (i + 1) * num_blocks)) for i in range(batch_size)]
        out = engine.step([SeqStep(i, p, 0, tables[i], GREEDY) for i, p in enumerate(batch)])
        tokens = [[out.sampled[i]] for i in range(batch_size)]
        result = Run([], [], tokens)
        for length in range(args.prompt_len, args.prompt_len + args.decode_steps):
            steps = [
                SeqStep(i, [tokens[i][-1]], length, tables[i], GREEDY) for i in range(batch_size)
            ]
            start_s = time.perf_counter()
            out = engine.step(steps)
            result.wall_ms.append((time.perf_counter() - start_s) * 1e3)
            result.device_ms.append(out.device_ms)
            for i in range(batch_size):
                tokens[i].append(out.sampled[i])
        return result

    return run


def transformers_runner(engine: Engine, model: Any, args: argparse.Namespace) -> Runner:
    """Per-step wall times of greedy `generate`: the gaps between logits-processor calls."""

    def run(batch_size: int) -> Run:
        batch = prompts(batch_size, args.prompt_len)
        timer = StepTimer(engine)
        hf_generate_s(engine, model, batch, args.decode_steps + 1, timer)
        gaps = zip(timer.times_s, timer.times_s[1:], strict=False)
        return Run([(b[0] - a[0]) * 1e3 for a, b in gaps], [], [])

    return run


def compare(runners: dict[str, Runner], batch_sizes: list[int], rounds: int) -> dict[str, Any]:
    """Every variant at every batch size, alternating within each round (order rotated);
    medians pooled over rounds and per-round ratios of each variant to the first."""
    names = list(runners)
    warmup_s = {}
    for name in names:  # compiles, cuBLAS plans, the allocator: out of the timed rounds
        start_s = time.perf_counter()
        for batch_size in batch_sizes:
            runners[name](batch_size)
        warmup_s[name] = round(time.perf_counter() - start_s, 2)
    runs: dict[tuple[str, int], list[Run]] = {(n, b): [] for n in names for b in batch_sizes}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for batch_size in batch_sizes:
            for name in order:
                runs[(name, batch_size)].append(runners[name](batch_size))
    return {
        "warmup_s": warmup_s,
        "batches": {str(b): summarize(names, b, runs) for b in batch_sizes},
    }


def summarize(
    names: list[str], batch_size: int, runs: dict[tuple[str, int], list[Run]]
) -> dict[str, Any]:
    base = names[0]
    out: dict[str, Any] = {}
    for name in names:
        rs = runs[(name, batch_size)]
        wall = [ms for r in rs for ms in r.wall_ms]
        device = [ms for r in rs for ms in r.device_ms if ms > 0]
        step_ms = statistics.median(wall)
        entry: dict[str, Any] = {
            "step_ms_p50": round(step_ms, 3),
            "device_ms_p50": round(statistics.median(device), 3) if device else None,
            "tokens_per_s": round(batch_size / step_ms * 1e3, 1),
        }
        if name != base:
            base_rounds = [statistics.median(r.wall_ms) for r in runs[(base, batch_size)]]
            rounds = [statistics.median(r.wall_ms) for r in rs]
            entry[f"speedup_vs_{base}_per_round"] = [
                round(b / r, 2) for b, r in zip(base_rounds, rounds, strict=True)
            ]
            entry[f"speedup_vs_{base}"] = round(
                statistics.median(entry[f"speedup_vs_{base}_per_round"]), 2
            )
        if rs[-1].tokens and runs[(base, batch_size)][-1].tokens:
            entry[f"tokens_equal_{base}"] = rs[-1].tokens == runs[(base, batch_size)][-1].tokens
        out[name] = entry
    return out


# ---------------------------------------------------------------------------- sections
def section_roofline(args: argparse.Namespace, results: dict[str, Any]) -> None:
    is_cuda = args.device.startswith("cuda")
    eager = build_engine(args, args.dtype)
    graphs = build_engine(args, args.dtype, graphs=True)
    reference = build_reference(eager.source, eager.config)
    comparison = compare(
        {
            "graphs_off": engine_runner(eager, args),
            "graphs_on": engine_runner(graphs, args),
            "transformers": transformers_runner(eager, reference, args),
        },
        args.batch_sizes,
        args.rounds,
    )
    comparison["captured"] = bool(graphs.static_decode and graphs.static_decode.graphs)
    if graphs.static_decode is not None:
        comparison["num_graphs"] = len(graphs.static_decode.graphs)
        comparison["capture_s"] = round(graphs.static_decode.capture_s, 2)
    results["sections"]["roofline"] = comparison
    batches = comparison["batches"]
    results["sections"]["vs_transformers"] = {
        size: {
            f"engine_{v}_vs_transformers": round(
                batch["transformers"]["step_ms_p50"] / batch[f"graphs_{v}"]["step_ms_p50"], 2
            )
            for v in ("off", "on")
        }
        for size, batch in batches.items()
    }
    batch32 = results["sections"]["vs_transformers"].get("32")
    if batch32 is not None:
        batch32["target"] = "engine with CUDA graphs >= 10x transformers generate at batch 32"
        batch32["pass"] = batch32["engine_on_vs_transformers"] >= 10.0
    if not is_cuda:
        results["skipped"]["roofline.memory"] = "the memory roofline needs CUDA (device copy)"
        return
    results["sections"]["roofline"]["memory"] = memory_roofline(eager, batches.get("1"))


def memory_roofline(engine: Engine, batch1: dict[str, Any] | None) -> dict[str, Any]:
    element_bytes = torch.empty((), dtype=engine.dtype).element_size()
    weight_bytes = engine.source.config.num_params * element_bytes
    bandwidth = copy_bandwidth_bytes_per_s(engine.device)
    roofline_ms = weight_bytes / bandwidth * 1e3
    out: dict[str, Any] = {
        "weight_bytes": weight_bytes,
        "copy_bandwidth_gb_per_s": round(bandwidth / 1e9, 1),
        "roofline_ms": round(roofline_ms, 3),
        "target": "batch-1 step with CUDA graphs <= 2x the roofline",
    }
    if batch1 is None:
        return out
    for variant in ("graphs_off", "graphs_on"):
        out[f"{variant}_times_roofline"] = round(batch1[variant]["step_ms_p50"] / roofline_ms, 2)
        device_ms = batch1[variant]["device_ms_p50"]
        if device_ms:
            out[f"{variant}_device_times_roofline"] = round(device_ms / roofline_ms, 2)
    out["pass"] = out["graphs_on_times_roofline"] <= 2.0
    return out


def section_dtypes(args: argparse.Namespace, results: dict[str, Any]) -> None:
    out: dict[str, Any] = {}
    for dtype in DTYPES:
        if dtype == "float16" and not args.device.startswith("cuda"):
            results["skipped"]["dtypes.float16"] = "float16 needs CUDA"
            continue
        eager = build_engine(args, dtype)
        graphs = build_engine(args, dtype, graphs=True)
        runners = {
            "graphs_off": engine_runner(eager, args),
            "graphs_on": engine_runner(graphs, args),
        }
        out[dtype] = compare(runners, args.batch_sizes, args.rounds)
        del eager, graphs, runners
        free_device_memory(args.device.startswith("cuda"))
        results["sections"]["dtypes"] = out
        write(args.out, results)


def section_compile(args: argparse.Namespace, results: dict[str, Any]) -> None:
    engines = {
        "eager": build_engine(args, args.dtype),
        "compile": build_engine(args, args.dtype, compile=True),
        "graphs": build_engine(args, args.dtype, graphs=True),
        "compile_graphs": build_engine(args, args.dtype, graphs=True, compile=True),
    }
    runners = {name: engine_runner(engine, args) for name, engine in engines.items()}
    comparison = compare(runners, args.batch_sizes, args.rounds)
    for batch in comparison["batches"].values():  # compile's effect with graphs on
        batch["compile_graphs"]["speedup_vs_graphs"] = round(
            batch["graphs"]["step_ms_p50"] / batch["compile_graphs"]["step_ms_p50"], 2
        )
    comparison["note"] = "warmup_s of compile variants includes compiling (inductor)"
    results["sections"]["compile"] = comparison


SECTION_RUNNERS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], None]] = {
    "roofline": section_roofline,
    "dtypes": section_dtypes,
    "compile": section_compile,
}


# ---------------------------------------------------------------------------- output
def free_device_memory(is_cuda: bool) -> None:
    gc.collect()
    if is_cuda:
        torch.cuda.empty_cache()


def write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def notes(results: dict[str, Any]) -> str:
    lines = [PREDICTION, "Result:"]
    sections = results["sections"]
    roofline = sections.get("roofline")
    if roofline:
        for size, batch in roofline["batches"].items():
            lines.append(
                f"batch {size}: step p50 graphs off {batch['graphs_off']['step_ms_p50']} ms, on "
                f"{batch['graphs_on']['step_ms_p50']} ms ({batch['graphs_on']['speedup_vs_graphs_off']}x), "
                f"transformers {batch['transformers']['step_ms_p50']} ms;"
            )
        memory = roofline.get("memory")
        if memory and "graphs_on_times_roofline" in memory:
            lines.append(
                f"roofline {memory['roofline_ms']} ms ({memory['copy_bandwidth_gb_per_s']} GB/s): "
                f"batch 1 graphs off {memory['graphs_off_times_roofline']}x, on "
                f"{memory['graphs_on_times_roofline']}x;"
            )
    for dtype, comparison in sections.get("dtypes", {}).items():
        parts = [
            f"b{size} {b['graphs_off']['step_ms_p50']}/{b['graphs_on']['step_ms_p50']} ms"
            for size, b in comparison["batches"].items()
        ]
        lines.append(f"{dtype} (graphs off/on): {', '.join(parts)};")
    compiled = sections.get("compile")
    if compiled:
        for size, b in compiled["batches"].items():
            lines.append(
                f"compile b{size}: {b['compile']['speedup_vs_eager']}x eager without graphs, "
                f"{b['compile_graphs']['speedup_vs_graphs']}x with graphs;"
            )
    for name, reason in results["skipped"].items():
        lines.append(f"skipped {name}: {reason};")
    if results["errors"]:
        lines.append(f"failed sections: {', '.join(results['errors'])} (see errors).")
    return " ".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
