"""No import circles among the project's packages (issue 20, defect 8).

The graph is read with `ast`, not by importing: an edge A -> B is an import of B that runs when A
is imported (module level, including inside `try`/`if`/class bodies; not inside functions, and not
under `if TYPE_CHECKING:`). Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`, so
those are edges too. A re-export (`from x import Name  # noqa: F401`) is an ordinary import here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["services", "deploy", "loadgen", "tracing", "diagnose", "benchmarks", "experiment"]

# Known circles, each as the sorted tuple of its modules. Empty: keep it so; a new circle is a
# design smell to fix (move the shared piece to a module both import), not to list here.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            found[_module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_nodes(node.body)
            yield from _import_time_nodes(node.orelse)
        elif isinstance(node, ast.ClassDef):
            yield from _import_time_nodes(node.body)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    stmts = [c for c in children if isinstance(c, ast.stmt)]
                    for handler in children:
                        if isinstance(handler, ast.ExceptHandler):
                            stmts.extend(handler.body)
                    yield from _import_time_nodes(stmts)


def _with_parents(name: str, modules: dict[str, Path]) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules]


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _import_time_nodes(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.update(_with_parents(alias.name, modules))
            continue
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        targets.update(_with_parents(source, modules))
        for alias in node.names:  # `from pkg import submodule`
            if f"{source}.{alias.name}" in modules:
                targets.add(f"{source}.{alias.name}")
    targets.discard(name)
    # a package's own parents are imported before it: not an edge worth a circle
    return {t for t in targets if not name.startswith(t + ".")}


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_cycle_finder_finds_a_circle_and_ignores_type_checking(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [("a", "b", "c")]
    source = (
        "from typing import TYPE_CHECKING\n"
        "import loadgen.runner\n"
        "if TYPE_CHECKING:\n    import loadgen.report\n"
        "def f():\n    import loadgen.bench\n"
        "try:\n    from loadgen import workers\nexcept ImportError:\n    pass\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    modules = {m: Path() for m in ["loadgen", "loadgen.runner", "loadgen.report", "loadgen.bench"]}
    modules["loadgen.workers"] = Path()
    assert _edges("loadgen.mod", path, modules) == {"loadgen.runner", "loadgen.workers"}


def test_the_project_has_no_import_cycles() -> None:
    cycles = set(_cycles(_import_graph()))
    new = sorted(cycles - KNOWN_CYCLES)
    assert not new, "import circles (module-level imports): " + "; ".join(
        " <-> ".join(c) for c in new
    )
    gone = sorted(KNOWN_CYCLES - cycles)
    assert not gone, f"these circles are gone: drop them from KNOWN_CYCLES: {gone}"


def test_loadgen_http_client_does_not_import_the_runner() -> None:
    # the runner imports the HTTP client (lazily); the client took UnreachableError from the
    # runner's re-export of loadgen.frontdoor, a circle. Shared pieces live in loadgen.frontdoor.
    graph = _import_graph()
    assert "loadgen.runner" not in graph["loadgen.http_client"]
