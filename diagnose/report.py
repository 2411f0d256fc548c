"""Showing a diagnosis: the verdict and evidence in the terminal (rich), the what-if table, and
the TPOT-vs-delay figure (predicted line, measured points where an experiment ran them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_diagnosis(diagnosis: dict[str, Any], label: str, console: Console) -> None:
    print_verdict(diagnosis, label, console)
    _print_hops(diagnosis, console)
    _print_what_if(diagnosis["what_if"], console)
    if is_disaggregation_relevant(diagnosis):
        print_disaggregation(diagnosis.get("disaggregation"), console)
    for note in diagnosis.get("notes", []):
        console.print(f"  [dim]note: {note}[/]")


def print_verdict(diagnosis: dict[str, Any], label: str, console: Console) -> None:
    """The headline, the time budget and each finding with its suggestions (what `experiment`
    prints on stdout, terminal or not)."""
    headline = diagnosis.get("headline") or diagnosis["primary"]
    console.print(f"[bold]{label}[/]: {headline}", highlight=False)
    if budget := diagnosis.get("budget"):
        console.print(f"  time budget: {budget_line(budget)}", highlight=False)
    for finding in diagnosis["findings"]:
        console.print(
            f"  [bold]{finding['type']}[/] {finding['score']:.0%} of E2E: {finding['symptom']}",
            highlight=False,
        )
        for suggestion in finding["suggestions"][:2]:
            console.print(f"    try {suggestion_line(suggestion)}", highlight=False)


def budget_line(budget: dict[str, Any]) -> str:
    """`scheduling 86%, memory_io 11%, ..., unattributed 0%` of the mean request's E2E."""
    shares = budget.get("shares") or {}
    shown = [f"{kind} {share:.0%}" for kind, share in shares.items() if share >= 0.005]
    if "unattributed" not in {k for k, v in shares.items() if v >= 0.005}:
        shown.append(f"unattributed {shares.get('unattributed', 0.0):.0%}")
    return f"{', '.join(shown)} of the mean request's {budget.get('e2e_mean_ms', 0):.0f} ms E2E"


def suggestion_line(suggestion: dict[str, Any]) -> str:
    """`larger batch (`--max-num-seqs 16`): ...; predicted output_tok_s 6.12x`."""
    line = f"{suggestion['method']} (`{suggestion['switch']}`): {suggestion['expected_effect']}"
    predicted = suggestion.get("predicted")
    if predicted:
        line += f"; predicted {predicted['metric']} {predicted['ratio']:.2f}x"
    elif suggestion.get("not_predicted"):
        line += f"; not predicted: {suggestion['not_predicted']}"
    return line


def is_disaggregation_relevant(diagnosis: dict[str, Any]) -> bool:
    """The disaggregation prediction is shown where prefill interference is a finding."""
    return any(f["type"] == "prefill_interference" for f in diagnosis.get("findings", []))


def disaggregation_lines(prediction: dict[str, Any] | None) -> list[str]:
    """The prediction for disagg / disagg-split as lines (terminal and experiment report)."""
    if not prediction or "variants" not in prediction:
        return list((prediction or {}).get("notes", []))
    mixed = prediction["mixed"]
    lines = [
        (
            f"mixed (measured): TTFT p50 {mixed['ttft_p50_ms']:.1f} ms, p99 {mixed['ttft_p99_ms']:.1f}"
            f" ms, TPOT p50 {mixed['tpot_p50_ms']:.2f} ms, goodput {mixed['goodput']:.2f} req/s"
        )
    ]
    for name, p in prediction["variants"].items():
        pieces = p["pieces"]
        lines.append(
            f"{name} (predicted): TTFT p50 {p['ttft_p50_ms']:.1f} ms, p99 {p['ttft_p99_ms']:.1f} "
            f"ms, TPOT p50 {p['tpot_p50_ms']:.2f} ms, goodput {p['goodput']:.2f} req/s; KV "
            f"{pieces['kv_bytes_per_request'] / 1e6:.2f} MB in {pieces['kv_transfer_ms']:.2f} ms "
            f"({pieces['kv_link']}), handoff {pieces['handoff_wait_ms']:.2f} ms "
            f"({pieces['handoff_wait']})"
        )
    lines.append(f"expected to win: {prediction['expected_winner']} — {prediction['why']}")
    return lines


def print_disaggregation(prediction: dict[str, Any] | None, console: Console) -> None:
    lines = disaggregation_lines(prediction)
    if not lines:
        return
    console.print("[bold]prefill/decode disaggregation, predicted from this run[/]")
    for line in lines:
        console.print(f"  {line}", highlight=False)


def _print_hops(diagnosis: dict[str, Any], console: Console) -> None:
    hops = diagnosis.get("decomposition", {}).get("hops", {})
    if not hops:
        return
    table = Table(title="hops: CLIENT − SERVER = wire + wait", title_justify="left")
    for column in ("hop", "transport", "per", "hop ms", "wire ms", "wait ms"):
        table.add_column(column, justify="right" if "ms" in column else "left", no_wrap=True)
    for name, hop in hops.items():
        table.add_row(
            name.removeprefix("network."),
            hop["transport"],
            hop["per"],
            f"{hop['hop_ms']:.3f}",
            f"{hop['wire_ms']:.3f}",
            f"{hop['wait_ms']:.3f}",
        )
    console.print(table)


def _print_what_if(what_if: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"what if the {what_if['link']} link had delay d (hopscope cluster up --delay-ms d)",
        title_justify="left",
    )
    for column in ("delay ms", "TPOT p50 ms", "TTFT p50 ms", "output tok/s"):
        table.add_column(column, justify="right")
    for d, tpot, ttft, tok_s in zip(
        what_if["delay_ms"], what_if["tpot_p50_ms"], what_if["ttft_p50_ms"], what_if["output_tok_s"]
    ):
        table.add_row(f"{d:g}", f"{tpot:.2f}", f"{ttft:.1f}", f"{tok_s:.0f}")
    console.print(table)
    placements = what_if.get("placements") or {}
    if placements:
        table = Table(title="per placement preset (scheduler -> worker hop)", title_justify="left")
        for column in ("placement", "transport", "TPOT p50 ms", "TTFT p50 ms", "output tok/s"):
            table.add_column(
                column, justify="left" if column in ("placement", "transport") else "right"
            )
        skipped = []
        for name, row in placements.items():
            if "not_predicted" in row:
                skipped.append(f"{name}: {row['not_predicted']}")
                continue
            table.add_row(
                name,
                row["transport"],
                f"{row['tpot_p50_ms']:.2f}",
                f"{row['ttft_p50_ms']:.1f}",
                f"{row['output_tok_s']:.0f}",
            )
        console.print(table)
        for line in skipped:
            console.print(f"  [dim]not predicted: {line}[/]", highlight=False)


def plot_what_if(
    what_if: dict[str, Any],
    out_path: Path,
    measured: Sequence[tuple[float, float]] = (),
    title: str = "",
) -> Path:
    """TPOT p50 vs link delay: the predicted line, and measured (delay, TPOT) points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    delays = what_if["delay_ms"]
    ax.plot(delays, what_if["tpot_p50_ms"], marker="o", ms=4, label="predicted")
    if measured:
        xs, ys = zip(*sorted(measured))
        ax.scatter(xs, ys, color="tab:red", zorder=3, label="measured (0: the baseline)")
    ax.set_xlabel("link delay, one way (ms)  — hopscope cluster up --delay-ms")
    ax.set_ylabel("TPOT p50 (ms)")
    ax.set_title(title or f"TPOT p50 vs {what_if['link']} link delay (predicted)", fontsize=11)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
