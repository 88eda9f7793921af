"""The layer rule of panda_lab, read from the source: no package imports upward, and no
import cycle joins two packages.

Kind tested: an import that reaches up a layer (the store importing the server's
brokerage), or two packages importing each other, which makes every change to one a
change to both and breaks import order.  Every import counts, also one inside a
function: it is a dependency all the same, only a later one.

The rule is the data below: each unit (a sub-package, or a top-level module) with its
layer and the units it may import.  A new unit must be entered here before it is used.
Members: the table is a layering (every allowed import goes down or across, and allowed
imports alone make no cycle); every module's imports are allowed; the packages'
import graph has no cycle; the root's ``__version__`` (the one name every layer may
import from it) costs no import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import panda_lab

PACKAGE = Path(panda_lab.__file__).parent
ROOT = "panda_lab"  # the root package's own module: the facade users import

#: Layer of each unit, bottom (0) to top; a unit imports only the units below it or on
#: its own layer that ALLOWED names.
LAYER: dict[str, int] = {
    # 0. plain libraries: text rules, payloads, the model's states and policies, and the
    #    physics side of an analysis (chunking, accumulators, file checks); no control plane
    "text": 0, "output": 0, "remote_errors": 0, "payload": 0, "runtime": 0, "http": 0,
    "resources": 0,
    "reads": 0,
    "model": 0, "analysis": 0,
    #    the brokerage simulator: the model's policies run in virtual time
    "sim": 0,
    # 1. the database: schema, row repositories, workflow verbs
    "store": 1,
    # 2. the server and the provisioners it drives
    "provisioners": 2, "server": 2,
    #    and the notebook's monitor widgets, which the client shows (``lab.monitor()``)
    "widgets": 2,
    # 3. programs and the user side
    "pilot": 3, "client": 3, "jupyter": 3, "cli": 3,
    #    the course's exercise checks (they read what a notebook's client made)
    "teaching": 3,
    # 4. the facade: what ``import panda_lab`` offers, entry points for IPython and Jupyter
    ROOT: 4,
}

#: The units each unit may import (besides itself).
ALLOWED: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in {
    "text": set(),
    "output": {"text"},
    "remote_errors": {"text"},
    "payload": {"text", "output", "remote_errors"},
    "runtime": set(),
    "resources": set(),
    "http": set(),
    "reads": set(),
    "model": {"text"},
    "analysis": {"model", "text", "reads", "resources"},
    "sim": {"model"},
    "store": {"model", "payload", "text"},
    # provisioners start pilots; they know sites by their own config, never the server
    "provisioners": {"model", "text", "http", "runtime", "resources"},
    # the monitor's task page draws merged histograms as the notebook does (histplot:
    # matplotlib, no widget toolkit)
    "server": {"store", "provisioners", "model", "analysis", "payload", "text", "http",
               "runtime", "widgets", "resources"},
    # resources: the read cache's size, whose memory a payload worker takes at its start
    "pilot": {"payload", "output", "remote_errors", "text", "http", "runtime", "model",
              "reads", "resources"},
    "widgets": {"model", "text"},
    "client": {"server", "widgets", "analysis", "model", "payload", "remote_errors", "output",
               "text", "http", "runtime"},
    "jupyter": {"client", "widgets", "server", "model", "output", "text", "http", "runtime"},
    "cli": {"client", "pilot", "server", "provisioners", "analysis", "model", "payload",
            "output", "text", "http", "runtime", "sim", "resources"},
    "teaching": set(),
    ROOT: {"client", "jupyter", "analysis", "payload"},
}.items()}

#: Names of the root module any unit may import: metadata, not a layer.
ROOT_METADATA = frozenset({"__version__"})

#: Modules run as programs (``python -m``) belong to the command line whatever package
#: holds them: nothing imports them.
PROGRAM = "__main__"


def unit_of(module: str) -> str:
    """The unit of a dotted module name inside panda_lab."""
    parts = module.split(".")
    if parts[-1] == PROGRAM:
        return "cli"
    return parts[1] if len(parts) > 1 else ROOT


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def imports(module: str, path: Path, top_level_only: bool = False
            ) -> Iterator[tuple[str, int]]:
    """``(imported panda_lab module, line)`` for every import of a source file, those in
    functions included (unless ``top_level_only``); ``from panda_lab import x`` counts
    as an import of the submodule ``x`` when there is one, else of the root."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    is_package = path.name == "__init__.py"
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join([*pkg, *([base] if base else [])])
            if base != ROOT and not base.startswith(ROOT + "."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = any((PACKAGE.parent / sub.replace(".", "/")).with_suffix(s).exists()
                                for s in (".py", ""))
                if base == ROOT and alias.name in ROOT_METADATA:
                    yield f"{ROOT}:{alias.name}", node.lineno
                else:
                    yield (sub if is_module else base), node.lineno


def edges() -> list[tuple[str, str, str]]:
    """``(from unit, to unit, "module:line imports target")`` for every import across
    units, the root's metadata left out."""
    out = []
    for module, path in modules():
        src = unit_of(module)
        for target, line in sorted(set(imports(module, path)), key=lambda x: (x[1], x[0])):
            if target.startswith(f"{ROOT}:"):
                continue
            dst = unit_of(target)
            if dst != src:
                out.append((src, dst, f"{module}:{line} imports {target}"))
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ---- the table is a layering ---------------------------------------------------------------
def test_every_unit_of_the_package_is_in_the_table():
    units = {unit_of(m) for m, _ in modules()}
    assert units <= set(LAYER), f"units without a layer: {sorted(units - set(LAYER))}"
    assert set(LAYER) == set(ALLOWED)


def test_the_table_allows_no_upward_import_and_no_cycle():
    for src, allowed in ALLOWED.items():
        for dst in allowed:
            assert dst in LAYER, f"{src} may import {dst}, which has no layer"
            assert LAYER[dst] <= LAYER[src], f"{src} (layer {LAYER[src]}) may import " \
                f"{dst} (layer {LAYER[dst]}): upward"
    assert find_cycles({k: set(v) for k, v in ALLOWED.items()}) == []


def test_the_cycle_finder_finds_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


# ---- the code keeps it ---------------------------------------------------------------------
def test_no_module_imports_a_unit_its_layer_may_not():
    bad = sorted(f"{src} -> {dst}: {where}" for src, dst, where in edges()
                 if dst not in ALLOWED[src])
    assert not bad, "imports against the layer rule:\n" + "\n".join(bad)


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    how: dict[tuple[str, str], str] = {}
    for src, dst, where in edges():
        graph.setdefault(src, set()).add(dst)
        how.setdefault((src, dst), where)
    cycles = find_cycles(graph)
    detail = [f"{' <-> '.join(c)}: " + "; ".join(
        how[(a, b)] for a in c for b in c if (a, b) in how) for c in cycles]
    assert not cycles, "import cycles between packages:\n" + "\n".join(detail)


def test_the_root_metadata_costs_no_import():
    """What every layer may import from the root (``__version__``) must not pull in the
    layers above: at import time the root imports nothing of panda_lab (its exports are
    loaded on first use)."""
    root = PACKAGE / "__init__.py"
    assert list(imports(ROOT, root, top_level_only=True)) == []
    tree = ast.parse(root.read_text("utf-8"))
    defined = {t.id for n in tree.body if isinstance(n, ast.Try)
               for s in n.body if isinstance(s, ast.Assign) for t in s.targets
               if isinstance(t, ast.Name)}
    assert defined >= ROOT_METADATA


@pytest.mark.parametrize("source, expected", [
    ("from panda_lab.server.brokerage import choose", "panda_lab.server.brokerage"),
    ("from panda_lab import runtime", "panda_lab.runtime"),
    ("def f():\n    import panda_lab.server.config\n", "panda_lab.server.config"),
    ("from ..server import app", "panda_lab.server.app"),
])
def test_imports_are_found_where_they_hide(tmp_path, source, expected):
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert [m for m, _ in imports("panda_lab.store.mod", path)] == [expected]
