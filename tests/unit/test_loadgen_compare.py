"""`hopscope bench compare` warns when a closed loop is compared with an open loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy import cli
from loadgen.config import SloConfig
from loadgen.metrics import summarise


def _summary(path: Path, label: str, rate: float | None, concurrency: int | None) -> Path:
    load = {"rate": rate, "concurrency": concurrency}
    document = {
        "config": {"label": label, "resolved": {"load": load}},
        "requests_file": str(path.with_suffix(".requests.jsonl")),
        "summary": summarise([], SloConfig()),
    }
    path.write_text(json.dumps(document))
    return path


def test_closed_vs_open_loop_is_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    closed = _summary(tmp_path / "c.json", "closed4", None, 4)
    opened = _summary(tmp_path / "o.json", "rate20", 20.0, None)
    assert cli.main(["bench", "compare", str(closed), str(opened)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: comparing closed-loop (--concurrency) with open-loop (--rate) runs" in out
    assert "closed4 closed-loop, rate20 open-loop" in out


def test_like_with_like_is_not_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _summary(tmp_path / "a.json", "a", 5.0, None)
    b = _summary(tmp_path / "b.json", "b", 10.0, None)
    assert cli.main(["bench", "compare", str(a), str(b)]) == 0
    assert "warning" not in capsys.readouterr().out
