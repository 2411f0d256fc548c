"""Contention measured (services/common/procfs.py) on a fake /proc tree, and how a contended round is
shown: summary.json's verdicts, the report's note, `experiment compare`, bench's warning."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from experiment.background import BackgroundLoad, background_load
from experiment.compare import compare_table
from experiment.plan import PlanError, parse_plan
from experiment.report import _contention_note
from experiment.summary import CONTENTION_DIFFERS, mark_contention_differs
from loadgen.bench import busy_host_warning
from services.common.procfs import (
    CONTENDED_OUTSIDE_CORES,
    ContentionSnapshot,
    CpuReadError,
    SchedReading,
    contention_document,
    contention_snapshot,
    host_busy_s,
    read_sched,
)

TICKS = 100  # USER_HZ on Linux


def _stat_line(pid: int, ppid: int, cpu_ticks: int, comm: str = "python") -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    # cutime cstime ...: all of utime, split between utime and stime
    fields = ["S", ppid, *([0] * 9), cpu_ticks // 2, cpu_ticks - cpu_ticks // 2, 0, 0, 20, 0]
    return f"{pid} ({comm}) " + " ".join(str(f) for f in fields) + "\n"


def _process(
    proc: Path, pid: int, ppid: int, cpu_ticks: int, threads: dict[int, tuple[int, int]]
) -> None:
    """A process whose threads TID -> (ns waiting on a run queue, involuntary switches)."""
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "stat").write_text(_stat_line(pid, ppid, cpu_ticks))
    for tid, (wait_ns, switches) in threads.items():
        task = proc / str(pid) / "task" / str(tid)
        task.mkdir(parents=True, exist_ok=True)
        (task / "schedstat").write_text(f"123456 {wait_ns} 42\n")
        (task / "status").write_text(
            f"Name:\tpython\nvoluntary_ctxt_switches:\t999\nnonvoluntary_ctxt_switches:\t{switches}\n"
        )


def _host(proc: Path, busy_ticks: tuple[int, int], idle_ticks: int = 5000) -> None:
    """/proc/stat with two cores, each `busy` ticks split over user, nice, system and steal (and
    interrupt time besides, which is not counted)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for core, busy in enumerate(busy_ticks):
        user, nice, system, steal = busy - 30, 10, 10, 10
        lines.append(f"cpu{core} {user} {nice} {system} {idle_ticks} 77 5 40 {steal} 0 0")
    (proc / "stat").write_text("\n".join(lines) + "\n")


def test_run_queue_wait_and_involuntary_switches_sum_over_every_thread(tmp_path: Path) -> None:
    _process(tmp_path, 100, 1, 50, {100: (1_500_000_000, 3), 101: (250_000_000, 4)})
    reading = read_sched(100, tmp_path)
    assert reading == SchedReading(run_queue_wait_s=1.75, involuntary_switches=7)


def test_a_thread_that_ended_mid_read_is_skipped_and_a_gone_process_is_an_error(
    tmp_path: Path,
) -> None:
    _process(tmp_path, 100, 1, 50, {100: (2_000_000_000, 1)})
    (tmp_path / "100" / "task" / "101").mkdir()  # listed, but its files are gone
    assert read_sched(100, tmp_path).run_queue_wait_s == 2.0
    with pytest.raises(CpuReadError):
        read_sched(999, tmp_path)


def test_host_busy_time_counts_only_the_given_cores_and_not_idle_iowait_or_interrupts(
    tmp_path: Path,
) -> None:
    _host(tmp_path, (300, 100))
    assert host_busy_s([0], tmp_path) == pytest.approx(3.0)
    assert host_busy_s([0, 1], tmp_path) == pytest.approx(4.0)


def test_outside_cpu_is_the_hosts_busy_time_less_the_inside_trees_and_counts_a_neighbour(
    tmp_path: Path,
) -> None:
    # this process (10) started the service (20, with a child 21) and a busy neighbour (30)
    def world(service_ticks: int, child_ticks: int, neighbour_ticks: int, busy: int) -> None:
        _process(tmp_path, 10, 1, 100, {10: (0, 0)})
        _process(tmp_path, 20, 10, service_ticks, {20: (service_ticks * 10_000_000, 5)})
        _process(tmp_path, 21, 20, child_ticks, {21: (0, 0)})
        _process(tmp_path, 30, 10, neighbour_ticks, {30: (0, 0)})
        _process(tmp_path, 40, 1, 999, {40: (0, 0)})  # unrelated: not read as inside
        _host(tmp_path, (busy, 0))

    world(service_ticks=100, child_ticks=50, neighbour_ticks=0, busy=1000)
    before = contention_snapshot({"pipeline": 20}, [10], [30], tmp_path, cores=[0, 1])
    world(service_ticks=300, child_ticks=150, neighbour_ticks=400, busy=1800)
    after = contention_snapshot({"pipeline": 20}, [10], [30], tmp_path, cores=[0, 1])
    assert after.inside_cpu_s - before.inside_cpu_s == pytest.approx(3.0)  # service + its child

    document = contention_document(_at(before, 0.0), _at(after, 4.0), num_cores=2)
    assert document["processes"] == {
        "pipeline": {"pid": 20, "cpu_s": 2.0, "run_queue_wait_s": 2.0, "involuntary_switches": 0}
    }
    assert document["outside_cpu_s"] == pytest.approx(5.0)  # 8 s busy less 3 s inside
    assert document["outside_cores"] == pytest.approx(1.25)
    assert document["wait_share"] == pytest.approx(0.5)  # 2 s waiting, 2 s on a core
    assert document["is_contended"] is True
    assert document["num_cores"] == 2 and document["duration_s"] == pytest.approx(4.0)


def test_an_idle_host_is_not_contended_and_outside_cpu_is_never_negative() -> None:
    service = {"worker": (7, 1.0, SchedReading(0.1, 2))}
    before = ContentionSnapshot(0.0, 100.0, 50.0, service)
    after = ContentionSnapshot(
        10.0, 103.0, 53.5, {"worker": (7, 4.5, SchedReading(0.2, 9))}
    )  # the inside used more than the cores' busy time (clock ticks): clamped at 0
    document = contention_document(before, after, num_cores=2)
    assert document["outside_cpu_s"] == 0.0
    assert document["is_contended"] is False
    assert document["processes"]["worker"]["involuntary_switches"] == 7
    quiet = ContentionSnapshot(10.0, 100.0 + 10 * CONTENDED_OUTSIDE_CORES - 0.1, 50.0, service)
    assert contention_document(before, quiet, num_cores=2)["is_contended"] is False


def _at(snapshot: ContentionSnapshot, at_s: float) -> ContentionSnapshot:
    return ContentionSnapshot(at_s, snapshot.host_busy_s, snapshot.inside_cpu_s, snapshot.services)


# ---------------------------------------------------------------------------- how it is shown
def _round(index: int, is_contended: bool | None) -> dict[str, Any]:
    cpu: dict[str, Any] = {}
    if is_contended is not None:
        cpu["contention"] = {"is_contended": is_contended, "outside_cores": 1.0}
    return {"index": index, "cpu": cpu}


def _effects() -> dict[str, Any]:
    return {"output_tok_s": {"ratio": 0.5, "ci95": [0.4, 0.6], "verdict": "worse", "rounds": 2}}


def test_a_comparison_whose_rounds_differ_in_contention_is_not_called_worse() -> None:
    effects = _effects()
    mark_contention_differs(
        effects, [_round(1, True), _round(2, False)], [_round(1, False), _round(2, False)]
    )
    assert effects["output_tok_s"]["verdict"] == CONTENTION_DIFFERS
    assert effects["output_tok_s"]["contention_differs_rounds"] == [1]


def test_rounds_alike_in_contention_keep_their_verdict_and_old_runs_count_as_uncontended() -> None:
    effects = _effects()
    mark_contention_differs(effects, [_round(1, True)], [_round(1, True)])
    mark_contention_differs(effects, [_round(2, None)], [_round(2, False)])
    assert effects["output_tok_s"]["verdict"] == "worse"


def test_the_report_names_each_contended_round() -> None:
    contention = {"is_contended": True, "outside_cores": 1.02, "num_cores": 2,
                  "wait_share": 0.31, "background": {"procs": 1, "duty": 1.0}}  # fmt: skip
    summary = {
        "variants": [
            {"name": "baseline", "rounds": [{"round": 1, "contention": None}]},
            {"name": "background_procs=1", "rounds": [{"round": 1, "contention": contention}]},
        ]
    }
    blocks = _contention_note(summary)
    text = json.dumps(blocks)
    assert "`background_procs=1` round 1: 1.02 of 2 cores used outside the deployment" in text
    assert "31%" in text and "1 busy process planted" in text
    assert "baseline" not in text
    summary["variants"].pop()
    assert _contention_note(summary) == []


def _summary_dir(root: Path, name: str, contended_rounds: list[int]) -> Path:
    metrics = {"output_tok_s": 100.0 if not contended_rounds else 40.0,
               "ttft_ms": {"p99": 50.0}, "tpot_ms": {"p50": 20.0}, "e2e_ms": {"p50": 400.0}}  # fmt: skip
    variant = {"name": "baseline", "factor": None, "metrics": metrics, "vs_baseline": {},
               "contended_rounds": contended_rounds}  # fmt: skip
    folder = root / name
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"variants": [variant]}))
    return folder


def test_compare_says_contention_differs_instead_of_colouring_the_change(tmp_path: Path) -> None:
    console = Console(record=True, width=250, color_system="truecolor")
    quiet = _summary_dir(tmp_path, "quiet", [])
    busy = _summary_dir(tmp_path, "busy", [1, 2])
    console.print(compare_table(quiet, busy))
    text = console.export_text()
    assert f"100 → 40 (0.40×, {CONTENTION_DIFFERS})" in text
    assert "baseline ran on a contended machine in one experiment only" in text
    assert "\x1b[31m" not in console.export_text(styles=True)  # not red: not called worse


def test_bench_warns_only_when_the_host_was_busy() -> None:
    busy = {"is_contended": True, "outside_cores": 1.3, "num_cores": 2}
    warning = busy_host_warning(busy)
    assert warning is not None and "1.30 of 2 cores" in warning
    assert busy_host_warning(busy | {"is_contended": False}) is None
    assert busy_host_warning({}) is None


# ---------------------------------------------------------------------------- the knob in a plan
def _plan(**overrides: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "baseline": {"placement": "inproc", "no_ray": True},
        "workload": {"concurrency": 4, "num_requests": 8},
        "factors": {"background_procs": [1, 2]},
    }
    return plan | overrides


def test_background_procs_is_a_factor_run_beside_the_deployment_not_by_the_bench() -> None:
    plan = parse_plan(_plan())
    assert [v.name for v in plan.variants] == [
        "baseline",
        "background_procs=1",
        "background_procs=2",
    ]
    baseline, one, _ = plan.variants
    assert plan.background(baseline) == BackgroundLoad(0, 1.0)
    assert plan.background(one) == BackgroundLoad(1, 1.0)
    assert one.serve == baseline.serve  # the deployment is the baseline's
    assert not any("background" in arg for arg in plan.bench_argv())  # the round starts them


def test_background_load_in_the_workload_applies_to_every_variant_and_is_checked() -> None:
    plan = parse_plan(
        _plan(
            workload={"concurrency": 4, "background_procs": 1, "background_duty": 0.5},
            factors={"max_num_seqs": [2]},
        )
    )
    assert {plan.background(v) for v in plan.variants} == {BackgroundLoad(1, 0.5)}
    with pytest.raises(PlanError, match=r"workload.background_duty: .* expected a fraction"):
        parse_plan(_plan(workload={"concurrency": 4, "background_duty": 1.5}))
    with pytest.raises(PlanError, match=r"factors.background_procs: .* expected 0 or more"):
        parse_plan(_plan(factors={"background_procs": [-1]}))
    with pytest.raises(PlanError, match=r"factors.background_procs: 1.5 is not an integer"):
        parse_plan(_plan(factors={"background_procs": [1.5]}))
    target = {"url": "http://127.0.0.1:8000"}
    with pytest.raises(PlanError, match=r"a plan with target: does not run it"):
        parse_plan({"target": target, "workload": {"concurrency": 1, "background_procs": 1}})
    with pytest.raises(PlanError, match=r"factors.background_procs: 0 equals the baseline's"):
        parse_plan(_plan(factors={"background_procs": [0, 1]}))


# ---------------------------------------------------------------------------- the neighbours' lives
def _is_background_load(pid: int) -> bool:
    """A live neighbour (a zombie's cmdline is empty)."""
    try:
        return b"experiment.background" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _gone_within(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_is_background_load(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_neighbours_spin_during_the_workload_and_are_stopped_when_it_fails(
    tmp_path: Path, failure: type[BaseException]
) -> None:
    with (
        pytest.raises(failure),
        background_load(BackgroundLoad(2, 0.5), tmp_path / "bg.log") as pids,
    ):
        assert len(pids) == 2 and all(_is_background_load(pid) for pid in pids)
        raise failure()
    assert _gone_within(pids, 0.0)  # stopped and reaped before the error goes on


def test_neighbours_die_with_a_killed_parent(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from experiment.background import BackgroundLoad, background_load\n"
        "with background_load(BackgroundLoad(1), Path(sys.argv[1])) as pids:\n"
        "    print(pids[0], flush=True)\n"
        "    time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "bg.log")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert _is_background_load(pid)
    finally:
        parent.kill()  # no finally runs in it: only PR_SET_PDEATHSIG can stop the neighbour
        parent.wait()
    assert _gone_within([pid], 30.0)
