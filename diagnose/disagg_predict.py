"""What prefill/decode disaggregation would give, predicted from a `mixed` run's measured pieces
(docs/diagnosis.md, "Prediction: disaggregation"). Pure: `predict_disagg(DisaggInputs)` reads
numbers only, so benchmarks and tests call it with their own.

The pieces:
- the engine's step cost, `step_ms = fixed + per_prefill_token·P + per_decode_token·D`, least
  squares over the run's steps (`fit_mixed_steps`);
- the interference: the time per output token that prefills sharing decode steps add
  (measured TPOT − what pure decode steps and the host around them cost);
- the KV hop: `2 · layers · KV heads · head dim · dtype bytes · prompt tokens` over the link's
  bandwidth, plus its round trip;
- the handoff wait (prefill done → transfer → first decode step): measured when a disagg run is
  given, otherwise estimated as half a decode step (a request handed over mid-step waits for the
  step boundary) and labelled `estimated`;
- `cores_shared`: how much slower one engine's step runs beside the other worker (1 on two
  devices; about 2 on a 2-core host where both engines use every core): a decode step pays it
  in full, a prefill step by the decode worker's busy share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

WIN_MARGIN = 1.05  # a variant "wins" only by more than this factor (goodput or TPOT p50)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2, "bf16": 2}
# Idle-transport figures used when no measured one is given (the calibration's round trips on
# the 2-core dev machine; bandwidths of a local bulk stream, an estimate, labelled as such).
DEFAULT_LINKS: dict[str, dict[str, float]] = {
    "uds": {"rtt_ms": 0.18, "bandwidth_mb_s": 800.0},
    "shm": {"rtt_ms": 0.05, "bandwidth_mb_s": 4000.0},
    "tcp": {"rtt_ms": 0.18, "bandwidth_mb_s": 600.0},
    "relay": {"rtt_ms": 0.28, "bandwidth_mb_s": 300.0},
}


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: str) -> int:
    """K and V of every layer for one token."""
    return 2 * num_layers * num_kv_heads * head_dim * DTYPE_BYTES.get(dtype, 4)


@dataclass(slots=True, frozen=True)
class MixedFit:
    """step_ms = fixed_ms + per_prefill_token_ms·P + per_decode_token_ms·D."""

    fixed_ms: float
    per_prefill_token_ms: float
    per_decode_token_ms: float
    num_steps: int
    r2: float

    def at(self, prefill_tokens: float, decode_tokens: float) -> float:
        return (
            self.fixed_ms
            + self.per_prefill_token_ms * prefill_tokens
            + self.per_decode_token_ms * decode_tokens
        )


def fit_mixed_steps(points: Sequence[tuple[float, float, float]]) -> MixedFit | None:
    """Least squares over (prefill tokens, decode tokens, engine ms) of each step; None without
    both prefill and decode-only steps (nothing to tell the two costs apart). Negative
    coefficients (noise) are clipped to 0 and the rest refitted."""
    import numpy as np

    rows = [(p, d, y) for p, d, y in points if p + d > 0]
    if not any(p > 0 for p, _, _ in rows) or not any(p == 0 for p, _, _ in rows):
        return None
    x = np.asarray([[1.0, p, d] for p, d, _ in rows])
    y = np.asarray([r[2] for r in rows])
    keep = [0, 1, 2]
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        negative = [k for k, c in zip(keep, coef, strict=True) if c < 0]
        if not negative:
            break
        keep = [k for k in keep if k not in negative]
        if not keep:
            return None
    full = np.zeros(3)
    full[keep] = coef
    fitted = x @ full
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - fitted) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return MixedFit(float(full[0]), float(full[1]), float(full[2]), len(rows), r2)


@dataclass(slots=True, frozen=True)
class LinkSpec:
    """The KV hop of one disagg variant: transport, idle round trip, bandwidth, emulated delay
    (one way, each direction) and rate (Mbit/s, 0 = none)."""

    name: str
    transport: str = "uds"
    rtt_ms: float | None = None
    bandwidth_mb_s: float | None = None
    delay_ms: float = 0.0
    rate_mbit: float = 0.0
    placement: str = "disagg"

    def transfer_ms(self, num_bytes: float) -> tuple[float, bool]:
        """(ms to move num_bytes, whether rtt and bandwidth were measured)."""
        default = DEFAULT_LINKS.get(self.transport, DEFAULT_LINKS["tcp"])
        measured = self.rtt_ms is not None and self.bandwidth_mb_s is not None
        rtt = self.rtt_ms if self.rtt_ms is not None else default["rtt_ms"]
        bandwidth = self.bandwidth_mb_s or default["bandwidth_mb_s"]
        ms = rtt + 2 * self.delay_ms + num_bytes / (bandwidth * 1e6) * 1e3
        if self.rate_mbit > 0:
            ms += num_bytes * 8 / (self.rate_mbit * 1e6) * 1e3
        return ms, measured


@dataclass(slots=True)
class DisaggInputs:
    """A mixed run's measured pieces (times in ms)."""

    fit: MixedFit
    prompt_tokens: float  # mean per request
    output_tokens: float  # mean per request
    decode_batch: float  # mean decode tokens per decode-only step
    host_ms_per_step: float  # worker overhead + hop + scheduler gap per decode step
    prefill_steps_per_request: float  # chunks of a prompt (1 when not chunked)
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    queue_p50_ms: float
    request_rate: float  # completed requests/s of the mixed run
    duration_s: float
    kv_bytes_per_token: float
    is_closed_loop: bool = True
    # per request of the mixed run, for goodput: (ttft_ms, tpot_ms or None)
    requests: list[tuple[float, float | None]] = field(default_factory=list)
    slo: dict[str, float] = field(default_factory=dict)
    cores_shared: float = 1.0  # slowdown of a step while the other worker computes (1: no sharing)
    handoff_wait_ms: float | None = None  # measured on a disagg run; None: estimated
    first_token_after_transfer: bool = False  # the first token waits for the KV hop too
    pure_decode_ms: float | None = None  # measured decode-only step (else from the fit)
    # measured from the steps (share of decode steps with a prefill × their extra time); None:
    # the residual TPOT p50 − (decode step + host)
    interference_ms_per_token: float | None = None


def _share(busy_ms_per_s: float) -> float:
    return max(0.0, min(1.0, busy_ms_per_s / 1e3))


def predict_disagg(inputs: DisaggInputs, links: Sequence[LinkSpec]) -> dict[str, Any]:
    """For each link (one disagg variant each): TTFT p50/p99, TPOT p50, goodput, and the pieces;
    plus the mixed run's own figures, the measured interference, and which placement should win
    (highest goodput, then lowest TPOT p50) and why."""
    i = inputs
    fit = i.fit
    n_after_first = max(1.0, i.output_tokens - 1)
    pure_decode_ms = i.pure_decode_ms if i.pure_decode_ms is not None else fit.at(0, i.decode_batch)
    decode_cycle_ms = pure_decode_ms + i.host_ms_per_step
    interference_ms = (
        i.interference_ms_per_token
        if i.interference_ms_per_token is not None
        else max(0.0, i.tpot_p50_ms - decode_cycle_ms)
    )
    chunks = max(1.0, i.prefill_steps_per_request)
    pure_prefill_ms = chunks * fit.fixed_ms + fit.per_prefill_token_ms * i.prompt_tokens
    # busy shares of each worker at the mixed run's request rate (what the other one shares)
    prefill_busy = _share(i.request_rate * pure_prefill_ms)
    decode_steps_per_s = i.request_rate * n_after_first / max(1.0, i.decode_batch)
    decode_busy = _share(decode_steps_per_s * pure_decode_ms)
    slow = max(1.0, i.cores_shared)
    # A decode step is many small parallel regions: on shared cores it stalls whenever the
    # other engine's threads hold a core, busy or spinning, not only while a prefill runs.
    # Measured on 2 cores (benchmarks/results/disagg.json, decode-heavy): the prefill worker
    # busy a few % of the time, disagg's TPOT p50 was 2.5x mixed's. So the full factor.
    decode_factor = slow
    prefill_factor = 1.0 + decode_busy * (slow - 1.0)
    handoff_ms = i.handoff_wait_ms if i.handoff_wait_ms is not None else 0.5 * decode_cycle_ms
    kv_bytes = i.kv_bytes_per_token * i.prompt_tokens
    # what the mixed run's prefill steps cost beyond a pure prefill: the decodes they carried
    mixed_prefill_ms = (
        chunks * i.host_ms_per_step + fit.at(i.prompt_tokens / chunks, i.decode_batch) * chunks
    )
    # the measured TTFT without the decodes its prefill steps carried, the prefill slowed by
    # the decode worker beside it
    decodes_in_prefill_ms = chunks * fit.per_decode_token_ms * i.decode_batch
    ttft_base = i.ttft_p50_ms - decodes_in_prefill_ms + pure_prefill_ms * (prefill_factor - 1.0)
    predictions = {}
    for link in links:
        transfer_ms, measured_link = link.transfer_ms(kv_bytes)
        # the measured TPOT without the prefills' share, the decode step slowed by the prefill
        # worker beside it, and the KV hop and handoff spread over the request's tokens
        tpot = i.tpot_p50_ms - interference_ms + pure_decode_ms * (decode_factor - 1.0)
        tpot += (transfer_ms + handoff_ms) / n_after_first
        ttft = ttft_base + ((transfer_ms + handoff_ms) if i.first_token_after_transfer else 0.0)
        ttft_scale = ttft / i.ttft_p50_ms if i.ttft_p50_ms > 0 else 1.0
        e2e_mixed = i.ttft_p50_ms + i.tpot_p50_ms * n_after_first
        e2e = ttft + tpot * n_after_first
        rate_scale = e2e_mixed / e2e if (i.is_closed_loop and e2e > 0) else 1.0
        goodput = _goodput(i, ttft_scale, tpot - i.tpot_p50_ms, rate_scale)
        predictions[link.name] = {
            "placement": link.placement,
            "ttft_p50_ms": round(ttft, 3),
            "ttft_p99_ms": round(i.ttft_p99_ms * ttft_scale, 3),
            "tpot_p50_ms": round(tpot, 3),
            "goodput": round(goodput, 4),
            "pieces": {
                "pure_decode_step_ms": round(pure_decode_ms, 3),
                "decode_factor": round(decode_factor, 3),
                "pure_prefill_ms": round(pure_prefill_ms, 3),
                "prefill_factor": round(prefill_factor, 3),
                "kv_bytes_per_request": int(kv_bytes),
                "kv_transfer_ms": round(transfer_ms, 3),
                "kv_link": "measured" if measured_link else "estimated",
                "handoff_wait_ms": round(handoff_ms, 3),
                "handoff_wait": "measured" if i.handoff_wait_ms is not None else "estimated",
                "link": {
                    "transport": link.transport,
                    "delay_ms": link.delay_ms,
                    "rate_mbit": link.rate_mbit,
                },
            },
        }
    mixed = {
        "placement": "mixed",
        "ttft_p50_ms": round(i.ttft_p50_ms, 3),
        "ttft_p99_ms": round(i.ttft_p99_ms, 3),
        "tpot_p50_ms": round(i.tpot_p50_ms, 3),
        "goodput": round(_goodput(i, 1.0, 0.0, 1.0), 4),
    }
    winner, why = _winner(mixed, predictions, interference_ms, i, decode_factor)
    return {
        "mixed": mixed,
        "variants": predictions,
        "interference": {
            "ms_per_token": round(interference_ms, 3),
            "share_tpot": round(interference_ms / i.tpot_p50_ms, 4) if i.tpot_p50_ms > 0 else 0,
            "pure_decode_cycle_ms": round(decode_cycle_ms, 3),
            "mixed_prefill_step_ms": round(mixed_prefill_ms / chunks, 3),
        },
        "cores_shared": slow,
        "busy": {"prefill_worker": round(prefill_busy, 3), "decode_worker": round(decode_busy, 3)},
        "expected_winner": winner,
        "why": why,
    }


def _goodput(i: DisaggInputs, ttft_scale: float, tpot_shift_ms: float, rate_scale: float) -> float:
    """The mixed run's requests with TTFT scaled and TPOT shifted as predicted, counted against
    the SLO, at the predicted request rate."""
    if not i.requests or i.duration_s <= 0:
        return i.request_rate * rate_scale
    good = 0
    for ttft, tpot in i.requests:
        ok = "ttft_ms" not in i.slo or ttft * ttft_scale <= i.slo["ttft_ms"]
        if tpot is not None and "tpot_ms" in i.slo:
            ok = ok and tpot + tpot_shift_ms <= i.slo["tpot_ms"]
        if "e2e_ms" in i.slo and tpot is not None:
            e2e = ttft * ttft_scale + (tpot + tpot_shift_ms) * max(1.0, i.output_tokens - 1)
            ok = ok and e2e <= i.slo["e2e_ms"]
        good += ok
    return good / i.duration_s * rate_scale


def _winner(
    mixed: dict[str, Any],
    predictions: dict[str, dict[str, Any]],
    interference_ms: float,
    i: DisaggInputs,
    decode_factor: float,
) -> tuple[str, str]:
    candidates = {"mixed": mixed, **predictions}
    best = max(candidates, key=lambda k: (candidates[k]["goodput"], -candidates[k]["tpot_p50_ms"]))
    b = candidates[best]
    is_clear = b["goodput"] > WIN_MARGIN * mixed["goodput"] or (
        b["tpot_p50_ms"] * WIN_MARGIN < mixed["tpot_p50_ms"]
    )
    if best != "mixed" and not is_clear:  # within the prediction's own error: no change pays
        best, b = "mixed", mixed
    if best == "mixed":
        why = (
            f"prefills add {interference_ms:.2f} ms per output token in mixed steps, but "
            f"separate workers cost more: on shared cores (cores_shared {i.cores_shared:g}) each "
            f"decode step runs {decode_factor:.2f}x slower while a prefill runs, and the KV hop "
            "and handoff are paid per request"
        )
    else:
        why = (
            f"{best}: goodput {b['goodput']:.2f} vs mixed {mixed['goodput']:.2f} req/s, TPOT p50 "
            f"{b['tpot_p50_ms']:.2f} vs {mixed['tpot_p50_ms']:.2f} ms: decodes stop paying the "
            f"{interference_ms:.2f} ms per token that prefills add in mixed steps, more than the "
            f"KV hop ({b['pieces']['kv_transfer_ms']:.2f} ms) and handoff "
            f"({b['pieces']['handoff_wait_ms']:.2f} ms, {b['pieces']['handoff_wait']}) cost"
        )
    return best, why
