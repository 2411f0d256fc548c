"""The code base stays type-checked and lint-clean (STYLE.md: checked by a type checker in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["services", "deploy", "tracing", "loadgen", "experiment", "diagnose", "benchmarks"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_mypy_finds_no_type_errors() -> None:
    # benchmarks/ is a namespace package (`python -m benchmarks.NAME`): its modules named by path
    result = _run("mypy", "--explicit-package-bases", *PACKAGES)
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_finds_no_lint_errors() -> None:
    result = _run("ruff", "check", *PACKAGES, "tests")
    assert result.returncode == 0, result.stdout[-4000:]


def test_generated_protobuf_code_is_up_to_date() -> None:
    result = _run("protos.generate", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
