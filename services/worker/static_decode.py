"""Decode-only steps through fixed shapes, so that each shape can be captured once as a CUDA graph
and replayed (`WorkerSettings.cuda_graphs`).

A decode step of n sequences (each one new token, each sampled) runs as a batch of B rows, B the
smallest captured batch size >= n, with every block table padded to NB blocks, NB the smallest
block-count bucket >= the longest one the step needs. The inputs live in one fixed device buffer
(token ids, positions, cache slots, context lengths, block tables), filled by one host->device copy
per step, and the forward is the model's own torch-op decode path (`Transformer.forward` on a
`StepBatch` whose tensors are views of that buffer): blocks gathered from the paged cache by the
padded tables, keys past each context length masked. Padding rows (B - n of them) write and read
only the KV cache's scratch block, so they touch no sequence's blocks; their logits are dropped.

Padding the block tables costs gathered keys that are masked out; buckets double (8, 16, 32, ...
blocks, then the model's whole context), so at most half of what is gathered is padding once a
context passes 8 blocks. On CPU (tests, dry runs) the same path runs without capture.
"""

from __future__ import annotations

import gc
import logging
import time

import torch

from services.common.types import SeqStep
from services.worker.batch import StepBatch
from services.worker.kv_cache import KVCache
from services.worker.model import Transformer

log = logging.getLogger(__name__)

MIN_BLOCK_BUCKET = 8  # 128 tokens at the default block size
WARMUP_FORWARDS = 2  # before capture: compiles (with --compile), cuBLAS plans, allocator state


def graph_batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below `max_batch`, then `max_batch` itself."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return [*sizes, max_batch]


def block_buckets(max_blocks: int) -> list[int]:
    """8, 16, 32, ... blocks below `max_blocks` (a whole context), then `max_blocks`."""
    buckets = []
    bucket = MIN_BLOCK_BUCKET
    while bucket < max_blocks:
        buckets.append(bucket)
        bucket *= 2
    return [*buckets, max_blocks]


def smallest_at_least(sizes: list[int], value: int) -> int:
    return next(size for size in sizes if size >= value)


class StaticDecode:
    """Runs decode-only steps of up to `max_batch` sequences through fixed-shape buffers;
    replays captured CUDA graphs when `capture` (CUDA only)."""

    def __init__(
        self,
        model: Transformer,
        kv_cache: KVCache,
        max_batch: int,
        max_context: int,
        capture: bool,
    ) -> None:
        if kv_cache.scratch_block is None:
            raise ValueError("fixed-shape decode needs a KV cache with a scratch block")
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.scratch_block = kv_cache.scratch_block
        self.batch_sizes = graph_batch_sizes(max_batch)
        self.buckets = block_buckets(-(-max_context // self.block_size))
        device = kv_cache.data.device
        max_b, max_nb = self.batch_sizes[-1], self.buckets[-1]
        self.inputs = torch.zeros(4 * max_b + max_b * max_nb, dtype=torch.long, device=device)
        self.rows = torch.arange(max_b, dtype=torch.long, device=device)
        self.batches = {
            (b, nb): self._static_batch(b, nb) for b in self.batch_sizes for nb in self.buckets
        }
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.capture_s = 0.0
        if capture:
            self._capture_all()

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def fits(self, seqs: list[SeqStep]) -> bool:
        """A decode-only step, every sequence sampled, no larger than the largest shape."""
        return 0 < len(seqs) <= self.max_batch and all(
            len(s.token_ids) == 1 and s.sampling is not None for s in seqs
        )

    def shape_of(self, seqs: list[SeqStep]) -> tuple[int, int]:
        """(padded batch size, padded blocks per sequence) this step runs as."""
        num_blocks = max(-(-s.num_tokens_after // self.block_size) for s in seqs)
        return (
            smallest_at_least(self.batch_sizes, len(seqs)),
            smallest_at_least(self.buckets, num_blocks),
        )

    def forward(self, seqs: list[SeqStep]) -> torch.Tensor:
        """float32 logits of the step's sequences, in order, [len(seqs), vocab]. Replayed graphs
        return a view of the graph's output buffer: valid until the next step."""
        shape = self.shape_of(seqs)
        host = self._host_inputs(seqs, *shape)
        self.inputs[: host.numel()].copy_(host, non_blocking=True)
        graph = self.graphs.get(shape)
        if graph is None:
            return self.model.forward(self.batches[shape], self.kv_cache)[: len(seqs)]
        with torch.cuda.device(self.inputs.device):
            graph.replay()
        return self.outputs[shape][: len(seqs)]

    def _static_batch(self, b: int, nb: int) -> StepBatch:
        """Views of `inputs` laid out as [tokens | positions | slots | lengths | tables]."""
        token_ids, positions, slots, lens = self.inputs[: 4 * b].split(b)
        return StepBatch(
            token_ids=token_ids,
            positions=positions,
            slot_mapping=slots,
            num_decodes=b,
            decode_blocks=self.inputs[4 * b : 4 * b + b * nb],
            decode_lens=lens,
            prefills=[],
            sample_rows=self.rows[:b],
            sample_seq_ids=[],
            sampling=[],
        )

    def _host_inputs(self, seqs: list[SeqStep], b: int, nb: int) -> torch.Tensor:
        block_size, scratch = self.block_size, self.scratch_block
        num_pad = b - len(seqs)
        tokens = [s.token_ids[0] for s in seqs] + [0] * num_pad
        positions = [s.num_computed for s in seqs] + [0] * num_pad
        slots = [
            s.block_table[s.num_computed // block_size] * block_size + s.num_computed % block_size
            for s in seqs
        ] + [scratch * block_size] * num_pad
        lens = [s.num_tokens_after for s in seqs] + [1] * num_pad  # a pad row sees its own key
        tables: list[int] = []
        for s in seqs:
            used = -(-s.num_tokens_after // block_size)
            tables += s.block_table[:used] + [scratch] * (nb - used)
        tables += [scratch] * (nb * num_pad)
        return torch.tensor(tokens + positions + slots + lens + tables, dtype=torch.long)

    def _capture_all(self) -> None:
        start_s = time.perf_counter()
        # torch.cuda.graph runs gc.collect() before every capture: with the objects alive now
        # frozen, each of those is quick.
        gc.collect()
        gc.freeze()
        try:
            with torch.cuda.device(self.inputs.device):  # graphs belong to the current device
                self._capture_shapes()
        finally:
            gc.unfreeze()
        self.capture_s = time.perf_counter() - start_s
        log.info(
            "captured %d decode CUDA graphs (batch sizes %s x block buckets %s) in %.1f s",
            len(self.graphs),
            self.batch_sizes,
            self.buckets,
            self.capture_s,
        )

    def _capture_shapes(self) -> None:
        device = self.kv_cache.data.device
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        # The largest shapes first: the smaller ones' intermediates reuse their memory in the pool.
        for shape in sorted(self.batches, reverse=True):
            batch = self.batches[shape]
            self.inputs[: 4 * shape[0] + shape[0] * shape[1]].copy_(self._padding_inputs(*shape))
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_FORWARDS):
                    self.model.forward(batch, self.kv_cache)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[shape] = self.model.forward(batch, self.kv_cache)
            self.graphs[shape] = graph
        torch.cuda.synchronize(device)

    def _padding_inputs(self, b: int, nb: int) -> torch.Tensor:
        """Inputs of an all-padding batch: what warm-up and capture run on (scratch block only)."""
        return self._host_inputs([], b, nb).to(self.inputs.device)
