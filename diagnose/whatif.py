"""What-if for the scheduler -> worker link, from one run's spans (docs/diagnosis.md, "What-if").

Each decode step is one round trip on the link, and the scheduler sends the next step only after
the reply, so a link that costs Δ more per round trip adds Δ to every step at the batch sizes
observed:  Δ = wire(new link) − wire(observed link), wire = idle round trip of the transport
(calibrated) + 2·delay (the relay delays each direction by `--delay-ms`) + step bytes / rate.

    TPOT'  = TPOT p50 + Δ · decode steps per output token
    TTFT'  = TTFT p50 + Δ · steps between a request's arrival and its first token (median)
    tok/s' = tok/s · E2E / (E2E + Δ · steps per request)   (closed loop: the same requests in
             flight take longer each; open loop below saturation: unchanged)

Not modelled: the CPU the new placement frees or costs (a split worker gets its own cores), and
a batch that grows because requests stay longer. Both are small at the batch sizes observed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diagnose.calibrate import Calibration
from diagnose.links import HopLink, wire_ms
from diagnose.signals import Signals

DEFAULT_DELAYS_MS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
LINK_NAME = "scheduler-worker"


def _batch(s: Signals) -> float:
    return s.cycle.mean_batch_size if s.cycle else 1.0


def predict(s: Signals, calibration: Calibration | None, new_link: HopLink) -> dict[str, float]:
    """TPOT p50, TTFT p50 and output tok/s with the scheduler -> worker link replaced."""
    batch = _batch(s)
    delta_ms = wire_ms(new_link, calibration, batch) - wire_ms(s.link, calibration, batch)
    e2e_ms = s.e2e_p50_ms
    e2e_new_ms = e2e_ms + delta_ms * s.mean_steps_per_request
    tok_s = s.output_tok_s
    if s.is_closed_loop and e2e_new_ms > 0:
        tok_s = s.output_tok_s * e2e_ms / e2e_new_ms
    return {
        "delta_ms_per_step": delta_ms,
        "tpot_p50_ms": s.tpot_p50_ms + delta_ms * s.decode_steps_per_token,
        "ttft_p50_ms": s.ttft_p50_ms + delta_ms * s.steps_to_first_token_p50,
        "output_tok_s": tok_s,
    }


def link_what_if(
    s: Signals,
    calibration: Calibration | None,
    delays_ms: Sequence[float] = DEFAULT_DELAYS_MS,
    rate_mbit: float = 0.0,
) -> dict[str, Any]:
    """The `what_if` object of diagnosis.json for `hopscope cluster up --delay-ms d`."""
    rows = [predict(s, calibration, s.link.with_delay(d, rate_mbit)) for d in delays_ms]
    return {
        "link": LINK_NAME,
        "from_link": s.link.describe(),
        "delay_ms": [float(d) for d in delays_ms],
        "rate_mbit": rate_mbit,
        "tpot_p50_ms": [round(r["tpot_p50_ms"], 3) for r in rows],
        "ttft_p50_ms": [round(r["ttft_p50_ms"], 3) for r in rows],
        "output_tok_s": [round(r["output_tok_s"], 1) for r in rows],
        "placements": placement_what_if(s, calibration),
    }


def placement_what_if(s: Signals, calibration: Calibration | None) -> dict[str, dict[str, Any]]:
    """Each preset's scheduler -> worker transport, with this machine's calibrated hop costs;
    a preset whose processes differ from the run's (inproc: one process and one GIL for every
    service; disagg: two workers) is listed with `not_predicted`: the link alone does not say."""
    from deploy.placement import EDGES, PRESETS

    edge = EDGES[1]
    run_placement = str(s.settings.get("placement") or "")
    result: dict[str, dict[str, Any]] = {}
    for name, placement in PRESETS.items():
        link = HopLink(placement.transports[edge])
        why = _other_processes(run_placement, name)
        if why:
            result[name] = {"transport": link.transport, "not_predicted": why}
            continue
        row = predict(s, calibration, link)
        result[name] = {
            "transport": link.transport,
            "tpot_p50_ms": round(row["tpot_p50_ms"], 3),
            "ttft_p50_ms": round(row["ttft_p50_ms"], 3),
            "output_tok_s": round(row["output_tok_s"], 1),
        }
    return result


def _other_processes(run_placement: str, preset: str) -> str:
    """Why the link what-if does not carry from the run's placement to `preset`, or ""."""
    if preset.startswith("disagg") and not run_placement.startswith("disagg"):
        return "two workers: see `disaggregation`"
    if (preset == "inproc") != (run_placement == "inproc") and run_placement:
        return (
            "inproc runs every service in one process under one GIL, the others one process "
            "each: a run of one does not measure the other's CPU sharing (the quick plan "
            "measures inproc far slower than colocated on 2 cores)"
        )
    return ""
