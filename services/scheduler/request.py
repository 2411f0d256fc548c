"""What goes into the scheduler core (Request), what comes out per step (Batch) and per request
(Update)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.types import BlockSwaps, SamplingParams, SeqStep
from services.scheduler.errors import SchedulerError

FINISH_REASONS: tuple[str, ...] = ("", "length", "stop", "abort")


@dataclass(slots=True, eq=False)
class Request:
    """One generation request. The core fills in the recorded fields as it runs."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    ignore_eos: bool = False
    deadline_s: float | None = None  # monotonic clock, like every *_s time the core is given
    arrival_s: float = 0.0
    context: object = None  # opaque to the core; carried for the runner (e.g. a tracing context)
    # recorded by the core
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    finished_s: float | None = None
    finish_reason: str = ""
    output_token_ids: list[int] = field(default_factory=list)
    num_preemptions: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)


@dataclass(slots=True)
class Update:
    """What happened to one request: the tokens sampled since the last update, and whether it
    finished ("length", "stop" on EOS, "abort"; "" while it runs)."""

    request_id: str
    token_ids: list[int]
    finish_reason: str = ""
    error: SchedulerError | None = None  # e.g. DeadlineExceededError for an expired request

    @property
    def is_finished(self) -> bool:
        return self.finish_reason != ""


@dataclass(slots=True)
class Batch:
    """One worker step. `request_ids` and `phases` are parallel to `seq_steps`."""

    step_id: int
    seq_steps: list[SeqStep] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)  # "prefill" | "decode"
    swaps: BlockSwaps = field(default_factory=BlockSwaps)  # KV copies done before the step
    # requests whose KV this batch copies out / in (recomputed instead if it is never answered)
    swapped_out: list[str] = field(default_factory=list)
    swapped_in: list[str] = field(default_factory=list)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(len(s.token_ids) for s, p in zip(self.seq_steps, self.phases) if p == "prefill")

    @property
    def num_decode_tokens(self) -> int:
        return sum(len(s.token_ids) for s, p in zip(self.seq_steps, self.phases) if p == "decode")

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seq_steps)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_steps)

    def add(self, step: SeqStep, request_id: str, phase: str) -> None:
        self.seq_steps.append(step)
        self.request_ids.append(request_id)
        self.phases.append(phase)
