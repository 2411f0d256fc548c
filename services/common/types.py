"""Domain objects shared by the scheduler and worker cores (no gRPC, Ray or OTel here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class SamplingParams:
    """How to pick the next token. `seed` is always set: the front door draws one when the
    client gives none, so every request is reproducible from its recorded parameters."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


# Async scheduling: a decode's token id when the scheduler built the step before the previous
# one returned; the worker runs the token it sampled for this sequence in its previous step.
PLACEHOLDER_TOKEN_ID = -1


@dataclass(slots=True)
class SeqStep:
    """One sequence's share of a worker step."""

    seq_id: int
    token_ids: list[int]  # tokens to run this step: a prompt chunk, or the one last token
    num_computed: int  # tokens already in the KV cache (position of token_ids[0])
    block_table: list[int]
    sampling: SamplingParams | None  # None: a prompt chunk that is not the last, nothing sampled

    @property
    def num_tokens_after(self) -> int:
        return self.num_computed + len(self.token_ids)

    @property
    def is_prefill(self) -> bool:
        return len(self.token_ids) > 1 or self.num_computed == 0


@dataclass(slots=True)
class BlockSwaps:
    """KV blocks a step copies before it runs: out to the worker's host pool (preempted
    sequences), then back in (resumed ones). Pairs are (source block, destination block)."""

    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device, host)
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (host, device)

    def __bool__(self) -> bool:
        return bool(self.swap_out or self.swap_in)


@dataclass(slots=True)
class StepOutput:
    sampled: dict[int, int]  # seq_id -> sampled token, for every SeqStep with sampling
    step_ms: float  # worker's own wall time for the step
    device_ms: float = 0.0  # device time (CUDA events) where measured
    swap_ms: float = 0.0  # of step_ms: copying swapped KV blocks out and in
    swap_start_ns: int = 0  # wall clock (time.time_ns) of the copies, for their span
    # multi-step: what each decode step chained behind this one sampled, in order
    later_sampled: list[dict[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class ModelInfo:
    """What the worker serves; the scheduler sizes its block accounting from it."""

    name: str
    architecture: str
    vocab_size: int
    max_context: int
    dtype: str
    device: str
    num_blocks: int
    block_size: int
    eos_token_ids: list[int] = field(default_factory=list)
    num_swap_blocks: int = 0  # blocks of the worker's host pool for swapped-out KV


@dataclass(slots=True)
class Delivery:
    """What the scheduler hands back for one request after a step: new tokens, and how it ended.

    `error_status` is the name of a gRPC status code ("" when fine); the front door raises the
    matching domain error (services.common.errors.error_for_status).
    """

    request_id: str
    token_ids: list[int]
    finish_reason: str = ""  # "", "length", "stop", "abort"
    error_status: str = ""
    error_message: str = ""

    @property
    def is_finished(self) -> bool:
        return bool(self.finish_reason or self.error_status)
