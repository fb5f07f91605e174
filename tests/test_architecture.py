"""The import rules of the house (DESIGN.md, "The house after the wing"), read from the source.

Every import of every module under edgeprune/ counts: at the top, inside functions, under
`if TYPE_CHECKING:`, and `importlib.import_module("edgeprune....")` with a constant name.
No two modules may import each other, directly or round a circle, and no module may import
an underscore name (`from edgeprune.x import _helper`) from another: what a module shares it
names publicly. Private MODULES (`from edgeprune._io import sha256_file`) are fine.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgeprune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(path) else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The edgeprune module `name` is (or, for a dotted attribute, lives in); None outside edgeprune."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(edgeprune module imported, underscore name imported from it or None) for each import."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(owner, None) for a in node.names if (owner := _owner(a.name, modules))]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:  # a submodule: `from pkg import mod`
                    found.append((f"{source}.{alias.name}", None))
                elif source in modules:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    found.append((source, alias.name if private else None))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            if owner := _owner(node.args[0].value, modules):
                found.append((owner, None))
    return [(m, name) for m, name in found if m != module]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {imported for imported, _ in _imports(m, p, modules)} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _private_imports() -> set[tuple[str, str, str]]:
    modules = _modules()
    return {(m, imported, name) for m, p in modules.items() for imported, name in _imports(m, p, modules) if name}


def test_the_graph_sees_every_kind_of_import():
    """The walker itself: lazy imports, relative imports, submodules and import_module count."""
    graph = _graph()
    assert "edgeprune.targets.session" in graph["edgeprune.targets"]  # from a package: `from x import name`
    assert "edgeprune.targets.emulate.cgroup" in graph["edgeprune.targets.emulate"]  # `from pkg import submodule`
    assert "edgeprune.export.speed" in graph["edgeprune.commands.profile"]  # inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles: {[sorted(c) for c in cycles]}"


def test_targets_import_one_way():
    """Inside targets/ imports run from the session down to the data, none the other way."""
    graph = _graph()
    assert not {m for m in graph["edgeprune.targets.target"] if m.startswith("edgeprune.targets")} - {
        "edgeprune.targets.measurement"}
    assert "edgeprune.targets.target" in graph["edgeprune.targets.session"]
    for module in ("edgeprune.targets.measurement", "edgeprune.targets.cache", "edgeprune.targets.lock"):
        assert not graph[module] & {"edgeprune.targets.session", "edgeprune.targets.target"}, module


def test_no_private_names_imported_across_modules():
    found = _private_imports()
    assert not found, f"underscore names imported from other modules (make them public or keep them home): " \
                      f"{sorted(found)}"
