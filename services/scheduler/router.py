"""Which worker replica takes a request: pure scoring over what each replica reports.

Every policy sees the same candidates (healthy replicas) and the same figures, so a span can show
the alternatives whatever the policy:

- load_tokens: tokens the replica still has to run (queued prompts, prefill left, outputs left);
- hit_tokens: leading prompt tokens whose KV the replica already holds (prefix-cache hits);
- network_ms: the link's cost for this request = measured hop round trip x expected steps
  (one per output token) + prompt bytes / link bandwidth (when the link's bandwidth is known).

`network_aware` (the default) adds them in one unit, milliseconds of the replica's time:
`(load_tokens + prompt_tokens - hit_tokens) / tokens_per_ms + network_ms`, where tokens_per_ms is
the replica's measured step throughput (a prior before its first step). `least_load` minimises
load_tokens, `prefix` maximises hit_tokens (ties: least load), `round_robin` takes turns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.config import ROUTING_POLICIES
from tracing import schema

PROMPT_BYTES_PER_TOKEN = 4  # int32 token ids on the scheduler->worker hop
PRIOR_TOKENS_PER_MS = 1.0  # before a replica has run a step


@dataclass(slots=True)
class ReplicaView:
    """One candidate replica as the router sees it."""

    index: int
    load_tokens: int
    hit_tokens: int
    hop_rtt_ms: float
    tokens_per_ms: float
    link_bandwidth_mbps: float = 0.0  # 0: unknown, the transfer term is left out


@dataclass(slots=True)
class Candidate:
    index: int
    load_tokens: int
    hit_tokens: int
    network_ms: float
    score: float  # lower is better, for every policy


@dataclass(slots=True)
class Decision:
    chosen: int
    policy: str
    candidates: list[Candidate]

    def span_attributes(self) -> dict[str, str | int]:
        """What a trace shows about the choice: the replica, the policy, every alternative."""
        table = [
            {
                "replica": c.index,
                "score": round(c.score, 3),
                "load_tokens": c.load_tokens,
                "hit_tokens": c.hit_tokens,
                "network_ms": round(c.network_ms, 3),
            }
            for c in self.candidates
        ]
        return {
            schema.REPLICA: self.chosen,
            schema.ROUTING: self.policy,
            schema.ROUTING_CANDIDATES: json.dumps(table, separators=(",", ":")),
        }


class Router:
    def __init__(self, policy: str = "network_aware") -> None:
        if policy not in ROUTING_POLICIES:
            raise ValueError(
                f"routing must be one of {', '.join(ROUTING_POLICIES)}, got {policy!r}"
            )
        self.policy = policy
        self._next = 0  # round robin's turn

    def choose(
        self, replicas: list[ReplicaView], num_prompt_tokens: int, max_tokens: int
    ) -> Decision:
        assert replicas, "no replica to route to"
        candidates = [self._candidate(r, num_prompt_tokens, max_tokens) for r in replicas]
        if self.policy == "round_robin":
            chosen = replicas[self._next % len(replicas)].index
            self._next += 1
        else:
            chosen = min(candidates, key=lambda c: (c.score, c.index)).index
        return Decision(chosen, self.policy, candidates)

    def _candidate(self, r: ReplicaView, num_prompt_tokens: int, max_tokens: int) -> Candidate:
        network_ms = r.hop_rtt_ms * max_tokens
        if r.link_bandwidth_mbps > 0:
            prompt_bits = num_prompt_tokens * PROMPT_BYTES_PER_TOKEN * 8
            network_ms += prompt_bits / (r.link_bandwidth_mbps * 1e3)
        if self.policy == "least_load":
            score = float(r.load_tokens)
        elif self.policy == "prefix":
            score = -r.hit_tokens + r.load_tokens * 1e-6  # ties go to the least loaded
        else:  # network_aware; round_robin records it too
            tokens_per_ms = r.tokens_per_ms or PRIOR_TOKENS_PER_MS
            work_tokens = r.load_tokens + num_prompt_tokens - r.hit_tokens
            score = work_tokens / tokens_per_ms + network_ms
        return Candidate(r.index, r.load_tokens, r.hit_tokens, network_ms, score)
