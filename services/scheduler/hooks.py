"""The points where the scheduler core calls its variants (swap.py, handoff.py), as vLLM's
scheduler calls its KV connector. Each default is what the base policy does alone: nothing.

The core keeps the hooks that are on in a list and calls each at its point; a plain core's list
is empty. At the per-token points (`takes_after_sample`, `runs_elsewhere`) it calls only the hooks
that override them.
"""

from __future__ import annotations

from services.scheduler.request import Batch
from services.scheduler.sequence import Sequence


class CoreHooks:
    def runs_elsewhere(self, seq: Sequence) -> bool:
        """The request goes on in another core: this one neither expires nor counts it."""
        return False

    def holds_kv(self, seq: Sequence) -> bool:
        """A waiting sequence whose KV this hook keeps outside the cache (it resumes, not
        recomputes)."""
        return False

    def restore(self, seq: Sequence, table: list[int], batch: Batch) -> None:
        """A sequence `holds_kv` says is kept got fresh blocks `table`: bring its KV back into
        them before `batch` runs."""
        raise NotImplementedError

    def on_preempt(self, seq: Sequence) -> bool:
        """A running sequence is preempted (its blocks are freed next). True: this hook keeps
        its KV, so it resumes where it was."""
        return False

    def takes_after_sample(self, seq: Sequence) -> bool:
        """A step sampled an unfinished sequence's token. True: the hook takes it out of the
        running set (its blocks are the hook's to free)."""
        return False

    def before_send(self, batch: Batch) -> None:
        """The batch goes to the worker now."""

    def on_unanswered(self, batch: Batch) -> None:
        """The batch was never answered: its sequences run again."""

    def drop(self, seq: Sequence) -> bool:
        """The request ends while not running: free what the hook holds of it. True: it was the
        hook's (not in the waiting queue)."""
        return False

    def on_worker_lost(self) -> list[Sequence]:
        """The worker restarted with an empty cache; returns the sequences to recompute first."""
        return []
