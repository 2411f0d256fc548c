"""Engine throughput vs transformers `generate`, on the same weights, in the same run.

    python -m benchmarks.engine_bench [--model tiny] [--device cpu] [--batch-sizes 1,8,32,128]

Decode tokens/s at each batch size (prompts of --prompt-len tokens, then --decode-steps steps)
and prefill tokens/s, for our engine and for transformers' static-batch greedy `generate` (eos
ignored via min_new_tokens). Where the engine runs its native CPU kernels, the same engine with
plain torch ops (`kernels=torch`, what it falls back to) is measured too, as an ablation;
`--compile-variant` adds the engine with `--compile` (torch.compile of the torch op set), and
`--cuda-graphs on` runs the main engine with decode steps replayed from CUDA graphs (CUDA only).
Variants alternate within each repeat; decode figures come from
median step times (for `generate`, the gaps between successive logits-processor calls), prefill
figures from median whole-call times. On CUDA it also
compares the batch-1 decode step with the memory roofline (weight bytes / measured copy bandwidth).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig, WorkerSettings
from services.models import ModelSource
from services.models.checkpoint import load_source_weights
from services.worker.config import torch_dtype
from services.worker.engine import Engine

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "engine_cpu.json"
GREEDY = SamplingParams()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(worker_config(args))
    ablation = None
    if engine.kernels != "torch" or engine.gemm != "torch":
        ablation = Engine(worker_config(args, kernels="torch"))
    compiled = Engine(worker_config(args, compile=True)) if args.compile_variant else None
    reference = build_reference(engine.source, engine.config)
    results: dict[str, Any] = {"setup": setup(args, engine), "decode": [], "prefill": {}}
    for batch_size in args.batch_sizes:
        results["decode"].append(
            bench_decode(engine, reference, batch_size, args, ablation, compiled)
        )
        print(json.dumps(results["decode"][-1]))
    results["prefill"] = bench_prefill(engine, reference, args)
    print(json.dumps(results["prefill"]))
    if engine.config.is_cuda:
        results["roofline"] = roofline(engine, results["decode"])
    results["notes"] = notes(results, engine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}\n{results['notes']}")
    return 0


def worker_config(args: argparse.Namespace, **overrides: Any) -> HopscopeConfig:
    fields: dict[str, Any] = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "cuda_graphs": args.cuda_graphs == "on",
    }
    if overrides:  # the variants: the main engine's CUDA graphs are not theirs
        fields |= {"cuda_graphs": False, **overrides}
    return HopscopeConfig.of(**fields)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="engine vs transformers generate throughput")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument(
        "--batch-sizes", default="1,8,32,128", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--prefill-batch", type=int, default=4, help="sequences per prefill step")
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for both variants (0: torch's default)",
    )
    parser.add_argument(
        "--cuda-graphs",
        choices=["on", "off"],
        default="off",
        help="the engine replays decode steps from CUDA graphs (CUDA only)",
    )
    parser.add_argument(
        "--compile-variant",
        action="store_true",
        help="also measure the engine with --compile (torch.compile of the torch op set)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def setup(args: argparse.Namespace, engine: Engine) -> dict[str, Any]:
    import transformers

    return {
        "model": engine.info.name,
        "device": engine.info.device,
        "dtype": engine.info.dtype,
        "num_params": engine.source.config.num_params,
        "prompt_len": args.prompt_len,
        "decode_steps": args.decode_steps,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "num_threads": torch.get_num_threads(),
        "kernels": engine.kernels,
        "gemm": engine.gemm,
        "cuda_graphs": engine.config.cuda_graphs,
        "compile_variant": args.compile_variant,
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(engine.device) if engine.config.is_cuda else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
        # *_cpu_ms_* and cpu_time_ratio: the calling thread's CPU time only (with 1 thread, a
        # contention-robust figure; with more, intra-op threads are not counted).
        "cpu_time_scope": "calling thread",
    }


def build_reference(source: ModelSource, config: WorkerSettings) -> Any:
    """A transformers model holding exactly the engine's weights."""
    import transformers

    if source.checkpoint_dir is not None:
        model: Any = transformers.AutoModelForCausalLM.from_pretrained(
            source.checkpoint_dir, dtype=torch_dtype(config)
        )
        return model.to(config.device).eval()
    c = source.config
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        rope |= {
            "rope_type": "llama3",
            "factor": c.rope_scaling.factor,
            "low_freq_factor": c.rope_scaling.low_freq_factor,
            "high_freq_factor": c.rope_scaling.high_freq_factor,
            "original_max_position_embeddings": c.rope_scaling.original_max_position_embeddings,
        }
    hf_config = transformers.LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=source.max_context,
        tie_word_embeddings=c.tie_word_embeddings,
        rope_parameters=rope,
        bos_token_id=c.bos_token_id,
        eos_token_id=list(c.eos_token_ids),
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(hf_config)  # no memory, no random init
    weights = load_source_weights(
        source, config.weights_seed, torch_dtype(config), torch.device(config.device)
    )
    model.load_state_dict(weights, strict=False, assign=True)
    if c.tie_word_embeddings:
        model.tie_weights()
    # Non-persistent buffers (rope frequencies) are not in the state dict: build them for real.
    model.model.rotary_emb = type(model.model.rotary_emb)(hf_config).to(config.device)
    assert not any(t.is_meta for t in model.state_dict().values()), "weights left on meta"
    return model.eval()


def timed(engine: Engine, fn: Callable[[], object]) -> float:
    if engine.config.is_cuda:
        torch.cuda.synchronize(engine.device)
    start_s = time.perf_counter()
    fn()
    if engine.config.is_cuda:
        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - start_s


def prompts(batch_size: int, length: int) -> list[list[int]]:
    return [
        [0] + [(97 * i + 13 * j) % 4000 + 2 for j in range(length - 1)] for i in range(batch_size)
    ]


StepTimes = list[tuple[float, float]]  # (wall seconds, this thread's CPU seconds) per step


def engine_decode_step_s(engine: Engine, batch: list[list[int]], num_steps: int) -> StepTimes:
    """Prefill (untimed), then `num_steps` decode steps; returns each step's times."""
    block_size = engine.info.block_size
    num_blocks = -(-(len(batch[0]) + num_steps + 1) // block_size)
    tables = [list(range(i * num_blocks, (i + 1) * num_blocks)) for i in range(len(batch))]
    out = engine.step([SeqStep(i, p, 0, tables[i], GREEDY) for i, p in enumerate(batch)])
    length, step_s = len(batch[0]), []
    for _ in range(num_steps):
        steps = [SeqStep(i, [out.sampled[i]], length, tables[i], GREEDY) for i in range(len(batch))]
        start_s, start_cpu_s = time.perf_counter(), time.thread_time()
        out = engine.step(steps)
        step_s.append((time.perf_counter() - start_s, time.thread_time() - start_cpu_s))
        length += 1
    return step_s


class StepTimer:
    """A logits processor that only records when `generate` reaches each decoding step."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.times_s: list[tuple[float, float]] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.engine.config.is_cuda:
            torch.cuda.synchronize(self.engine.device)
        self.times_s.append((time.perf_counter(), time.thread_time()))
        return scores


def hf_generate_s(
    engine: Engine, model: Any, batch: list[list[int]], num_new: int, timer: StepTimer | None = None
) -> float:
    import transformers

    ids = torch.tensor(batch, device=engine.device)
    processors = transformers.LogitsProcessorList([timer] if timer else [])
    with torch.inference_mode():
        return timed(
            engine,
            lambda: model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=num_new,
                min_new_tokens=num_new,
                pad_token_id=0,
                logits_processor=processors,
            ),
        )


def hf_decode_step_s(
    engine: Engine, model: Any, batch: list[list[int]], num_steps: int
) -> StepTimes:
    """Per-step times of `generate`: gaps between successive logits-processor calls."""
    timer = StepTimer(engine)
    hf_generate_s(engine, model, batch, num_steps + 1, timer)
    pairs = zip(timer.times_s, timer.times_s[1:], strict=False)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in pairs]


def bench_decode(
    engine: Engine,
    model: Any,
    batch_size: int,
    args: argparse.Namespace,
    ablation: Engine | None = None,
    compiled: Engine | None = None,
) -> dict[str, Any]:
    """Step times pooled over repeats; medians, so a neighbour's CPU burst does not decide."""
    batch, steps = prompts(batch_size, args.prompt_len), args.decode_steps
    hf_generate_s(engine, model, batch[:1], 2)  # warm-up all
    engine_decode_step_s(engine, batch[:1], 2)
    if ablation is not None:
        engine_decode_step_s(ablation, batch[:1], 2)
    if compiled is not None:  # every shape class: prefill, this batch's decodes
        engine_decode_step_s(compiled, batch, 2)
    ours: StepTimes = []
    theirs: StepTimes = []
    torch_ops: StepTimes = []
    compile_times: StepTimes = []
    for _ in range(args.repeats):
        ours += engine_decode_step_s(engine, batch, steps)
        theirs += hf_decode_step_s(engine, model, batch, steps)
        if ablation is not None:
            torch_ops += engine_decode_step_s(ablation, batch, steps)
        if compiled is not None:
            compile_times += engine_decode_step_s(compiled, batch, steps)
    ours_s, theirs_s = (
        statistics.median(t[0] for t in ours),
        statistics.median(t[0] for t in theirs),
    )
    # With one thread, CPU time per step does not count time lost to other processes.
    ours_cpu_s = statistics.median(t[1] for t in ours)
    theirs_cpu_s = statistics.median(t[1] for t in theirs)
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "engine_tokens_per_s": round(batch_size / ours_s, 1),
        "transformers_tokens_per_s": round(batch_size / theirs_s, 1),
        "ratio": round(theirs_s / ours_s, 2),
        "engine_step_ms_p50": round(ours_s * 1e3, 3),
        "transformers_step_ms_p50": round(theirs_s * 1e3, 3),
        "engine_step_ms_mean": round(statistics.fmean(t[0] for t in ours) * 1e3, 3),
        "transformers_step_ms_mean": round(statistics.fmean(t[0] for t in theirs) * 1e3, 3),
        "engine_step_cpu_ms_p50": round(ours_cpu_s * 1e3, 3),
        "transformers_step_cpu_ms_p50": round(theirs_cpu_s * 1e3, 3),
        "cpu_time_ratio": round(theirs_cpu_s / ours_cpu_s, 2),
    }
    if torch_ops:
        torch_ops_s = statistics.median(t[0] for t in torch_ops)
        result["engine_torch_ops_tokens_per_s"] = round(batch_size / torch_ops_s, 1)
        result["engine_torch_ops_step_ms_p50"] = round(torch_ops_s * 1e3, 3)
        result["native_vs_torch_ops_ratio"] = round(torch_ops_s / ours_s, 2)
        result["engine_torch_ops_step_cpu_ms_p50"] = round(
            statistics.median(t[1] for t in torch_ops) * 1e3, 3
        )
    if compile_times:
        compile_s = statistics.median(t[0] for t in compile_times)
        result["engine_compile_tokens_per_s"] = round(batch_size / compile_s, 1)
        result["engine_compile_step_ms_p50"] = round(compile_s * 1e3, 3)
        result["compile_vs_engine_ratio"] = round(ours_s / compile_s, 2)
        compile_cpu_s = statistics.median(t[1] for t in compile_times)
        result["engine_compile_step_cpu_ms_p50"] = round(compile_cpu_s * 1e3, 3)
        result["compile_vs_engine_cpu_time_ratio"] = round(ours_cpu_s / compile_cpu_s, 2)
        if torch_ops:  # the same op set, eager
            result["compile_vs_torch_ops_ratio"] = round(
                statistics.median(t[0] for t in torch_ops) / compile_s, 2
            )
            result["compile_vs_torch_ops_cpu_time_ratio"] = round(
                statistics.median(t[1] for t in torch_ops) / compile_cpu_s, 2
            )
    return result


def bench_prefill(engine: Engine, model: Any, args: argparse.Namespace) -> dict[str, Any]:
    batch = prompts(args.prefill_batch, args.prefill_len)
    num_tokens = args.prefill_batch * args.prefill_len
    num_blocks = -(-args.prefill_len // engine.info.block_size)
    steps = [
        SeqStep(i, p, 0, list(range(i * num_blocks, (i + 1) * num_blocks)), GREEDY)
        for i, p in enumerate(batch)
    ]
    engine.step(steps)
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(num_tokens / timed(engine, lambda: engine.step(steps)))
        theirs.append(num_tokens / hf_generate_s(engine, model, batch, 1))
    ours_tps, theirs_tps = statistics.median(ours), statistics.median(theirs)
    return {
        "num_seqs": args.prefill_batch,
        "prompt_len": args.prefill_len,
        "engine_tokens_per_s": round(ours_tps, 1),
        "transformers_tokens_per_s": round(theirs_tps, 1),
        "ratio": round(ours_tps / theirs_tps, 2),
    }


def copy_bandwidth_bytes_per_s(device: torch.device) -> float:
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize(device)
    start_s = time.perf_counter()
    for _ in range(20):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    return 2 * src.numel() * 20 / (time.perf_counter() - start_s)  # read + write


def roofline(engine: Engine, decode: list[dict[str, Any]]) -> dict[str, Any]:
    element_bytes = torch.empty((), dtype=engine.dtype).element_size()
    weight_bytes = engine.source.config.num_params * element_bytes
    bandwidth = copy_bandwidth_bytes_per_s(engine.device)
    roofline_ms = weight_bytes / bandwidth * 1e3
    batch1 = next((d for d in decode if d["batch_size"] == 1), None)
    step_ms = batch1["engine_step_ms_p50"] if batch1 else None
    return {
        "weight_bytes": weight_bytes,
        "copy_bandwidth_gb_per_s": round(bandwidth / 1e9, 1),
        "roofline_ms": round(roofline_ms, 3),
        "batch1_step_ms": step_ms,
        "times_roofline": round(step_ms / roofline_ms, 2) if step_ms else None,
    }


CPU_PREDICTION = (
    "Prediction (CPU): with torch ops alone the engine led generate by 1.1-1.3x at batch 32 "
    "(float32 GEMMs ~60% of the step, the KV gather ~25%). GEMMs on oneDNN-packed weights "
    "(microbenchmark, tiny's 4 layers + lm_head at 32 rows, caches polluted as in a step: "
    "5.3 -> 2.2 ms on 2 threads) plus the fused kernels (no KV gather, ~60 fewer ops a step) "
    "should bring the batch-32 step from ~6.2 to ~3.5 ms: about 2x generate, more at batch "
    "1-8 where per-op overhead dominates, less at 128 where both are GEMM-bound."
)
CUDA_PREDICTION = (
    "Prediction (CUDA): batch-1 decode is bound by kernel launches and Python (~15 ops per "
    "layer, no CUDA graphs), a few times the memory roofline."
)


COMPILE_PREDICTION = (
    "Prediction (--compile variant, written before the run): inductor fuses the torch op set's "
    "elementwise work (rotary, residual add + RMSNorm, SiLU x mul) into a few generated loops, "
    "but the GEMMs stay ATen calls (on CPU F.linear re-packs each weight per call) and attention "
    "and the cache writes stay eager. On CPU, tiny, batch 32 the torch-op step is ~60% GEMMs and "
    "~25% KV gather, so --compile should be 1.1-1.3x the torch op set eagerly and still ~0.5x the "
    "default native engine (weights packed once, cache read in place); at batch 1, dynamo's "
    "guard checks on 8 compiled calls a step may eat the gain. On CUDA it removes ~10 launches "
    "a layer: most visible at batch 1 without CUDA graphs."
)


def notes(results: dict[str, Any], engine: Engine) -> str:
    lines = [CUDA_PREDICTION if engine.config.is_cuda else CPU_PREDICTION]
    if results["setup"]["compile_variant"]:
        lines.append(COMPILE_PREDICTION)
    lines.append("Result:")
    single_thread = results["setup"]["num_threads"] == 1
    for d in results["decode"]:
        line = (
            f"batch {d['batch_size']}: {d['ratio']}x ({d['engine_tokens_per_s']} vs "
            f"{d['transformers_tokens_per_s']} tokens/s"
        )
        if "native_vs_torch_ops_ratio" in d:
            line += f"; native kernels {d['native_vs_torch_ops_ratio']}x the engine on torch ops"
        if "compile_vs_engine_ratio" in d:
            line += (
                f"; --compile {d['engine_compile_tokens_per_s']} tokens/s, "
                f"{d['compile_vs_engine_ratio']}x the engine"
            )
            if "compile_vs_torch_ops_ratio" in d:
                line += f", {d['compile_vs_torch_ops_ratio']}x torch ops eagerly"
            if single_thread:
                line += (
                    f" (CPU time: {d['compile_vs_engine_cpu_time_ratio']}x the engine, "
                    f"{d.get('compile_vs_torch_ops_cpu_time_ratio')}x torch ops)"
                )
        if single_thread:  # thread CPU time counts only the calling thread
            line += f"; {d['cpu_time_ratio']}x CPU time"
        lines.append(line + ");")
    p = results["prefill"]
    lines.append(f"prefill {p['num_seqs']}x{p['prompt_len']}: {p['ratio']}x.")
    load = results["setup"]["load_average_1m"]
    lines.append(
        f"{results['setup']['num_threads']} torch threads; 1-minute load average at start "
        f"{load} on {os.cpu_count()} cores (medians of per-step times; wall figures on a "
        "shared VM move by 10-30% between runs, so compare ratios from one run)."
    )
    if "roofline" in results:
        r = results["roofline"]
        lines.append(
            f"Batch-1 step {r['batch1_step_ms']} ms vs memory roofline "
            f"{r['roofline_ms']} ms ({r['times_roofline']}x)."
        )
    return " ".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
