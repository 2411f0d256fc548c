"""No import circles among the project's packages (issue 20, defect 8), and no import from a
higher layer than ARCHITECTURE.md's "Layers" table allows (issue 33).

The graph is read with `ast`, not by importing: an edge A -> B is an import of B that runs when A
is imported (module level, including inside `try`/`if`/class bodies; not inside functions, and not
under `if TYPE_CHECKING:`). Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`, so
those are edges too. A re-export (`from x import Name  # noqa: F401`) is an ordinary import here.
The layer check counts every import, wherever it is: one inside a function is a dependency too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["services", "deploy", "loadgen", "tracing", "diagnose", "benchmarks", "experiment"]
OURS = {*PACKAGES, "protos"}

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


def _imported(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> list[str]:
    """The modules (or packages) an import statement names, relative ones made absolute; for
    `from pkg import x`, both `pkg` and `pkg.x` (x may be a submodule or a name in pkg)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    return [source, *(f"{source}.{alias.name}" for alias in node.names)]


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _import_time_nodes(tree.body):
        names = _imported(node, name, is_package)
        if isinstance(node, ast.ImportFrom):  # pkg, and pkg.name when that is a module
            targets.update(_with_parents(names[0], modules))
            targets.update(n for n in names[1:] if n in modules)
        else:
            for imported in names:
                targets.update(_with_parents(imported, modules))
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


def test_no_circle_even_through_imports_inside_functions() -> None:
    # a lazy import hides a circle from Python, not from a reader: experiment/rounds.py and
    # target.py imported each other so (issue 33); what both need lives in round_kit.py now.
    # A collaborator naming its owner's type under TYPE_CHECKING runs nothing: not counted.
    modules = _modules()
    graph = {
        name: {m for m in _all_imports(name, path, modules, typing=False) if m in modules} - {name}
        for name, path in modules.items()
    }
    cycles = _cycles(graph)
    assert not cycles, "import circles (any import): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_loadgen_http_client_does_not_import_the_runner() -> None:
    # the runner imports the HTTP client (lazily); the client took UnreachableError from the
    # runner's re-export of loadgen.frontdoor, a circle. Shared pieces live in loadgen.frontdoor.
    graph = _import_graph()
    assert "loadgen.runner" not in graph["loadgen.http_client"]


# ---------------------------------------------------------------------------- layers
def _layers() -> list[str]:
    """ARCHITECTURE.md's "Layers" table, top to bottom, as module prefixes (`services/common/`
    -> `services.common`, `services/config.py` -> `services.config`)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1]
    table = section.split("```", 2)[1]
    entries = re.findall(r"^([a-z_/]+(?:/|\.py))\s", table, re.MULTILINE)
    return [e.removesuffix("/").removesuffix(".py").replace("/", ".") for e in entries]


def _layer_of(module: str, layers: list[str]) -> int | None:
    """Index of the layer holding MODULE (the longest prefix that names it), None if none does."""
    matches = [
        (len(prefix), index)
        for index, prefix in enumerate(layers)
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else None


def _every_import(nodes: Iterable[ast.AST], typing: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in NODES, in functions too; under `if TYPE_CHECKING:` if TYPING."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and not typing and _is_type_checking(node.test):
            yield from _every_import(node.orelse, typing)
        else:
            yield from _every_import(ast.iter_child_nodes(node), typing)


def _all_imports(name: str, path: Path, modules: dict[str, Path], typing: bool = True) -> set[str]:
    """Every module of ours this one imports, anywhere in it (functions too; TYPE_CHECKING
    imports if TYPING: a type-only import is no circle, but it is a dependency on that layer)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _every_import(tree.body, typing):
        names = _imported(node, name, is_package)
        if isinstance(node, ast.ImportFrom):  # `from pkg import sub`: the submodule is meant
            names = [n for n in names[1:] if _is_module(n, modules)] or names[:1]
        found.update(n for n in names if n.split(".")[0] in OURS)
    return found


def _is_module(name: str, modules: dict[str, Path]) -> bool:
    return name in modules or (ROOT / name.replace(".", "/")).is_dir()


def _upward_imports(modules: dict[str, Path], layers: list[str]) -> list[str]:
    found = []
    for name, path in sorted(modules.items()):
        own = _layer_of(name, layers)
        assert own is not None, f"{name}: its package is not in ARCHITECTURE.md's Layers table"
        for imported in sorted(_all_imports(name, path, modules)):
            theirs = _layer_of(imported, layers)
            if theirs is not None and theirs < own:
                found.append(f"{name} ({layers[own]}) imports {imported} ({layers[theirs]})")
    return found


def test_the_layer_table_places_every_package_and_the_settings_below_the_services() -> None:
    layers = _layers()
    assert {"experiment", "diagnose", "benchmarks", "protos"} <= set(layers)
    assert layers.index("services") < layers.index("loadgen") < layers.index("services.config")
    assert _layer_of("services.scheduler.core", layers) == layers.index("services")
    assert _layer_of("services.common.channels", layers) == layers.index("services.common")


def test_the_layer_check_finds_an_import_from_a_higher_layer(tmp_path: Path) -> None:
    layers = ["deploy", "services", "services.config", "tracing"]
    (tmp_path / "low.py").write_text(
        "from services import config\n"  # a submodule of a higher package: its own layer
        "import tracing\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import deploy.spec\n"  # a type-only import: a dependency too
        "def lazy():\n    from deploy.cli import main\n"  # inside a function: counts too
    )
    (tmp_path / "high.py").write_text("from services.config import low\n")
    modules = {
        "deploy.spec": tmp_path / "high.py",
        "deploy.cli": tmp_path / "high.py",
        "services.config": tmp_path / "low.py",
        "services.config.low": tmp_path / "low.py",
    }
    upward = _upward_imports(modules, layers)
    assert upward[:2] == [
        "services.config (services.config) imports deploy.cli (deploy)",
        "services.config (services.config) imports deploy.spec (deploy)",
    ]
    assert len(upward) == 4  # and the same two from services.config.low; none from deploy
    assert _all_imports("services.config", tmp_path / "low.py", modules, typing=False) == {
        "services.config",
        "tracing",
        "deploy.cli",
    }


def test_no_import_points_up_a_layer() -> None:
    protos = {_module_name(p): p for p in (ROOT / "protos").glob("*.py") if "_pb2" not in p.name}
    upward = _upward_imports(_modules() | protos, _layers())
    assert not upward, "imports from a higher layer (ARCHITECTURE.md, Layers):\n  " + "\n  ".join(
        upward
    )
