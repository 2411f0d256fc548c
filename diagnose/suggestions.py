"""What to try next for each bottleneck type, read against the deployment in force: never a
setting already in force, always a concrete flag value (`--max-num-seqs 16`), and each with
`predicted: {metric, ratio}` (diagnose/predict.py) or `not_predicted` saying why.

A suggestion: {method, switch, factor, value, expected_effect, predicted | not_predicted}, where
`factor: value` is the plan key and value `hopscope experiment next` tests (None for advice that
is not one serve setting). Predicted suggestions come first."""

from __future__ import annotations

import os
from typing import Any

from diagnose.network import HopSplit
from diagnose.predict import Prediction, dtype_bytes, host_per_step, link_change, max_num_seqs, no
from diagnose.signals import Signals

MULTI_NODE_PLACEMENTS = ("split", "remote", "disagg-split")


def in_force(s: Signals, key: str) -> Any:
    """The setting's value in the run's deployment; its default where the run does not say (a
    bench file records Describe only: placement, batching, model, dtype, device)."""
    if key in s.settings:
        return s.settings[key]
    from services.config import DEFAULTS, section_of_setting

    section = section_of_setting().get(key)
    return getattr(getattr(DEFAULTS, section), key) if section else None


def switch(key: str, value: Any) -> str:
    option = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return option if value else "--no-" + option[2:]
    return f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}"


def _s(
    method: str, key: str | None, value: Any, effect: str, prediction: Prediction, text: str = ""
) -> dict[str, Any]:
    return {
        "method": method,
        "switch": text or (switch(key, value) if key else ""),
        "factor": key,
        "value": value,
        "expected_effect": effect,
        **prediction.to_json(),
    }


def suggestions_for(
    kind: str, s: Signals, splits: list[HopSplit] | None = None
) -> list[dict[str, Any]]:
    rows = [row for row in _TABLE[kind](s, splits or []) if row is not None]
    # predicted first (stable): the top suggestion is one `experiment next` can check
    return sorted(rows, key=lambda r: r.get("predicted") is None)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _larger_batch(s: Signals) -> dict[str, Any] | None:
    """--max-num-seqs up to the closed loop's concurrency, when the limit holds requests back."""
    limit = int(in_force(s, "max_num_seqs") or 0)
    if in_force(s, "batching") == "static":
        return None
    if s.concurrency:
        if limit >= s.concurrency:
            return None  # every request in flight already runs: the client's concurrency limits
        new = s.concurrency
    else:
        new = 2 * limit
    queue = f"removes up to {s.queue_p50_ms:.0f} ms of queue time (p50) per request"
    return _s("larger batch", "max_num_seqs", new, queue, max_num_seqs(s, new))


def _scheduling(s: Signals, splits: list[HopSplit]) -> list[dict[str, Any] | None]:
    rows: list[dict[str, Any] | None] = [_larger_batch(s)]
    if in_force(s, "batching") == "static":
        rows.append(
            _s(
                "continuous batching",
                "batching",
                "continuous",
                "new requests join the next step instead of waiting for the batch to end",
                no(
                    "static batches wait for their longest request: the wait depends on the "
                    "spread of output lengths, which one run does not predict"
                ),
            )
        )
    if not s.concurrency and not rows[0]:
        rows.append(
            _s(
                "admission control",
                "max_queue_len",
                max(1, int(in_force(s, "max_num_seqs") or 1)),
                "shorter TTFT for the admitted requests; the rest are refused at once",
                no("refused requests leave the measured set: not comparable"),
            )
        )
    return rows


def _network(s: Signals, splits: list[HopSplit]) -> list[dict[str, Any] | None]:
    rows: list[dict[str, Any] | None] = []
    placement = str(in_force(s, "placement") or "")
    sw = next((x for x in splits if x.per == "step"), None)
    if placement in MULTI_NODE_PLACEMENTS and sw is not None:
        # a Unix socket on one node: the link's wire drops to about the calibrated idle trip
        rows.append(
            _s(
                "co-location",
                "placement",
                "colocated",
                f"the scheduler-worker wire ({sw.wire_ms:.2f} ms per step) drops to a Unix-socket "
                "round trip",
                link_change(s, -sw.wire_ms + min(sw.wire_ms, 0.2)),
            )
        )
    rows.append(_multi_step(s, "one round trip for several decode steps"))
    return rows


def _multi_step(s: Signals, effect: str) -> dict[str, Any] | None:
    now = int(in_force(s, "num_scheduler_steps") or 1)
    if str(in_force(s, "step_encoding")) == "nested":
        return None  # multi-step needs the packed encodings
    new = 4 if now < 4 else 2 * now
    return _s(
        "fewer messages per token (multi-step decoding)",
        "num_scheduler_steps",
        new,
        f"{effect}: the worker overhead, hop and scheduler gap are paid once per {new} steps",
        host_per_step(s, now, new),
    )


def _lower_precision(s: Signals) -> dict[str, Any] | None:
    dtype = str(in_force(s, "dtype") or "float32")
    if dtype != "float32":
        return None
    new = "bfloat16"
    return _s(
        "lower precision",
        "dtype",
        new,
        "half the weight bytes read per step",
        dtype_bytes(s, new),
    )


def _memory_io(s: Signals, splits: list[HopSplit]) -> list[dict[str, Any] | None]:
    rows = [_larger_batch(s), _lower_precision(s)]
    if s.num_preemptions or (s.kv_usage is not None and s.kv_usage >= 0.9):
        mb = int(in_force(s, "kv_cache_mb") or 256)
        rows.append(
            _s(
                "larger KV cache",
                "kv_cache_mb",
                2 * mb,
                f"fewer preemptions ({s.num_preemptions or 0} now), each a prompt recomputed",
                no("a preemption's cost depends on which sequence is evicted"),
            )
        )
    return rows


def _compute(s: Signals, splits: list[HopSplit]) -> list[dict[str, Any] | None]:
    rows: list[dict[str, Any] | None] = []
    device = str(in_force(s, "device") or "cpu")
    if device.startswith("cuda"):
        for key in ("cuda_graphs", "compile"):
            if not in_force(s, key):
                rows.append(
                    _s(
                        "kernel fusion",
                        key,
                        True,
                        "shorter steps (fewer kernel launches)",
                        no("the speed-up of fused kernels is not in the spans"),
                    )
                )
    elif in_force(s, "kernels") == "torch":  # auto already runs the native kernels where built
        rows.append(
            _s(
                "native CPU kernels",
                "kernels",
                "native",
                "shorter steps",
                no(
                    "the native kernels' speed-up is measured by benchmarks/engine_bench.py, "
                    "not in the spans"
                ),
            )
        )
    if device.startswith("cuda"):
        rows.append(_lower_precision(s))
    return rows


def _host_cpu(s: Signals, splits: list[HopSplit]) -> list[dict[str, Any] | None]:
    rows = [_multi_step(s, "fewer round trips per token")]
    if int(in_force(s, "stream_interval") or 1) == 1:
        rows.append(
            _s(
                "fewer front-door messages per token",
                "stream_interval",
                4,
                "less front-door and client CPU per token; the first token still goes at once",
                no("the front door's CPU is off the step's critical path except on busy cores"),
            )
        )
    return rows


def _prefill_interference(s: Signals, splits: list[HopSplit]) -> list[dict[str, Any] | None]:
    from diagnose.signals import interference_ms_per_token

    extra = interference_ms_per_token(s)
    rows: list[dict[str, Any] | None] = []
    budget = int(in_force(s, "max_num_batched_tokens") or 0)
    chunk = max(16, int(s.mixed_step_prefill_tokens // 2)) if s.mixed_step_prefill_tokens else 256
    if not budget or chunk < budget:
        rows.append(
            _s(
                "smaller prefill chunks",
                "max_num_batched_tokens",
                chunk,
                f"each decode step shares at most {chunk} prompt tokens "
                f"({s.mixed_step_prefill_tokens:.0f} now): shorter stalls, more steps to the "
                "first token",
                no(
                    "smaller chunks spread the same prompt work over more decode steps: the "
                    "mean TPOT stays, the stalls shrink by an amount the steps' order decides"
                ),
            )
        )
    placement = str(in_force(s, "placement") or "")
    if not placement.startswith("disagg"):
        rows.append(
            _s(
                "prefill/decode disaggregation",
                "placement",
                "disagg",
                f"decode steps carry no prompt tokens: up to {extra:.2f} ms less per output "
                "token, minus the KV hop, the handoff and the cores the two workers share",
                no("see `disaggregation` (filled in from it when predicted)"),
            )
        )
    return rows


def _num_cores(s: Signals) -> int:
    return int((s.contention or {}).get("num_cores") or _cores())


def _holds_every_core(s: Signals) -> bool:
    """The engine's threads are fixed at one per core or more (`--engine-threads 0` or N >=
    cores); auto already leaves the cores other load takes."""
    threads = str(in_force(s, "engine_threads") or "auto")
    return threads == "0" or (threads.isdigit() and int(threads) >= _num_cores(s))


def oversubscribed_by(s: Signals) -> str:
    """Why the deployment asks its node for more cores than it has, by its own settings ("" when
    it does not): an engine fixed at every core beside the front door and scheduler on the same
    node, or several worker replicas on one node. Only then is the deployment's own run-queue
    wait `contention` (a setting fixes it); otherwise that wait is the price of the work that
    waited, and stays with its type (docs/diagnosis.md, "The time budget")."""
    placement = str(in_force(s, "placement") or "")
    if placement in MULTI_NODE_PLACEMENTS:
        return ""
    reasons = []
    if _num_cores(s) > 1 and _holds_every_core(s):
        threads = in_force(s, "engine_threads")
        reasons.append(f"--engine-threads {threads} holds every core beside the services")
    replicas = int(in_force(s, "worker_replicas") or 1)
    if replicas > 1:
        reasons.append(f"{replicas} worker replicas share one node's cores")
    return "; ".join(reasons)


def _contention(s: Signals, splits: list[HopSplit]) -> list[dict[str, Any] | None]:
    rows: list[dict[str, Any] | None] = []
    why = "a core's wait depends on what the processes outside the deployment do next"
    cores = _num_cores(s)
    if cores > 1 and _holds_every_core(s):
        rows.append(
            _s(
                "leave cores to the front door and scheduler",
                "engine_threads",
                cores - 1,
                "the engine's threads stop competing with the services for every core",
                no(why),
            )
        )
    replicas = int(in_force(s, "worker_replicas") or 1)
    if replicas > 1:
        rows.append(
            _s(
                "fewer co-located replicas",
                "worker_replicas",
                replicas - 1,
                "fewer engines competing for the same cores",
                no(why),
            )
        )
    if str(in_force(s, "placement") or "") not in MULTI_NODE_PLACEMENTS:
        rows.append(
            _s(
                "a placement across nodes",
                "placement",
                "split",
                "the worker gets a node's cores to itself (needs a Ray cluster of 2 nodes)",
                no("the other node's cores are not measured by this run"),
            )
        )
    return rows


_TABLE = {
    "prefill_interference": _prefill_interference,
    "scheduling": _scheduling,
    "network": _network,
    "memory_io": _memory_io,
    "compute": _compute,
    "host_cpu": _host_cpu,
    "contention": _contention,
}
