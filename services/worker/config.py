"""The model worker's configuration: one typed object, validated once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.config import (
    DEFAULTS,
    ENGINE_WAIT_POLICIES,
    KERNEL_SETS,
    MAX_GRAPH_BATCH,
    check_quantization,
    check_step_loop,
    engine_threads_count,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KERNELS = KERNEL_SETS


@dataclass(slots=True)
class WorkerConfig:
    """What the worker serves and on which device.

    model: preset name (`tiny`, `small`, `llama-1b`) or a local Hugging Face directory.
    device: `cpu`, `cuda` or `cuda:N`.
    dtype: None = float32 on CPU, bfloat16 on CUDA; float16 only on CUDA.
    block_size: tokens per KV-cache block.
    kv_cache_bytes: KV-cache budget on CPU (on CUDA the budget is a fraction of free memory).
    gpu_memory_fraction: share of the GPU's free memory (after weights) the worker may use.
    seed: seed of a preset's random weights.
    max_num_batched_tokens: the most tokens one step may carry (sizes the activation reserve).
    swap_space_bytes: host memory for KV blocks of preempted sequences (the scheduler's
        `preemption="swap"`); 0 = none. Pinned memory on CUDA.
    kernels: the non-GEMM ops. `native`: fused CPU kernels, decode attention read in place from
        the paged cache (compiled on first use, services/worker/kernels); `torch`: plain torch ops
        (any device); `auto`: native on CPU where they build, else torch.
    max_model_len: the longest sequence served (None: the model's own context, or a packaged
        model's default); the KV cache must hold one sequence this long.
    num_threads: torch CPU threads of the engine (intra-op, OpenMP); None = auto (one per free
        core, chosen between steps: services/worker/thread_governor.py; CUDA: torch's default);
        0 = torch's default (one per core), fixed; N = N, fixed. Fewer than the cores leaves
        cores to the other services on the same machine.
    wait_policy: how idle OpenMP threads wait (`auto`, `active`, `passive`): an environment
        setting of the process, applied before torch loads (services/common/threads.py).
    cuda_graphs: replay decode-only steps (every sequence one token, all sampled) from CUDA graphs
        captured at start for batch sizes 1, 2, 4, ... up to `cuda_graph_max_batch` (a batch is
        padded up to the next captured size; larger ones, prefills and mixed steps run eagerly).
    cuda_graph_max_batch: the largest decode batch captured (graphs cost start-up time and memory).
    compile: torch.compile the model's dense parts (rotary on the QKV projection, and output
        projection + MLP + norms; attention and the cache writes stay eager) on the torch op set:
        inductor's C++ on CPU, Triton on CUDA. Compiled on first use of each shape class.
    kv_export_thread: the KV hop's source-side gather on a thread of its own, beside the step in
        progress (host caches only); off: queued between steps on the engine thread.
    quantization: `none`, or the layers' linear weights as `int8` (a scale per output channel)
        or `int4` (`quantization_group_size` input features per scale and minimum); the LM head
        is int8 under both (services/worker/quant.py).
    """

    model: str = DEFAULTS.model.model
    device: str = DEFAULTS.worker.device
    dtype: str | None = DEFAULTS.worker.dtype
    block_size: int = 16
    kv_cache_bytes: int = DEFAULTS.worker.kv_cache_mb * 1024 * 1024
    gpu_memory_fraction: float = 0.85
    seed: int = 0
    max_num_batched_tokens: int = DEFAULTS.scheduler.max_num_batched_tokens
    kernels: str = DEFAULTS.worker.kernels
    swap_space_bytes: int = DEFAULTS.worker.swap_space_mb * 1024 * 1024
    max_model_len: int | None = DEFAULTS.model.max_model_len  # caps the context and KV cache
    num_threads: int | None = engine_threads_count(DEFAULTS.worker.engine_threads)
    wait_policy: str = DEFAULTS.worker.engine_wait_policy
    cuda_graphs: bool = DEFAULTS.worker.cuda_graphs
    cuda_graph_max_batch: int = DEFAULTS.worker.cuda_graph_max_batch
    compile: bool = DEFAULTS.worker.compile
    kv_export_thread: bool = DEFAULTS.worker.kv_export_thread
    quantization: str = DEFAULTS.worker.quantization
    quantization_group_size: int = DEFAULTS.worker.quantization_group_size

    def __post_init__(self) -> None:
        self._check_device()
        if self.dtype is None:
            self.dtype = "float32" if self.device == "cpu" else "bfloat16"
        if self.dtype not in DTYPES:
            raise ValueError(
                f"dtype {self.dtype!r} is not supported; choose one of {', '.join(DTYPES)}"
            )
        if self.dtype == "float16" and self.device == "cpu":
            raise ValueError("dtype float16 needs CUDA; on CPU use float32 or bfloat16")
        if self.kernels not in KERNELS:
            raise ValueError(
                f"kernels {self.kernels!r} is not supported; choose one of {', '.join(KERNELS)}"
            )
        if self.kernels == "native" and self.device != "cpu":
            raise ValueError("kernels 'native' are CPU kernels; on CUDA use auto or torch")
        self._check_step_loop()
        check_quantization(self.quantization, self.quantization_group_size, self.compile)
        if self.block_size < 1 or self.max_num_batched_tokens < 1 or self.kv_cache_bytes < 1:
            raise ValueError("block_size, max_num_batched_tokens and kv_cache_bytes must be >= 1")
        if self.num_threads is not None and self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0 (0: one per core), got {self.num_threads}")
        if self.wait_policy not in ENGINE_WAIT_POLICIES:
            raise ValueError(
                f"wait_policy must be one of {', '.join(ENGINE_WAIT_POLICIES)}, "
                f"got {self.wait_policy!r}"
            )
        if self.swap_space_bytes < 0:
            raise ValueError(f"swap_space_bytes must be >= 0, got {self.swap_space_bytes}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError(
                f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}"
            )

    def _check_step_loop(self) -> None:
        check_step_loop(self.device, self.cuda_graphs, self.kernels, self.compile)
        if not 1 <= self.cuda_graph_max_batch <= MAX_GRAPH_BATCH:
            raise ValueError(
                f"cuda_graph_max_batch must be in 1..{MAX_GRAPH_BATCH}, "
                f"got {self.cuda_graph_max_batch}"
            )

    def _check_device(self) -> None:
        if self.device == "cpu":
            return
        kind, _, index = self.device.partition(":")
        if kind != "cuda" or (index and not index.isdigit()):
            raise ValueError(f"device {self.device!r} is not valid; use cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {self.device!r} requested but CUDA is not available here "
                f"(torch {torch.__version__}); use --device cpu"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(
                f"device {self.device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        assert self.dtype is not None
        return DTYPES[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def is_cuda(self) -> bool:
        return self.device != "cpu"
