"""The scheduler's one typed configuration object, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.config import DEFAULTS

BatchingMode = Literal["continuous", "static"]
BATCHING_MODES: tuple[str, ...] = ("continuous", "static")
PreemptionMode = Literal["recompute", "swap"]
PREEMPTION_MODES: tuple[str, ...] = ("recompute", "swap")


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    """How the scheduler batches requests.

    - max_num_seqs: most sequences holding KV blocks (running) at once.
    - max_num_batched_tokens: token budget of one step (prefill chunk tokens + one per decode).
    - max_queue_len: bound of the waiting queue; `add` refuses at once beyond it.
    - max_prefill_seqs: new sequences admitted per step at most (0: no cap; range checked by
      the tree, services/config.py).
    - batching: "continuous" (iteration-level) or "static" (admit a batch, run it to the end).
    - enable_chunked_prefill: split a prompt longer than the step's remaining budget.
    - static_batch_timeout_s: static mode waits this long after the oldest arrival for a full
      batch of max_num_seqs before running a partial one.
    - enable_prefix_caching: share the KV blocks of prompt prefixes already computed (full blocks
      named by a chained hash; freed ones kept and evicted least recently used first).
    - preemption: what happens to a preempted sequence's KV: "recompute" (dropped, the prompt and
      output so far run again) or "swap" (copied to the worker's host memory and back).
    - async_scheduling: build step N+1 while step N runs (two steps in flight); its decodes of
      sequences in step N carry PLACEHOLDER_TOKEN_ID, which the worker fills in.
    - num_scheduler_steps: multi-step decoding. A step of decodes only (nothing to prefill or
      swap) goes to the worker with up to N-1 more decode steps chained behind it, run there one
      after another in one round trip (placeholders as with async scheduling); their tokens come
      back, and go to the front door, together. Requests arriving meanwhile wait for the run.
      With async_scheduling, the next run is built while one runs.
    """

    max_num_seqs: int = DEFAULTS.scheduler.max_num_seqs
    max_num_batched_tokens: int = DEFAULTS.scheduler.max_num_batched_tokens
    max_queue_len: int = DEFAULTS.scheduler.max_queue_len
    max_prefill_seqs: int = DEFAULTS.scheduler.max_prefill_seqs
    batching: BatchingMode = DEFAULTS.scheduler.batching  # type: ignore[assignment]
    enable_chunked_prefill: bool = True
    static_batch_timeout_s: float = DEFAULTS.scheduler.static_batch_timeout_s
    enable_prefix_caching: bool = DEFAULTS.scheduler.prefix_caching
    preemption: PreemptionMode = DEFAULTS.scheduler.preemption  # type: ignore[assignment]
    async_scheduling: bool = DEFAULTS.scheduler.async_scheduling
    num_scheduler_steps: int = DEFAULTS.scheduler.num_scheduler_steps

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # every running sequence must be able to decode in the same step
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs}) so every running sequence can decode "
                "in one step"
            )
        if self.num_scheduler_steps < 1:
            raise ValueError(f"num_scheduler_steps must be >= 1, got {self.num_scheduler_steps}")
        if self.max_queue_len < 1:
            raise ValueError(f"max_queue_len must be >= 1, got {self.max_queue_len}")
        if self.batching not in BATCHING_MODES:
            raise ValueError(
                f"batching must be one of {', '.join(BATCHING_MODES)}, got {self.batching!r}"
            )
        if not self.static_batch_timeout_s >= 0.0:  # also refuses NaN
            raise ValueError(
                f"static_batch_timeout_s must be >= 0, got {self.static_batch_timeout_s}"
            )

        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(
                f"preemption must be one of {', '.join(PREEMPTION_MODES)}, got {self.preemption!r}"
            )

    @property
    def is_static(self) -> bool:
        return self.batching == "static"
