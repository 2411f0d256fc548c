"""The documented commands that read a run's files run, on a small run this module makes once (a
two-variant experiment, in-process, 12 requests each): each exits 0 and prints what a reader of
the docs looks for. The documented paths (`runs/exp1`, `runs/c32.json`, `spans.jsonl`, ...) stand
for that run's files. Commands that serve, load a server or run rounds are parsed and their
--help checked in tests/unit/test_documented_commands.py."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.cli import main
from tests.unit.test_documented_commands import COMMANDS, command_path

ROOT = Path(__file__).resolve().parents[2]
PLAN = """\
name: docs
baseline:
  placement: inproc
  no_ray: true
  max_num_seqs: 8
workload:
  concurrency: 4
  num_requests: 12
  input_len: 16
  output_len: 8
factors:
  max_num_seqs: [4]
"""
# (sub)command -> what its output shows when it worked; every other documented command is long
RUNS = {
    "bench compare": "tpot_ms p50",
    "certs": "wrote a development CA",
    "diagnose": "time budget:",
    "traces export": "wrote ",
    "traces show": "trace ",
    "traces summarize": "Where the time went",
}
_EXPERIMENT = {"--list": "quick ", "compare": "baseline", "report": "report: "}  # experiment WORD


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The documented placeholders, each mapped to a file or folder of the small run."""
    root = tmp_path_factory.mktemp("documented")
    (root / "plan.yaml").write_text(PLAN)
    run = root / "run"
    argv = [sys.executable, "-P", "-m", "deploy.cli", "experiment", str(root / "plan.yaml")]
    argv += ["--out", str(run), "--quiet"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    base, other = run / "baseline" / "round-1", run / "max_num_seqs=4" / "round-1"
    first = json.loads((base / "requests.jsonl").read_text().splitlines()[0])
    return {
        **dict.fromkeys(
            ["runs/exp1", "runs/quick", "runs/mine", "runs/before", "runs/after"], str(run)
        ),
        **dict.fromkeys(["runs/c32.json", "runs/colocated.json"], str(base / "bench.json")),
        "runs/c4.json": str(other / "bench.json"),
        "runs/colocated.requests.jsonl": str(base / "requests.jsonl"),
        "spans.jsonl": str(base / "spans.jsonl"),
        "TRACE_ID": first["trace_id"],
        "trace.json": str(root / "trace.json"),
        "~/.hopscope/tls": str(root / "tls"),
        "colocated": "baseline",  # `--label colocated`: the run's baseline variant
    }


def _expected(argv: list[str]) -> str | None:
    """What the command prints when it worked; None for a long command (not run here)."""
    path = " ".join(command_path(argv))
    if path != "experiment":
        return None if argv == ["diagnose", "--calibrate"] else RUNS.get(path)
    return next((_EXPERIMENT[a] for a in argv[1:2] if a in _EXPERIMENT), None)


CHEAP = [(w, c) for w, c in COMMANDS if _expected(shlex.split(c)[1:]) is not None]


def test_most_documented_commands_that_read_files_are_run() -> None:
    assert len(CHEAP) >= 12, CHEAP  # the selection still finds them


@pytest.mark.parametrize(("where", "command"), CHEAP, ids=[w for w, _ in CHEAP])
def test_a_documented_command_runs_on_a_small_run(
    where: str,
    command: str,
    small_run: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HOPSCOPE_HOME", str(tmp_path))  # no calibration or state of the user's
    monkeypatch.setenv("COLUMNS", "200")  # tables unwrapped, as on a wide terminal
    argv = [small_run.get(arg, arg) for arg in shlex.split(command)[1:]]
    code = main(argv)
    output = capsys.readouterr()
    assert code == 0, f"{where}: `{command}` exited {code}\n{output.out}{output.err}"
    if "--json" in argv:
        assert json.loads(output.out), f"{where}: `{command}` printed no JSON"
    else:
        expected = _expected(argv)
        assert expected and expected in output.out, f"{where}: `{command}` printed\n{output.out}"
