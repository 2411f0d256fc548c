"""The engine alone on the pipeline's workload: what `hopscope bench`'s closed loop asks of the
worker (a batch of `--batch` sequences, `--input-len`-token prompts, `--output-len` tokens each,
greedy), run by the Engine in this process with no gRPC, scheduler or front door. Its output
tokens/s is the ceiling the pipeline's is compared with at the same batch (benchmarks/token_cost.py
runs it as its `engine` variant, in a child, alternating with the pipelines).

    .venv/bin/python -P -m benchmarks.engine_alone --model tiny --batch 32 --repeats 3

Prints one JSON line: {"output_tok_s": median, "per_repeat": [...], "cpu_s_per_token": ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from services.common.types import SamplingParams, SeqStep
from services.worker.config import WorkerConfig
from services.worker.engine import Engine

GREEDY = SamplingParams()


def one_cycle(engine: Engine, batch: int, input_len: int, output_len: int, base: int) -> int:
    """Prefill every prompt in one step, then decode to `output_len` tokens; returns tokens."""
    block_size = engine.info.block_size
    num_blocks = -(-(input_len + output_len) // block_size)
    tables = [list(range(i * num_blocks, (i + 1) * num_blocks)) for i in range(batch)]
    prompts = [
        [(base + 97 * i + 13 * j) % 4000 + 2 for j in range(input_len)] for i in range(batch)
    ]
    out = engine.step([SeqStep(i, p, 0, tables[i], GREEDY) for i, p in enumerate(prompts)])
    for length in range(input_len, input_len + output_len - 1):
        steps = [SeqStep(i, [out.sampled[i]], length, tables[i], GREEDY) for i in range(batch)]
        out = engine.step(steps)
    return batch * output_len


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engine = Engine(WorkerConfig(model=args.model))
    one_cycle(engine, args.batch, args.input_len, args.output_len, base=0)  # warm-up
    per_repeat, cpu_per_token = [], []
    for k in range(args.repeats):
        start_s, start_cpu_s = time.perf_counter(), time.process_time()
        tokens = one_cycle(engine, args.batch, args.input_len, args.output_len, base=k + 1)
        per_repeat.append(round(tokens / (time.perf_counter() - start_s), 1))
        cpu_per_token.append((time.process_time() - start_cpu_s) / tokens)
    result = {
        "output_tok_s": statistics.median(per_repeat),
        "per_repeat": per_repeat,
        "cpu_us_per_token": round(statistics.median(cpu_per_token) * 1e6, 2),
        "batch": args.batch,
        "threads": engine.device.type == "cpu" and __import__("torch").get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
