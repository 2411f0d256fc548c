"""The core's per-request state, shared with the collaborators it calls (swap.py, handoff.py,
run_ahead.py) as vLLM's scheduler shares its Request with its KV connector."""

from __future__ import annotations

from dataclasses import dataclass

from services.scheduler.request import Request


@dataclass(slots=True, eq=False)
class Sequence:
    """One unfinished request in a core. Its tokens are the prompt followed by the output so far."""

    req: Request
    seq_id: int
    is_running: bool = False
    num_computed: int = 0  # tokens whose KV is in the worker's cache
    num_prefill_tokens: int = 0  # tokens to (re)compute before decoding, fixed at admission

    @property
    def num_tokens(self) -> int:
        return len(self.req.prompt_token_ids) + len(self.req.output_token_ids)

    @property
    def is_prefill(self) -> bool:
        return self.num_computed < self.num_prefill_tokens

    @property
    def last_token(self) -> int:
        req = self.req
        return req.output_token_ids[-1] if req.output_token_ids else req.prompt_token_ids[-1]

    def tokens(self, start: int, stop: int) -> list[int]:
        prompt = self.req.prompt_token_ids
        return (prompt + self.req.output_token_ids)[start:stop]

    @property
    def priority(self) -> tuple[float, int]:
        """Older requests first; the largest value is the first to be preempted."""
        return (self.req.arrival_s, self.seq_id)

    def recompute(self) -> None:
        """Its KV is gone (or never arrived): every token runs again once it is admitted."""
        self.num_computed = 0
        self.num_prefill_tokens = 0
