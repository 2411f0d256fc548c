"""benchmarks/peers.py's pure parts: /proc parsing, the process-tree CPU sum, medians, the table
(the script itself runs the peers' servers and never runs in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import peers


def _stat(pid: int, ppid: int, comm: str = "python3", ticks: tuple[int, ...] = (1, 2, 3, 4)) -> str:
    utime, stime, cutime, cstime = ticks
    return (
        f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 "
        f"{utime} {stime} {cutime} {cstime} 20 0 3 0 100 1000 200 18446744073709551615"
    )


def test_parse_stat_reads_ppid_and_all_four_cpu_fields() -> None:
    stat = peers.parse_stat(_stat(42, 7, comm="vllm (Engine) 0", ticks=(10, 5, 3, 2)))
    assert (stat.pid, stat.ppid, stat.cpu_ticks) == (42, 7, 20)


def test_tree_is_the_root_and_its_descendants_only() -> None:
    stats = {
        s.pid: s
        for s in map(
            peers.parse_stat,
            [_stat(10, 1), _stat(11, 10), _stat(12, 11), _stat(13, 1), _stat(14, 13)],
        )
    }
    assert peers.tree_pids(10, stats) == [10, 11, 12]
    assert peers.tree_pids(99, stats) == []
    assert peers.tree_cpu_s(10, stats) == pytest.approx(3 * 10 / os.sysconf("SC_CLK_TCK"))


def test_tree_cpu_counts_a_busy_child_of_a_real_process() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    code = (
        "import subprocess, sys, time; "
        f"subprocess.run([sys.executable, '-c', {busy!r}]); time.sleep(5)"
    )
    parent = subprocess.Popen([sys.executable, "-P", "-c", code])
    try:
        time.sleep(0.05)
        before = peers.tree_cpu_s(parent.pid)
        deadline = time.monotonic() + 10
        while peers.tree_cpu_s(parent.pid) - before < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the child exited and was reaped: its time is in the parent's cutime now
        assert peers.tree_cpu_s(parent.pid) - before >= 0.25
    finally:
        parent.kill()
        parent.wait()


def test_parse_pss() -> None:
    text = "00400000-7ffd [rollup]\nRss:              204800 kB\nPss:              102400 kB\n"
    assert peers.parse_pss_kib(text) == 102400
    assert peers.parse_pss_kib("Rss: 1 kB\n") == 0
    assert peers.tree_pss_mib(os.getpid()) > 1


def test_output_tokens_sum_every_request(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('{"n_out": 64}\n{"n_out": 60}\n\n{"n_out": null}\n')
    assert peers.output_tokens(path) == 124


def _record(system: str, round_index: int, tok_s: float) -> dict:
    return {
        "round": round_index,
        "system": system,
        "startup_s": 10.0 + round_index,
        "peak_pss_mib": 900.0,
        "points": [
            {"concurrency": 1, "output_tok_s": tok_s, "ttft_p50_ms": 50.0, "cpu_ms_per_token": 3},
            {"concurrency": 16, "error": "bench failed"},
        ],
    }


def test_medians_and_table_say_what_ran_and_why_not() -> None:
    records = [
        _record("hopscope-colocated", 0, 10.0),
        _record("hopscope-colocated", 1, 20.0),
        {"round": 0, "system": "llamacpp", "error": "start failed: exited with code 1\n  boom"},
    ]
    summary = peers.medians(records)
    colocated = summary["hopscope-colocated"]
    assert colocated["rounds_ran"] == 2 and colocated["startup_s"] == 10.5
    assert colocated["by_concurrency"]["1"]["output_tok_s"] == 15.0
    assert "16" not in colocated["by_concurrency"]  # every run of it failed
    assert summary["llamacpp"]["rounds_ran"] == 0
    table = peers.render_table(summary).splitlines()
    assert table[0].startswith("| system | conc | tok/s | TTFT p50 ms")
    assert table[2].startswith("| hopscope-colocated | 1 | 15 | 50 |")
    assert "did not run: start failed: exited with code 1 boom" in table[3]
    assert all(row.count("|") == table[0].count("|") for row in table)


def test_greedy_agreement_counts_equal_texts_and_prefixes() -> None:
    texts = {"hopscope-colocated": ["ab", "cd"], "vllm": ["ab", "cx"], "llamacpp": ["zz", "cd"]}
    agreement = peers.greedy_agreement(texts, "hopscope-colocated")
    assert agreement["vllm"] == {"equal": 1, "of": 2, "common_prefix_chars": [2, 1]}
    assert agreement["llamacpp"]["equal"] == 1
    assert peers.greedy_agreement({"vllm": ["a"]}, "hopscope-colocated") == {}


def test_a_hopscope_system_suffix_adds_its_precision_flag() -> None:
    assert peers.hopscope_serve_args("hopscope-colocated")[:3] == [
        "--no-ray",
        "--placement",
        "colocated",
    ]
    assert peers.hopscope_serve_args("hopscope-colocated-int4")[-2:] == ["--quantization", "int4"]
    assert peers.hopscope_serve_args("hopscope-inproc-bfloat16")[-2:] == ["--dtype", "bfloat16"]
    assert "hopscope-colocated-int8" in peers.KNOWN_SYSTEMS
    assert "hopscope-colocated-int8" not in peers.SYSTEMS  # the default run leaves them out
