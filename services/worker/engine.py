"""The model worker's compute core: a model, its paged KV cache, one batched step at a time.

No gRPC here; the servicer calls `Engine.step` from a worker thread, one step at a time.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import torch

from services.common.types import BlockSwaps, ModelInfo, SamplingParams, SeqStep, StepOutput
from services.config import HopscopeConfig
from services.models import ModelSource, resolve_model
from services.models.checkpoint import load_source_weights
from services.worker import kernels
from services.worker.batch import build_batch
from services.worker.config import check_device_present, torch_dtype
from services.worker.kv_cache import KVCache, bytes_per_block, num_blocks_for_budget
from services.worker.kv_swap import HostKVPool
from services.worker.model import Transformer
from services.worker.sampling import SamplingTensors, sample
from services.worker.static_decode import StaticDecode
from services.worker.thread_governor import ThreadGovernor, available_cores

log = logging.getLogger(__name__)


class StepError(ValueError):
    """A step asked for something the engine cannot do (bad block table, context overflow)."""


class Forward(NamedTuple):
    """One forward pass's sampled rows: which sequences, how, and their float32 logits."""

    seq_ids: list[int]
    sampling: list[SamplingParams]
    logits: torch.Tensor  # [len(seq_ids), vocab]


class Engine:
    """Loads the model named by the config and executes scheduler-built steps.

    `static_decode`: run decode-only steps through the fixed-shape path of the CUDA graphs
    (services/worker/static_decode.py) without capturing them. None: exactly when
    `config.cuda_graphs` (captured). Tests and dry runs set it on CPU.

    `settings`: the settings tree as is; the engine reads its `worker` section (`self.config`),
    the model it serves, and the scheduler's step budget (the activation reserve)."""

    def __init__(self, settings: HopscopeConfig, static_decode: bool | None = None) -> None:
        self.settings = settings
        self.config = config = settings.worker
        check_device_present(config.device)
        num_threads = config.engine_thread_count
        if num_threads:  # this thread's (model loading); the engine thread sets its own
            torch.set_num_threads(num_threads)
        # `auto` on CPU: the threads follow the cores other load leaves free; CUDA keeps torch's
        self.threads: ThreadGovernor | None = None
        if num_threads is None and not config.is_cuda:
            self.threads = ThreadGovernor(available_cores())
        self.device = torch.device(config.device)
        self.dtype = torch_dtype(config)
        model = settings.model
        self.source: ModelSource = resolve_model(model.model, model.max_model_len)
        # A GGUF's 4-bit blocks stay packed-ready when --quantization int4 has their group size.
        int4_group_size = config.quantization_group_size if config.quantization == "int4" else 0
        weights = load_source_weights(
            self.source, config.weights_seed, self.dtype, self.device, int4_group_size
        )
        self.kernels, self.gemm = self._kernels()
        self.model = Transformer(
            self.source.config,
            weights,
            self.source.max_context,
            config.block_size,
            native_kernels=self.kernels == "native",
            packed_gemm=self.gemm == "onednn-packed",
            compile=config.compile,
            quantization=config.quantization,
            int4_group_size=config.quantization_group_size,
        )
        if static_decode is None:
            static_decode = config.cuda_graphs
        num_blocks = num_blocks_for_budget(
            self.source.config,
            config.block_size,
            self.dtype,
            self._kv_budget_bytes(),
            self.source.max_context,
        )
        self.kv_cache = KVCache(
            self.source.config,
            num_blocks,
            config.block_size,
            self.dtype,
            self.device,
            has_scratch_block=static_decode,
        )
        block_bytes = bytes_per_block(self.source.config, config.block_size, self.dtype)
        self.host_pool = HostKVPool(self.kv_cache, config.swap_space_bytes // block_bytes)
        self.info = ModelInfo(
            name=self.source.name,
            architecture=self.source.architecture,
            vocab_size=self.source.vocab_size,
            max_context=self.source.max_context,
            dtype=config.dtype_name,
            device=config.device,
            num_blocks=num_blocks,
            block_size=config.block_size,
            eos_token_ids=self.source.eos_token_ids,
            num_swap_blocks=self.host_pool.num_blocks,
        )
        self.static_decode: StaticDecode | None = None
        if static_decode:
            with torch.inference_mode():
                self.static_decode = StaticDecode(
                    self.model,
                    self.kv_cache,
                    config.cuda_graph_max_batch,
                    self.source.max_context,
                    capture=config.cuda_graphs,
                )
        log.info(
            "engine ready: %s (%s) on %s %s, kernels=%s, gemm=%s, %d KV blocks of %d tokens, "
            "cuda_graphs=%s, compile=%s",
            self.info.name,
            self.info.architecture,
            self.info.device,
            self.info.dtype,
            self.kernels,
            self.gemm,
            num_blocks,
            config.block_size,
            config.cuda_graphs,
            config.compile,
        )

    def step(self, seqs: list[SeqStep], swaps: BlockSwaps | None = None) -> StepOutput:
        """Copy swapped blocks out then in, then run one batch of prefill chunks and decodes;
        sample where `sampling` is set."""
        start_s = time.perf_counter()
        swap_start_ns = time.time_ns()
        if swaps:
            self._swap(swaps)
        swap_ms = (time.perf_counter() - start_s) * 1e3 if swaps else 0.0
        events = self._start_events()
        with torch.inference_mode():
            forward = self._forward(seqs)
            tokens = (
                sample(forward.logits, self._sampling_tensors(forward, seqs))
                if forward.seq_ids
                else None
            )
            if events is not None:
                events[1].record()
            # The step's one host-device synchronisation (a step that samples nothing, a
            # non-final prefill chunk, waits on the end event instead).
            if tokens is not None:
                token_list: list[int] = tokens.tolist()
            else:
                token_list = []
                if events is not None:
                    events[1].synchronize()
        step_s = time.perf_counter() - start_s
        if self.threads is not None:  # between steps, on the thread that runs them
            self.threads.step_done(step_s)
        return StepOutput(
            sampled=dict(zip(forward.seq_ids, token_list, strict=True)),
            step_ms=step_s * 1e3,
            device_ms=events[0].elapsed_time(events[1]) if events is not None else 0.0,
            swap_ms=swap_ms,
            swap_start_ns=swap_start_ns if swaps else 0,
        )

    def _swap(self, swaps: BlockSwaps) -> None:
        for pairs, limit, name in (
            (swaps.swap_out, (self.info.num_blocks, self.host_pool.num_blocks), "swap_out"),
            (swaps.swap_in, (self.host_pool.num_blocks, self.info.num_blocks), "swap_in"),
        ):
            if any(not (0 <= s < limit[0] and 0 <= d < limit[1]) for s, d in pairs):
                raise StepError(
                    f"{name} {pairs} names a block outside the device cache "
                    f"({self.info.num_blocks} blocks) or host pool ({self.host_pool.num_blocks})"
                )
        with torch.inference_mode():
            self.host_pool.swap_out(self.kv_cache, swaps.swap_out)  # first: blocks get reused
            self.host_pool.swap_in(self.kv_cache, swaps.swap_in)

    def logits(self, seqs: list[SeqStep]) -> dict[int, torch.Tensor]:
        """Like `step` (KV written the same way) but returns float32 logits per sampled seq_id
        instead of sampling: for parity checks against a reference implementation."""
        with torch.inference_mode():
            forward = self._forward(seqs)
        # clone: a replayed graph's logits are overwritten by the next step
        return {seq_id: forward.logits[i].clone() for i, seq_id in enumerate(forward.seq_ids)}

    def _forward(self, seqs: list[SeqStep]) -> Forward:
        self._validate(seqs)
        if self.static_decode is not None and self.static_decode.fits(seqs):
            sampling = [s.sampling for s in seqs if s.sampling is not None]
            return Forward([s.seq_id for s in seqs], sampling, self.static_decode.forward(seqs))
        batch = build_batch(seqs, self.config.block_size, self.device)
        if not seqs:
            return Forward([], [], torch.empty(0, self.info.vocab_size, device=self.device))
        return Forward(
            batch.sample_seq_ids, batch.sampling, self.model.forward(batch, self.kv_cache)
        )

    def _sampling_tensors(self, forward: Forward, seqs: list[SeqStep]) -> SamplingTensors:
        # The sampled token's position is the sequence's length after this step.
        position_by_id = {s.seq_id: s.num_tokens_after for s in seqs}
        positions = [position_by_id[seq_id] for seq_id in forward.seq_ids]
        return SamplingTensors(forward.sampling, positions, self.device)

    def _validate(self, seqs: list[SeqStep]) -> None:
        for seq in seqs:
            if not seq.token_ids or seq.num_computed < 0:
                raise StepError(
                    f"sequence {seq.seq_id}: needs >= 1 token and num_computed >= 0, got "
                    f"{len(seq.token_ids)} tokens at {seq.num_computed}"
                )
            # Checked here: an out-of-range id on CUDA is a device-side assert that kills the
            # worker's CUDA context, not an exception.
            if min(seq.token_ids) < 0 or max(seq.token_ids) >= self.info.vocab_size:
                raise StepError(
                    f"sequence {seq.seq_id}: token ids must be in 0..{self.info.vocab_size - 1}"
                )
            if seq.num_tokens_after > self.info.max_context:
                raise StepError(
                    f"sequence {seq.seq_id}: {seq.num_tokens_after} tokens exceed the model's "
                    f"context of {self.info.max_context}"
                )
            num_blocks_needed = -(-seq.num_tokens_after // self.config.block_size)
            if len(seq.block_table) < num_blocks_needed:
                raise StepError(
                    f"sequence {seq.seq_id}: block table has {len(seq.block_table)} blocks, "
                    f"{seq.num_tokens_after} tokens need {num_blocks_needed}"
                )
            if any(b < 0 or b >= self.info.num_blocks for b in seq.block_table[:num_blocks_needed]):
                raise StepError(
                    f"sequence {seq.seq_id}: block table {seq.block_table} names a block outside "
                    f"0..{self.info.num_blocks - 1}"
                )

    def _kernels(self) -> tuple[str, str]:
        """(non-GEMM ops, GEMMs): `native` or `torch`, and `onednn-packed`, `torch`, or the
        quantization (`int8`, `int4`). An explicit `native` raises where either half is
        unavailable."""
        ops, gemm = self._float_kernels()
        if self.config.quantization != "none":  # its own kernels, whatever oneDNN offers
            return ops, self.config.quantization
        return ops, gemm

    def _float_kernels(self) -> tuple[str, str]:
        if self.config.kernels == "torch" or self.config.is_cuda or self.config.compile:
            return "torch", "torch"
        packed = kernels.packed_gemm_available(self.dtype)
        if self.config.kernels == "native":
            kernels.load()
            if not packed:
                raise kernels.KernelUnavailableError(
                    f"oneDNN packed linear does not run {self.config.dtype_name} here"
                )
            return "native", "onednn-packed"
        return (
            "native" if kernels.available() else "torch",
            "onednn-packed" if packed else "torch",
        )

    def _start_events(self) -> tuple[torch.cuda.Event, torch.cuda.Event] | None:
        if not self.config.is_cuda:
            return None
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        events[0].record()
        return events

    def _kv_budget_bytes(self) -> int:
        if not self.config.is_cuda:
            return self.config.kv_cache_bytes
        free_bytes, _ = torch.cuda.mem_get_info(self.device)
        return int(free_bytes * self.config.gpu_memory_fraction) - self._activation_reserve_bytes()

    def _activation_reserve_bytes(self) -> int:
        """Room for one largest step's activations and logits, left outside the KV cache."""
        cfg = self.source.config
        element_bytes = torch.empty((), dtype=self.dtype).element_size()
        per_token = (2 * cfg.intermediate_size + 6 * cfg.hidden_size) * element_bytes
        per_token += cfg.vocab_size * 4 * 3  # float32 logits, noise and sort buffers
        # Decode attention gathers one layer's K/V for the longest context of each sequence.
        gather = 2 * bytes_per_block(cfg, self.config.block_size, self.dtype) // cfg.num_layers
        num_context_blocks = -(-self.source.max_context // self.config.block_size)
        reserve = (
            self.settings.scheduler.max_num_batched_tokens * per_token
            + 64 * gather * num_context_blocks
        )
        if self.config.cuda_graphs:  # the graphs' private pool holds their largest shape's too
            max_batch = self.config.cuda_graph_max_batch
            reserve += max_batch * (per_token + gather * num_context_blocks)
        return reserve
