"""The code base stays type-checked and lint-clean (STYLE.md: checked by a type checker in CI)."""

from __future__ import annotations

import ast
import re
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


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    # benchmarks/ included: formatting drift there hid real diffs in review (issue 20, defect 10)
    result = _run("ruff", "format", "--check", *PACKAGES, "tests")
    assert result.returncode == 0, result.stdout[-4000:]


# Public top-level definitions nobody references yet, and why they stay (shrinking it is progress).
UNREFERENCED_ALLOWED = {
    "services/worker/kv_transfer.py:export_blocks",  # "tests, tools": owned by the worker's work
}


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes (a module's, class's or function's first string)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _references(tree: ast.Module) -> list[str]:
    """The names code uses: identifiers, attributes, imported names, keywords, and words inside
    string literals (a module or function named by string); never comments or docstrings, so a
    definition that only a comment mentions counts as unused."""
    docstrings = _docstrings(tree)
    words: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append(node.id)
        elif isinstance(node, ast.Attribute):
            words.append(node.attr)
        elif isinstance(node, ast.alias):
            words += node.name.split(".") + ([node.asname] if node.asname else [])
        elif isinstance(node, ast.keyword) and node.arg:
            words.append(node.arg)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            words += re.findall(r"[A-Za-z_][A-Za-z0-9_]*", node.value)
    return words


def test_no_public_definition_is_dead_code() -> None:
    """Every public top-level function and class is used somewhere else in the project's Python
    (packages and tests): one that is not is dead code (issue 20, defect 10). A mention in a
    comment or a docstring is not a use (issue 33: `ServeSpec` survived on one)."""
    trees = {
        path.relative_to(ROOT).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
        for folder in [*PACKAGES, "tests"]
        for path in sorted((ROOT / folder).rglob("*.py"))
        if not path.name.endswith(("_pb2.py", "_pb2_grpc.py"))
    }
    counts: dict[str, int] = {}
    for tree in trees.values():
        for word in _references(tree):
            counts[word] = counts.get(word, 0) + 1
    dead = []
    for relative, tree in trees.items():
        if relative.startswith("tests/"):
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if node.name.startswith("_") or node.name == "main":
                continue
            if (
                counts.get(node.name, 0) == 0
                and f"{relative}:{node.name}" not in UNREFERENCED_ALLOWED
            ):
                dead.append(f"{relative}:{node.name}")
    assert not dead, f"defined and never used (remove, or use them): {dead}"


def test_a_definition_named_only_in_a_comment_is_dead() -> None:
    tree = ast.parse(
        '"""Mentions Ghost."""\n# Ghost is kept for old callers\n'
        'def Ghost():\n    """Ghost."""\n\ndef used():\n    return "module:used", other\n'
    )
    words = _references(tree)
    assert "Ghost" not in words
    assert "used" in words and "other" in words  # named in a string, and as a name


def test_generated_protobuf_code_is_up_to_date() -> None:
    result = _run("protos.generate", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
