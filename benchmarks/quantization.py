"""What `--quantization` costs in quality and saves in bytes, against float32 on the same model.

    python -m benchmarks.quantization [--model smollm2-135m] [--new-tokens 32]
    python -m benchmarks.quantization --step-ms [--rounds 3]   # engine decode step times

Each variant (float32, the reference; bfloat16; int8; int4 at group 32, which loads smollm2's
Q4_1 blocks as they are; int4 at group 64, requantized from them) is loaded in turn, alone, as the
worker's Engine in this process, and measured on:
- greedy agreement: 24 text prompts, `--new-tokens` greedy tokens each (eos not honoured), all
  prompts in one batch; per variant, how many prompts give float32's tokens exactly, the tokens
  before the first difference, and the share of positions that agree;
- perplexity on shipped text (services/models/assets/corpus: the Apache-2.0 license, prose, and
  CPython's textwrap.py, code): windows of `--window` tokens, teacher-forced one token a step
  through the engine's decode path, every window of a text in one batch;
- bytes of weights one decode step reads (the layers' linear weights and the LM head; the
  embedding lookup reads rows only), from the packed tensors themselves.
Writes benchmarks/results/quantization.json.

`--step-ms`: every variant loaded at once in this process, then in rounds (order rotated) each
runs 128-token prompts at batch 1, 4 and 16 and `--decode-steps` decode steps; the median decode
step is the engine's floor under TPOT (no tokenizer, scheduler or hops). Writes
results/quantization_step_ms.json. The pipeline's TPOT, beside llama.cpp's, comes from
benchmarks/peers.py (its `hopscope-colocated-int8` / `-int4` systems).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common
from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig
from services.models.config import ModelConfig
from services.worker.engine import Engine
from services.worker.model import LINEAR_NAMES
from services.worker.quant import QuantizedWeight

GREEDY = SamplingParams()
CORPUS = common.REPO / "services" / "models" / "assets" / "corpus"
TEXTS = (CORPUS / "apache-2.0.txt", CORPUS / "python_textwrap.py.txt")
REFERENCE = "float32"
VARIANTS: dict[str, dict[str, Any]] = {
    "float32": {},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"quantization": "int8"},
    "int4": {"quantization": "int4", "quantization_group_size": 32},
    "int4-g64": {"quantization": "int4", "quantization_group_size": 64},
}
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "import numpy as np\n\ndef normalize(v):",
    "Water boils at a temperature of",
    "The largest planet in our solar system is",
    "To make a cup of tea, first",
    "SELECT name, age FROM users WHERE",
    "The theory of relativity was developed by",
    "Here is a short poem about the sea:\n",
    "In machine learning, overfitting means",
    "The quick brown fox",
    "class Stack:\n    def __init__(self):",
    "My favourite thing about autumn is",
    "The French Revolution began in the year",
    "Photosynthesis is the process by which",
    "for i in range(10):\n    print(",
    "The best way to learn a new language is",
    "A haiku about winter:\n",
    "The human heart has four chambers:",
    "Dear hiring manager, I am writing to",
    "Mount Everest is located in",
    "The difference between a list and a tuple in Python is",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--window", type=int, default=256, help="tokens per perplexity window")
    parser.add_argument("--windows", type=int, default=8, help="windows per text at most")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--step-ms", action="store_true", help="time decode steps instead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="engine threads (default: auto); 1 makes the CPU time per step the whole step's work",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        name = "quantization_step_ms.json" if args.step_ms else "quantization.json"
        args.out = common.RESULTS_DIR / name
    return args


def load(model: str, variant: str, max_len: int, threads: int | None = None) -> Engine:
    config = HopscopeConfig.of(
        model=model,
        max_model_len=max_len,
        kv_cache_mb=128,
        engine_threads="auto" if threads is None else str(threads),
        **VARIANTS[variant],
    )
    return Engine(config)


def tables(engine: Engine, count: int, length: int) -> list[list[int]]:
    per_seq = -(-length // engine.info.block_size)
    assert count * per_seq <= engine.info.num_blocks, "raise kv_cache_mb"
    return [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(count)]


def greedy_tokens(engine: Engine, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Every prompt prefilled in one step, then `new_tokens` - 1 batched decode steps."""
    blocks = tables(engine, len(prompts), max(map(len, prompts)) + new_tokens)
    out = engine.step([SeqStep(i, p, 0, blocks[i], GREEDY) for i, p in enumerate(prompts)])
    tokens = [[out.sampled[i]] for i in range(len(prompts))]
    for step in range(1, new_tokens):
        seqs = [
            SeqStep(i, [tokens[i][-1]], len(p) + step - 1, blocks[i], GREEDY)
            for i, p in enumerate(prompts)
        ]
        out = engine.step(seqs)
        for i in range(len(prompts)):
            tokens[i].append(out.sampled[i])
    return tokens


def negative_log_likelihoods(engine: Engine, windows: list[list[int]]) -> list[float]:
    """-log p(token t+1 | tokens <= t) for every position of every window (teacher-forced)."""
    blocks = tables(engine, len(windows), len(windows[0]))
    nll: list[float] = []
    for position in range(len(windows[0]) - 1):
        seqs = [
            SeqStep(i, [w[position]], position, blocks[i], GREEDY) for i, w in enumerate(windows)
        ]
        logits = engine.logits(seqs)
        for i, window in enumerate(windows):
            log_probs = torch.log_softmax(logits[i], dim=-1)
            nll.append(-float(log_probs[window[position + 1]]))
    return nll


def text_windows(engine: Engine, path: Path, window: int, count: int) -> list[list[int]]:
    ids = engine.source.load_tokenizer().encode(path.read_text()).ids
    return [ids[i * window : (i + 1) * window] for i in range(min(count, len(ids) // window))]


def weight_bytes_per_token(engine: Engine) -> int:
    """Bytes of weights one decode step reads: every layer's linear weights and the LM head."""
    model, config = engine.model, engine.source.config
    element = torch.empty((), dtype=engine.dtype).element_size()
    dense = dense_linear_params(config)
    total = 0
    for layer in model.layers:
        for name in LINEAR_NAMES:
            weight = getattr(layer, name)
            total += weight.nbytes if isinstance(weight, QuantizedWeight) else dense[name] * element
    head = model.lm_head
    total += head.nbytes if isinstance(head, QuantizedWeight) else dense["lm_head"] * element
    return total


def dense_linear_params(config: ModelConfig) -> dict[str, int]:
    """Parameters of each linear weight (oneDNN's packed copies do not say their size)."""
    hidden, q_dim = config.hidden_size, config.num_heads * config.head_dim
    kv_dim = config.num_kv_heads * config.head_dim
    return {
        "qkv": hidden * (q_dim + 2 * kv_dim),
        "o": q_dim * hidden,
        "gate_up": 2 * hidden * config.intermediate_size,
        "down": config.intermediate_size * hidden,
        "lm_head": config.vocab_size * hidden,
    }


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    prefixes = [
        next((i for i, (a, b) in enumerate(zip(row, ref, strict=True)) if a != b), len(ref))
        for row, ref in zip(tokens, reference, strict=True)
    ]
    same = sum(a == b for row, ref in zip(tokens, reference, strict=True) for a, b in zip(row, ref))
    return {
        "prompts_identical": sum(p == len(r) for p, r in zip(prefixes, reference, strict=True)),
        "prompts": len(reference),
        "first_token_agrees": sum(p > 0 for p in prefixes),
        "mean_tokens_before_first_difference": round(sum(prefixes) / len(prefixes), 2),
        "position_agreement": round(same / sum(len(r) for r in reference), 4),
        "tokens_before_first_difference": prefixes,
    }


def measure(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    started = time.perf_counter()
    engine = load(args.model, variant, max(args.window, 128) + args.new_tokens)
    load_s = time.perf_counter() - started
    tokenizer = engine.source.load_tokenizer()
    prompts = [tokenizer.encode(p).ids for p in PROMPTS]
    started = time.perf_counter()
    tokens = greedy_tokens(engine, prompts, args.new_tokens)
    greedy_s = time.perf_counter() - started
    perplexity = {}
    for path in TEXTS:
        windows = text_windows(engine, path, args.window, args.windows)
        nll = negative_log_likelihoods(engine, windows)
        perplexity[path.name] = {
            "perplexity": round(math.exp(sum(nll) / len(nll)), 4),
            "tokens_scored": len(nll),
        }
    record: dict[str, Any] = {
        "variant": variant,
        "settings": VARIANTS[variant],
        "gemm": engine.gemm,
        "kernels": engine.kernels,
        "weight_bytes_per_token": weight_bytes_per_token(engine),
        "load_s": round(load_s, 1),
        "greedy_s": round(greedy_s, 1),
        "tokens": tokens,
        "perplexity": perplexity,
    }
    common.log(f"{variant}: {record['weight_bytes_per_token'] / 2**20:.1f} MiB/token {perplexity}")
    return record


def compare(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each variant against float32: agreement, perplexity change, bytes per token."""
    reference = records[REFERENCE]
    summary: dict[str, Any] = {}
    for name, record in records.items():
        ppl = {
            text: {
                "perplexity": value["perplexity"],
                "change_pct": round(
                    100 * (value["perplexity"] / reference["perplexity"][text]["perplexity"] - 1),
                    2,
                ),
            }
            for text, value in record["perplexity"].items()
        }
        summary[name] = {
            "greedy_vs_float32": agreement(record["tokens"], reference["tokens"]),
            "perplexity": ppl,
            "weight_mib_per_token": round(record["weight_bytes_per_token"] / 2**20, 1),
            "bytes_vs_float32": round(
                record["weight_bytes_per_token"] / reference["weight_bytes_per_token"], 3
            ),
        }
    return summary


def decode_step_ms(engine: Engine, batch: int, prompt_len: int, steps: int) -> tuple[float, float]:
    """Median wall and CPU ms of `steps` decode steps of `batch` sequences after their prompts.
    The CPU time is this thread's: the whole step's work with one engine thread, and a figure
    other load on the machine hardly moves (wall time there swings several-fold)."""
    blocks = tables(engine, batch, prompt_len + steps + 1)
    prompts = [[(97 * i + 13 * j) % 4000 + 2 for j in range(prompt_len)] for i in range(batch)]
    out = engine.step([SeqStep(i, p, 0, blocks[i], GREEDY) for i, p in enumerate(prompts)])
    wall, cpu = [], []
    for step in range(steps):
        seqs = [
            SeqStep(i, [out.sampled[i]], prompt_len + step, blocks[i], GREEDY) for i in range(batch)
        ]
        started, started_cpu = time.perf_counter(), time.thread_time()
        out = engine.step(seqs)
        wall.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def step_ms(args: argparse.Namespace, variants: list[str]) -> dict[str, Any]:
    prompt_len, steps = 128, args.decode_steps
    engines = {v: load(args.model, v, prompt_len + steps + 16, args.threads) for v in variants}
    batches = [int(b) for b in args.batch_sizes.split(",")]
    wall: dict[str, dict[int, list[float]]] = {v: {b: [] for b in batches} for v in variants}
    cpu: dict[str, dict[int, list[float]]] = {v: {b: [] for b in batches} for v in variants}
    for round_index in range(args.rounds):
        for variant in common.rotated(variants, round_index):
            for batch in batches:
                ms = decode_step_ms(engines[variant], batch, prompt_len, steps)
                wall[variant][batch].append(round(ms[0], 2))
                cpu[variant][batch].append(round(ms[1], 2))
            common.log(
                f"round {round_index} {variant}: wall {[wall[variant][b][-1] for b in batches]} "
                f"cpu {[cpu[variant][b][-1] for b in batches]}"
            )

    def medians(runs: dict[str, dict[int, list[float]]]) -> dict[str, dict[str, float]]:
        return {v: {str(b): round(statistics.median(runs[v][b]), 2) for b in batches} for v in runs}

    return {
        "prompt_len": prompt_len,
        "decode_steps": steps,
        "engine_threads": args.threads,
        "per_round_wall_ms": {v: {str(b): wall[v][b] for b in batches} for v in variants},
        "per_round_cpu_ms": {v: {str(b): cpu[v][b] for b in batches} for v in variants},
        "median_wall_ms": medians(wall),
        "median_cpu_ms": medians(cpu),
        "gemm": {v: engines[v].gemm for v in variants},
        "weight_mib_per_token": {
            v: round(weight_bytes_per_token(engines[v]) / 2**20, 1) for v in variants
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if REFERENCE not in variants:
        variants.insert(0, REFERENCE)
    machine = common.machine_info()
    if args.step_ms:
        result = {
            "benchmark": "quantization_step_ms",
            "command": f"python -m benchmarks.quantization --step-ms --model {args.model} "
            f"--variants {','.join(variants)} --rounds {args.rounds} "
            f"--decode-steps {args.decode_steps} --batch-sizes {args.batch_sizes}"
            + (f" --threads {args.threads}" if args.threads is not None else ""),
            "machine": machine,
            **step_ms(args, variants),
        }
        common.write_json(args.out, result)
        common.log(f"wrote {args.out}: {result['median_wall_ms']} {result['median_cpu_ms']}")
        return 0
    records = {variant: measure(args, variant) for variant in variants}
    result = {
        "benchmark": "quantization",
        "command": "python -m benchmarks.quantization "
        f"--model {args.model} --variants {','.join(variants)} --new-tokens {args.new_tokens} "
        f"--window {args.window} --windows {args.windows}",
        "machine": machine,
        "prompts": list(PROMPTS),
        "texts": [str(p.relative_to(common.REPO)) for p in TEXTS],
        "summary": compare(records),
        "records": list(records.values()),
    }
    common.write_json(args.out, result)
    common.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
