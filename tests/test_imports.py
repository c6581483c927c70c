"""Every import points down: no cycle among the project's modules, counting imports inside functions too."""
import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "serving", "models", "repository", "localhost")


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Each module of `packages` -> the project modules it imports anywhere in its source. A module's own parent
    packages are left out: importing a submodule runs them, but they are not what it depends on."""
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for imported in names:
                while imported and imported not in modules:
                    imported = imported.rpartition(".")[0]
                if imported and imported != name and not name.startswith(imported + "."):
                    graph[name].add(imported)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of the graph, or []."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return e.args[1]
    return []


def test_no_import_cycle_in_the_project():
    found = cycle(import_graph(ROOT, PACKAGES))
    assert found == [], f"import cycle: {' -> '.join(found)}"


@pytest.mark.parametrize("inside_b", ["from pkg import a", "def f():\n    from pkg.a import g"])
def test_the_check_sees_a_cycle_also_through_an_import_inside_a_function(tmp_path, inside_b):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n\n\ndef g():\n    pass\n")
    (tmp_path / "pkg" / "b.py").write_text(inside_b + "\n")
    assert sorted(set(cycle(import_graph(tmp_path, ("pkg",))))) == ["pkg.a", "pkg.b"]
