"""The package layout: no import circles, and the original import paths still work.

The import graph is built from the source files with ``ast`` (every ``import`` and
``from ... import``, also those inside functions or under ``TYPE_CHECKING``: a
circle hidden behind a lazy import is still a layout problem).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ticketing"


def module_names(root: Path) -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's own modules that ``name`` imports."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
        found |= {t for t in targets if t in mods and t != name}
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = module_names(root)
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_circles() -> None:
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_names_a_circle(tmp_path: Path) -> None:
    """The check can fail: a two-module circle in a scratch package is found and named."""
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    assert find_cycle(import_graph(pkg)) == ["demo.a", "demo.sub.b", "demo.a"]
    (pkg / "sub" / "b.py").write_text("import json\n")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("ticketing.main_server", "MainServer"),
        ("ticketing.client_server", "ClientServer"),
        ("ticketing.redirect_server", "RedirectServer"),
        ("ticketing", "MainServer"),
        ("ticketing", "ClientServer"),
        ("ticketing", "RedirectServer"),
        ("ticketing", "write_cluster_keys"),
    ],
)
def test_the_original_import_paths_still_work(module: str, name: str) -> None:
    import importlib

    assert hasattr(importlib.import_module(module), name)


def test_one_package_per_process_role() -> None:
    """Each role's code lives in its own package; nothing of a role sits at the top."""
    for role in ("main", "shard", "front", "market", "ledger", "bench"):
        assert (PACKAGE / role / "__init__.py").is_file(), role
    graph = import_graph(PACKAGE)
    # A shard never imports main's ledger, the marketplace or the front.
    for name, deps in graph.items():
        if name.startswith("ticketing.shard"):
            bad = {d for d in deps if d.startswith(("ticketing.ledger", "ticketing.market"))}
            assert not bad, f"{name} imports {bad}"
