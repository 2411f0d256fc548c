"""What one changed setting would do, predicted from a run's spans and its step-time fit
(docs/diagnosis.md, "Predictions"). Each function returns `(metric, ratio)` — `metric` a key of
summary.json's `vs_baseline`, `ratio` = predicted / measured — or a reason it cannot predict.

The pieces: the mean decode-step cycle (engine + worker overhead + hop + scheduler gap), the fit
`engine step = fixed + per_token · tokens`, the decode steps per output token, the closed loop's
concurrency, the dtype's bytes, and the link's wire (calibrated)."""

from __future__ import annotations

from dataclasses import dataclass

from diagnose.signals import Signals

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(slots=True, frozen=True)
class Prediction:
    metric: str | None = None
    ratio: float | None = None
    why_not: str = ""  # set when there is no prediction
    also: tuple[tuple[str, float], ...] = ()  # more (metric, ratio) the same model predicts

    def to_json(self) -> dict[str, object]:
        if self.metric is None or self.ratio is None:
            return {"predicted": None, "not_predicted": self.why_not}
        document: dict[str, object] = {
            "predicted": {"metric": self.metric, "ratio": round(self.ratio, 4)}
        }
        if self.also:
            document["also_predicted"] = [
                {"metric": metric, "ratio": round(ratio, 4)} for metric, ratio in self.also
            ]
        return document


def no(why: str) -> Prediction:
    return Prediction(why_not=why)


def decode_cycle_ms(s: Signals, batch: float) -> float | None:
    """One decode step's cycle at `batch` sequences: where the run's decode steps ran at batch
    sizes different enough, the fit of the whole cycle against the batch size (engine and the
    host's per-sequence work alike); otherwise the measured cycle, its engine part moved along
    the step-time fit's per-token slope (a prompt token's cost stands for a sequence's, and the
    host's work per step is taken as fixed)."""
    if s.cycle is None:
        return None
    if s.cycle_fit is not None:
        return s.cycle_fit.at(batch)
    per_token = s.fit.per_token_ms if s.fit else 0.0
    return s.cycle.cycle_ms + per_token * (batch - s.cycle.mean_batch_size)


def prefill_ms_per_step(s: Signals, batch: float) -> float:
    """The prompt work decode steps carry at `batch` sequences (continuous batching: each
    sequence brings its prompt once per request): the run's prompt tokens per decode step per
    sequence x the cost of a prompt token in a mixed step (mixed step - decode-only step, per
    prompt token; the fit's slope without mixed steps)."""
    if s.cycle is None or not s.mixed_step_share or not s.mixed_step_prefill_tokens:
        return 0.0
    tokens_per_seq = (
        s.mixed_step_share * s.mixed_step_prefill_tokens / max(1.0, s.cycle.mean_batch_size)
    )
    if s.mixed_step_ms is not None:
        cost_ms = max(0.0, s.mixed_step_ms - s.cycle.engine_ms) / s.mixed_step_prefill_tokens
    else:
        cost_ms = s.fit.per_token_ms if s.fit else 0.0
    return batch * tokens_per_seq * cost_ms


def max_num_seqs(s: Signals, new: int) -> Prediction:
    """Closed loop: tokens/s follows batch / step time, the step being the decode cycle at that
    batch plus the prompt work it carries; TPOT follows the step time. Below the concurrency the batch stays full (the queue
    remains); at it, a request is out of the batch for its prefill step and the one its client
    takes to send the next, so the batch is concurrency x (out - 1) / (out + 1)."""
    if s.cycle is None:
        return no("no decode steps measured")
    if not s.concurrency:
        return no("open loop: the batch a larger limit reaches depends on the arrival rate")
    batch = s.cycle.mean_batch_size
    new_batch = float(new)
    if new >= s.concurrency:
        out = max(2.0, s.mean_output_tokens)
        new_batch = s.concurrency * (out - 1) / (out + 1)
    decode_now, decode_new = decode_cycle_ms(s, batch) or 0.0, decode_cycle_ms(s, new_batch) or 0.0
    now_ms = decode_now + prefill_ms_per_step(s, batch)
    new_ms = decode_new + prefill_ms_per_step(s, new_batch)
    if now_ms <= 0 or new_ms <= 0 or batch <= 0:
        return no("no decode cycle measured")
    # A running sequence gets a token per step: its TPOT follows the steps of its decode window.
    # With every request in flight running and every output equally long, a closed loop runs in
    # waves: the requests end in the same step, the next ones' prompts run before their decodes
    # (in their TTFT), so the decode window holds the decode cycle alone.
    is_waves = new >= s.concurrency and s.is_output_len_uniform
    tpot = ("tpot_ms.p50", (decode_new if is_waves else new_ms) / now_ms)
    return Prediction("output_tok_s", (new_batch / new_ms) / (batch / now_ms), also=(tpot,))


def _cycle_ratio(s: Signals, saved_ms_per_step: float) -> Prediction:
    """TPOT's ratio when each decode step's cycle loses `saved_ms_per_step`: a share of the mean
    cycle (means on both sides: a p50 TPOT against mean step times would mix two figures)."""
    if s.cycle is None or s.cycle.cycle_ms <= 0:
        return no("no decode steps measured")
    share = min(1.0, max(0.0, saved_ms_per_step / s.cycle.cycle_ms))
    return Prediction("tpot_ms.p50", max(0.05, 1.0 - share))


def host_per_step(s: Signals, now_steps: int, new_steps: int) -> Prediction:
    """Multi-step decoding: the worker overhead, hop and scheduler gap of a round trip are paid
    once per run of up to `new_steps` decode steps instead of `now_steps`. A step that carries a
    prompt chunk still runs alone (services/scheduler/run_ahead.py): such steps,
    `mixed_step_share` of the decode steps, save nothing."""
    if s.cycle is None:
        return no("no decode steps measured")
    host_ms = s.cycle.worker_host_ms + s.cycle.hop_ms + s.cycle.gap_ms
    in_runs = 1.0 - min(1.0, max(0.0, s.mixed_step_share))
    return _cycle_ratio(s, host_ms * in_runs * (1.0 - now_steps / new_steps))


def dtype_bytes(s: Signals, new_dtype: str) -> Prediction:
    """On a GPU the fixed part of a decode step is reading the weights: it scales with their
    bytes. On a CPU it is as much the ops' own overhead, and bf16 arithmetic needs AVX512-BF16
    or AMX: not predicted there."""
    if not str(s.settings.get("device") or "cpu").startswith("cuda"):
        return no("on a CPU the step's fixed part is also per-op overhead, and bf16 matrix "
                  "multiplies need AVX512-BF16 or AMX: the spans do not say which")  # fmt: skip
    now = str(s.settings.get("dtype") or "float32")
    if s.fit is None:
        return no("no step-time fit (one token count only)")
    scale = DTYPE_BYTES.get(new_dtype, 4) / DTYPE_BYTES.get(now, 4)
    return _cycle_ratio(s, min(s.fit.fixed_ms, s.cycle.engine_ms if s.cycle else 0.0) * (1 - scale))


def link_change(s: Signals, delta_ms_per_step: float) -> Prediction:
    """A link that costs `delta` more (or less) per round trip: TPOT moves by it per step."""
    if s.tpot_p50_ms <= 0:
        return no("no TPOT measured")
    tpot_ms = s.tpot_p50_ms + delta_ms_per_step * s.decode_steps_per_token
    return Prediction("tpot_ms.p50", max(0.05, tpot_ms / s.tpot_p50_ms))
