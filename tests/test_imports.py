"""Imports run downhill (DESIGN.md §6), read from the source with ``ast``.

The daemons (smtpd in ``server``, ``qmgr``, ``delivery``) use the libraries below them and
never each other; only the master, which starts them, reaches down into their entry points.
A type that two daemons share lives in a library (``mta.queue.results``, ``mta.queue.ipc``).
The sans-I/O core (``mta.protocol``) imports nothing else of ours (and, tests/protocol/
test_sans_io.py checks, nothing that does I/O).
Imports inside functions count too: a lazy import is still a dependency, and a cycle through
one fails at run time, not at start.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "mta"

# Each unit (a package or a top-level module) and the units it may import besides itself.
LIBRARIES: dict[str, frozenset[str]] = {
    "mta.exitcodes": frozenset(),
    "mta.protocol": frozenset(),
    "mta.config": frozenset(),
    "mta.metrics": frozenset(),
    "mta.logs": frozenset(),
    "mta.framing": frozenset(),  # length-prefixed frames on the daemons' sockets
    "mta.private_file": frozenset({"mta.config"}),  # secrets others must not read
    "mta.parser_backend": frozenset({"mta.protocol"}),
    "mta.queue": frozenset(
        {"mta.config", "mta.metrics", "mta.logs", "mta.exitcodes", "mta.framing"}
    ),
    # the edge's decisions: tables and pure functions over the session's facts
    "mta.policy": frozenset(
        {
            "mta.config",
            "mta.protocol",
            "mta.metrics",
            "mta.logs",
            "mta.framing",
            "mta.private_file",
        }
    ),
}
_BELOW_DAEMONS = frozenset(LIBRARIES) | {"mta"}
DAEMONS: dict[str, frozenset[str]] = {
    "mta.server": _BELOW_DAEMONS,
    "mta.qmgr": _BELOW_DAEMONS,
    "mta.delivery": _BELOW_DAEMONS,
    "mta.anvil": _BELOW_DAEMONS,
}
# The master supervises: it binds listeners and starts each daemon's main function.
SUPERVISOR = {"mta.master": _BELOW_DAEMONS | frozenset(DAEMONS)}
# may use anything
ENTRY_POINTS = {"mta.cli", "mta.queue_cli", "mta.queue_select", "mta.sendmail", "mta.__main__"}

ALLOWED = {**LIBRARIES, **DAEMONS, **SUPERVISOR}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, type_checking: bool = True) -> set[str]:
    """Every module ``path`` imports, at any depth of the file, as absolute names;
    ``type_checking=False`` leaves out what is imported only for the type checker."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk(tree, type_checking):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # ``from mta import metrics`` imports the module mta.metrics
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _walk(node: ast.AST, type_checking: bool) -> Iterable[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if not type_checking and _is_type_checking_block(child):
            continue
        yield child
        yield from _walk(child, type_checking)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    )


def graph(type_checking: bool = True) -> dict[str, set[str]]:
    """Our modules and which of our modules each imports."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = imports_of(path, type_checking)
        edges[name] = {m for m in imported if m in modules and m != name}
    return edges


def unit_of(module: str) -> str:
    """The package or top-level module that ``module`` belongs to (``mta.queue.spool`` →
    ``mta.queue``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def violations(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(edges.items()):
        unit = unit_of(module)
        if unit in ENTRY_POINTS or unit == "mta":
            continue
        allowed = ALLOWED.get(unit)
        if allowed is None:
            found.append(f"{module}: its unit {unit} has no place in the layers of this test")
            continue
        for target in sorted(targets):
            target_unit = unit_of(target)
            if target_unit not in (unit, "mta") and target_unit not in allowed:
                found.append(f"{module} imports {target} ({unit} may not use {target_unit})")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_import_runs_downhill() -> None:
    assert violations(graph()) == []


def test_no_import_cycles() -> None:
    """No cycle at run time.  A type named back under ``TYPE_CHECKING`` (the protocol that
    names its context, the HTTP handler that names its arbiter) is not one; the package
    ``__init__`` of a parent is imported first by Python anyway."""
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph(False).items()}
    assert cycles(edges) == []


def test_the_checks_catch_what_they_are_for() -> None:
    """The rules above would fail on the shapes this project once had."""
    edges = {
        "mta.server.worker": {"mta.master.children"},
        "mta.master.children": {"mta.server.worker"},
        "mta.queue.ipc": {"mta.delivery.results"},
        "mta.delivery.results": set(),
        "mta.qmgr.manager": {"mta.delivery.dsn"},
    }
    assert violations(edges) == [
        "mta.qmgr.manager imports mta.delivery.dsn (mta.qmgr may not use mta.delivery)",
        "mta.queue.ipc imports mta.delivery.results (mta.queue may not use mta.delivery)",
        "mta.server.worker imports mta.master.children (mta.server may not use mta.master)",
    ]
    assert cycles(edges) == [["mta.master.children", "mta.server.worker"]]
