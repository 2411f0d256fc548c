"""The prediction (written before the first run) and the notes that set benchmarks/hop_cost.py's
results against it and against DESIGN.md's "Measured on the machines here" table."""

from __future__ import annotations

from typing import Any

PREDICTION = (
    "Before running, on the 2-core CI machine: a direct call ~1-3 µs; gRPC unary ~350 µs and a "
    "bidi message round trip ~160 µs (DESIGN.md: 340-400 and 150-165 µs), UDS within 10% of TCP; "
    "the 32-sequence step (~3 KB request) adding a few tens of µs of protobuf work over the "
    "1-sequence one; the relay adding 2 x delay plus ~100-200 µs (two thread hand-offs per "
    "direction, a third process on 2 cores) over plain TCP; a Ray actor call ~620 µs "
    "(DESIGN.md), i.e. more than a gRPC bidi message and about two unary calls."
)

# DESIGN.md, "Measured on the machines here", CI/dev machine column (p50, µs)
DESIGN_P50_US = {"unary": (340.0, 400.0), "bidi": (150.0, 165.0), "ray": (620.0, 620.0)}


def _p50(rows: list[dict[str, Any]], name: str) -> float | None:
    for row in rows:
        if row["name"] == name:
            return float(row["p50_us"])
    return None


def _vs_design(measured: float | None, low: float, high: float) -> str:
    if measured is None:
        return "not measured"
    design = f"{low:.0f} µs" if low == high else f"{low:.0f}-{high:.0f} µs"
    if low * 0.8 <= measured <= high * 1.2:
        return f"{measured:.0f} µs, within 20% of DESIGN.md's {design}"
    return f"{measured:.0f} µs vs DESIGN.md's {design} ({measured / high:.1f} x)"


def build_notes(rows: list[dict[str, Any]]) -> str:
    """Prediction vs result in a few sentences, computed from the p50s of `rows`."""
    parts = []
    for payload in ("step32", "step1"):
        direct = _p50(rows, f"direct/{payload}")
        tcp_unary, tcp_bidi = _p50(rows, f"tcp/unary/{payload}"), _p50(rows, f"tcp/bidi/{payload}")
        uds_unary, uds_bidi = _p50(rows, f"uds/unary/{payload}"), _p50(rows, f"uds/bidi/{payload}")
        ray_call = _p50(rows, f"ray/call/{payload}")
        parts.append(
            f"{payload}: direct {direct} µs; TCP unary "
            f"{_vs_design(tcp_unary, *DESIGN_P50_US['unary'])}; TCP bidi "
            f"{_vs_design(tcp_bidi, *DESIGN_P50_US['bidi'])}; UDS unary {uds_unary} / bidi "
            f"{uds_bidi} µs; Ray {_vs_design(ray_call, *DESIGN_P50_US['ray'])}."
        )
        for delay_ms in (0.0, 0.25, 1.0):
            relay_bidi = _p50(rows, f"tcp+relay{delay_ms:g}ms/bidi/{payload}")
            if relay_bidi is not None and tcp_bidi is not None:
                overhead_us = relay_bidi - tcp_bidi - 2 * delay_ms * 1e3
                parts.append(
                    f"{payload} relay {delay_ms:g} ms: bidi {relay_bidi:.0f} µs = TCP + 2 x delay "
                    f"+ {overhead_us:.0f} µs of relay overhead."
                )
    step32_bidi, step1_bidi = _p50(rows, "tcp/bidi/step32"), _p50(rows, "tcp/bidi/step1")
    if step32_bidi is not None and step1_bidi is not None:
        parts.append(
            f"Payload: the 32-sequence step costs {step32_bidi - step1_bidi:.0f} µs more than the "
            "1-sequence one per bidi round trip (protobuf encode/decode of a ~3 KB request and its answer)."
        )
    unary, bidi = _p50(rows, "tcp/unary/step32"), _p50(rows, "tcp/bidi/step32")
    if unary is not None and bidi is not None:
        parts.append(
            f"Protocol: a message on an open bidi stream costs {bidi / unary:.2f} x a unary call "
            "(no per-call HTTP/2 stream setup, headers and trailers): the per-step protocol, "
            "not only the placement, sets a hop's cost."
        )
    return " ".join(parts)
