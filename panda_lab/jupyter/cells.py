"""Notebook cells as jobs: what a cell reads, what it binds, and running it on a pilot.

A cell ships its source and only the notebook variables it reads, found from the code
with :mod:`symtable` (the compiler's own view of scopes), not the whole namespace: a
notebook holding a 2 GB array it does not use must not send it.  The names the cell binds
at its top level come back.  This module has no IPython in it, so a pilot imports it to
run the cell, and the rules are unit-tested without a kernel.
"""

from __future__ import annotations

import builtins
import linecache
import pickle
import symtable
from collections.abc import Sequence
from typing import Any

import cloudpickle

from panda_lab.output import tail_delta

#: The file name a cell's code runs under: it appears in remote tracebacks.
CELL_FILE = "<panda cell>"

#: Names a notebook holds that are the kernel's, never the user's data.
KERNEL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


class CellError(ValueError):
    """The cell cannot be run as a job: the message says which name or line."""


def _table(source: str) -> symtable.SymbolTable:
    try:
        return symtable.symtable(source, CELL_FILE, "exec")
    except SyntaxError as exc:
        raise CellError(f"the cell is not plain Python (line {exc.lineno}: {exc.msg}); "
                        "IPython syntax such as %magics or !commands cannot run as a job") \
            from None


def read_names(source: str) -> set[str]:
    """Global names the cell reads: at its top level, or from inside the functions and
    classes it defines (their free globals).  Builtins are among them; they are not in
    a notebook's namespace unless the user rebound one, and then the user's is meant."""
    names: set[str] = set()
    stack = [_table(source)]
    while stack:
        table = stack.pop()
        top = table.get_type() == "module"
        for sym in table.get_symbols():
            if sym.is_referenced() and (top or sym.is_global()):
                names.add(sym.get_name())
        stack.extend(table.get_children())
    return names


def bound_names(source: str) -> list[str]:
    """Names the cell binds at its top level (assignments, imports, defs, for targets),
    in source order: these come back into the notebook."""
    table = _table(source)
    order = {name: i for i, name in enumerate(_first_seen(source))}
    names = [s.get_name() for s in table.get_symbols()
             if s.is_assigned() or s.is_imported() or s.is_namespace()]
    return sorted(names, key=lambda n: order.get(n, len(order)))


def _first_seen(source: str) -> list[str]:
    import ast

    spots: list[tuple[int, int, str]] = []
    for node in ast.walk(ast.parse(source)):
        where = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
        if isinstance(node, ast.Name):
            spots.append((*where, node.id))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            spots.append((*where, node.name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            spots += [(*where, (a.asname or a.name).split(".")[0]) for a in node.names]
    return list(dict.fromkeys(name for _, _, name in sorted(spots)))


def capture(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """The notebook variables the cell reads, each checked to travel (by pickling it
    now), so a bad one is named here rather than failing as a whole payload."""
    shipped: dict[str, Any] = {}
    for name in sorted(read_names(source)):
        if name.startswith("_") or name in KERNEL_NAMES or name not in namespace:
            continue
        value = namespace[name]
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            raise CellError(f"the cell reads {name!r}, which cannot be sent to a job "
                            f"({type(exc).__name__}: {exc}); compute it inside the cell "
                            "or pass something picklable") from None
        shipped[name] = value
    return shipped


def split(values: Sequence, count: int) -> list[Sequence]:
    """``values`` cut into ``count`` contiguous chunks whose sizes differ by one at most
    (the first ones larger); chunks may be empty when there are fewer values than jobs."""
    if count < 1:
        raise CellError("--parallel needs at least 1 job")
    try:
        n = len(values)
    except TypeError:
        raise CellError(f"--over needs a sequence (list, tuple, array), not "
                        f"{type(values).__name__}") from None
    base, extra = divmod(n, count)
    out, start = [], 0
    for i in range(count):
        stop = start + base + (i < extra)
        out.append(values[start:stop])
        start = stop
    return out


def run_cell(source: str, variables: dict[str, Any], names: list[str], index: int = 0,
             count: int = 1, chunk: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a cell on a pilot; the job's result is ``{"values": ..., "unsent": ...}``.

    ``PANDA_INDEX`` and ``PANDA_COUNT`` tell a cell run with ``--parallel`` which of
    the jobs it is; ``chunk`` holds this job's share of the ``--over`` variables.
    Bound values that cannot be pickled stay behind, named in ``unsent``."""
    lines = source.splitlines(keepends=True)
    linecache.cache[CELL_FILE] = (len(source), None, lines, CELL_FILE)
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins,
                          "PANDA_INDEX": index, "PANDA_COUNT": count}
    ns.update(variables)
    ns.update(chunk or {})
    exec(compile(source, CELL_FILE, "exec"), ns)  # running the cell is the job
    values: dict[str, Any] = {}
    unsent: dict[str, str] = {}
    for name in names:
        if name not in ns:
            continue  # bound on a branch that did not run
        try:
            pickle.loads(cloudpickle.dumps(ns[name]))
        except Exception as exc:
            unsent[name] = f"{type(exc).__name__}: {exc}"
            continue
        values[name] = ns[name]
    return {"values": values, "unsent": unsent}


def new_output(old: str, new: str) -> str:
    """What ``new`` adds to ``old``: both are tails of one growing stream, so ``new``
    starts somewhere inside ``old`` once the stream has grown past the tail's size.

    A tail that does not hold all of its stream starts with a marker line counting what
    it leaves out (:mod:`panda_lab.output`): then the counts say exactly what is new, and
    output that no look caught is shown as a marker that says how much it was and where
    the full output is."""
    delta = tail_delta(old, new)
    if delta is not None:
        return delta
    if new.startswith(old):
        return new[len(old):]
    head = new[:1]
    at = old.find(head)
    while at >= 0:  # the longest end of old that new starts with
        if new.startswith(old[at:]):
            return new[len(old) - at:]
        at = old.find(head, at + 1)
    return "[...]\n" + new
