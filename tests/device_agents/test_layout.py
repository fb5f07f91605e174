"""device_agents imports nothing from edgeprune but its errors, and ships no test kit."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "device_agents"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_device_agents_import_only_edgeprune_errors():
    for path in PACKAGE.glob("*.py"):
        bad = {n for n in _imports(path) if (n.startswith("edgeprune") and n != "edgeprune.errors")
               or n.split(".")[0] in ("tests", "pytest")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_agent_imports_only_the_standard_library_numpy_and_a_runtime():
    import sys
    top = {n.split(".")[0] for n in _imports(PACKAGE / "agent.py")}
    assert top - {"numpy", "onnxruntime"} <= set(sys.stdlib_module_names), top


def test_the_test_kit_lives_under_tests():
    assert not any((PACKAGE / name).exists() for name in ("testing.py", "_pytest_fixtures.py"))
    assert (PACKAGE.parent / "tests" / "agent_kit" / "testing.py").is_file()
