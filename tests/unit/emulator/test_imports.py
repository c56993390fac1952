"""The emulator's import graph, read from the source with ``ast``: no cycles, counting imports made inside
functions (which hide a cycle from Python but not from a reader), and nothing from the project's other
packages, so the emulator stays a stand-in for Square that shares no code with what it tests."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = "emulator"


def _module_name(path: Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


MODULES = {_module_name(p): p for p in sorted((ROOT / PACKAGE).glob("*.py"))}


def imported_names(source: str, module: str) -> set[str]:
    """Absolute names of what ``module`` imports: every import statement, wherever it is (top level, inside a
    function, under ``TYPE_CHECKING``). ``from X import y`` names ``X.y`` when that is a module of the emulator
    (``from . import clock``), else ``X``."""
    is_package = module == PACKAGE
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1])
                target = ".".join(p for p in (base, node.module) if p)
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}" if target else alias.name
                out.add(submodule if submodule in MODULES or not target else target)
    return out


def graph() -> dict[str, set[str]]:
    return {name: {imp for imp in imported_names(path.read_text(), name) if imp in MODULES and imp != name}
            for name, path in MODULES.items()}


def cycles(edges: Mapping[str, set[str]]) -> Iterator[list[str]]:
    """One path per back edge met in a depth-first walk: ``[a, b, ..., a]``. None means the graph is acyclic."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> Iterator[list[str]]:
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                yield [*path[path.index(nxt):], nxt]
            elif nxt not in done:
                yield from visit(nxt)
        path.pop()
        done.add(node)

    for start in sorted(edges):
        if start not in done:
            yield from visit(start)


def test_import_reading_sees_function_level_and_relative_imports() -> None:
    source = "from . import clock\nfrom .keys import EMULATOR\n\ndef f():\n    from .app import create_app\n"
    assert imported_names(source, "emulator.admin") == {"emulator.clock", "emulator.keys", "emulator.app"}
    assert imported_names("from ..worker import x\nfrom .. import webhooks\n", "emulator.admin") == {
        "worker", "webhooks"}
    assert list(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}})) == [["a", "b", "c", "a"]]
    assert list(cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()})) == []


def test_emulator_has_no_import_cycle() -> None:
    edges = graph()
    assert "emulator.errors" in edges["emulator.validation"]  # the reading found the graph it is meant to check
    found = [" -> ".join(c) for c in cycles(edges)]
    assert found == [], "import cycles in the emulator:\n" + "\n".join(found)


def test_emulator_imports_nothing_from_the_projects_other_packages() -> None:
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    others = (set(wheel["packages"]) | {"tests", "bench"}) - {PACKAGE}
    assert {"square_mirror", "worker", "webhooks"} <= others
    offending = sorted(f"{name} imports {imp}" for name, path in MODULES.items()
                       for imp in imported_names(path.read_text(), name) if imp.split(".")[0] in others)
    assert offending == []
