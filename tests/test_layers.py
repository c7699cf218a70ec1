"""The package's import graph has no cycle, lazy (function-level) imports included,
and the low layers never import the front ends."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kvmharness

PKG = Path(kvmharness.__file__).resolve().parent


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = PKG, extra: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """module -> kvmharness modules it imports anywhere in its body."""
    modules = {module_name(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                # the deepest known module the name refers to
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod and t.startswith("kvmharness"):
                    graph[mod].add(t)
    for m, deps in (extra or {}).items():
        graph.setdefault(m, set()).update(deps)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def dynamic_edges() -> dict[str, set[str]]:
    """Imports made by name at run time: the CLI's command modules."""
    from kvmharness.cli import COMMANDS
    from kvmharness.tools import TOOLS

    return {
        "kvmharness.cli": {f"kvmharness.cli.{c}" for c in COMMANDS},
        "kvmharness.tools": {module for module, _help in TOOLS.values()},
    }


def test_no_import_cycle_in_kvmharness():
    cycle = find_cycle(import_graph(extra=dynamic_edges()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_test_fails_on_a_back_import():
    """Negative control: add a back-import on purpose; the test must see it."""
    graph = import_graph(extra={"kvmharness.exitcodes": {"kvmharness.cli"}})
    cycle = find_cycle(graph)
    assert cycle is not None and "kvmharness.exitcodes" in cycle


@pytest.mark.parametrize(
    "low",
    [
        "kvmharness.checks",
        "kvmharness.kvm",
        "kvmharness.ffi",
        "kvmharness.exitcodes",
        "kvmharness.files",
        "kvmharness.scenarios.base",
        "kvmharness.snapshot.state",
    ],
)
def test_low_layers_do_not_import_front_ends(low):
    graph = import_graph()
    seen, todo = set(), [low]
    while todo:
        m = todo.pop()
        for d in graph.get(m, ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    front = sorted(
        m
        for m in seen
        if m.startswith(("kvmharness.cli", "kvmharness.report", "kvmharness.pytest_plugin"))
    )
    assert front == [], f"{low} reaches front ends: {front}"
