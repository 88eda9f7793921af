"""Notebook cells as jobs: what a cell reads, what it binds, and running it on a pilot.

A cell ships its source and only the notebook variables it reads, found from the code
with :mod:`symtable` (the compiler's own view of scopes), not the whole namespace: a
notebook holding a 2 GB array it does not use must not send it.  A name is read when the
cell's top level uses it, or a function, lambda, comprehension or class body of the cell
uses it as a global; ``x += 1`` and ``del x`` read ``x`` too.  The names the cell binds
at its top level come back, and so do those its functions assign through ``global``; a
name the cell deletes is deleted from the notebook.

Every user name travels, whatever it looks like (``_k``, ``__x``, ``sum``).  Only the
names IPython keeps in a notebook for itself stay behind, both ways (:func:`kernel_name`).

This module has no IPython in it, so a pilot imports it to run the cell, and the rules
are unit-tested without a kernel.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import pickle
import re
import symtable
from collections.abc import Mapping, Sequence
from typing import Any

import cloudpickle

from panda_lab.output import tail_delta

#: The file name a cell's code runs under: it appears in remote tracebacks.
CELL_FILE = "<panda cell>"

#: Names IPython keeps in a notebook for itself: its input and output histories
#: (``InteractiveShell.init_user_ns``), the status of the last ``!command``
#: (``InteractiveShell.system``) and the module's own names (``prepare_user_module``).
KERNEL_NAMES = frozenset({"In", "Out", "_ih", "_oh", "_dh", "_exit_code",
                          "__name__", "__doc__", "__package__", "__loader__", "__spec__",
                          "__builtin__", "__builtins__"})

#: The names IPython sets after every cell: the output history's ``_``, ``__``, ``___``
#: and ``_N`` (``DisplayHook.update_user_ns``), the input history's ``_i``, ``_ii``,
#: ``_iii`` and ``_iN`` (``HistoryManager.store_inputs``).
HISTORY_NAME = re.compile(r"_{1,3}|_i{1,3}|_i?[0-9]+")

#: Objects the shell puts in a notebook when it starts (``init_user_ns``): the kernel's
#: while they hold the shell's object, the user's once rebound (``open = my_open``).
SHELL_OBJECTS = frozenset({"get_ipython", "exit", "quit", "open"})


class CellError(ValueError):
    """The cell cannot be run as a job: the message says which name or line."""


def _table(source: str) -> symtable.SymbolTable:
    try:
        return symtable.symtable(source, CELL_FILE, "exec")
    except SyntaxError as exc:
        raise CellError(f"the cell is not plain Python (line {exc.lineno}: {exc.msg}); "
                        "IPython syntax such as %magics or !commands cannot run as a job") \
            from None


def kernel_name(name: str) -> bool:
    """Whether ``name`` is one IPython keeps in a notebook for itself (:data:`KERNEL_NAMES`,
    :data:`HISTORY_NAME`): such a name is never sent to a job nor brought back from one,
    so a cell's throwaway ``for _ in ...`` does not stop IPython updating ``_``.  Any
    other name is the user's, underscores or not (``_k``, ``__x``, ``_i_max``, ``_1a``).
    Never raises."""
    return name in KERNEL_NAMES or HISTORY_NAME.fullmatch(name) is not None


def read_names(source: str) -> set[str]:
    """Global names the cell reads: at its top level, or from inside the functions,
    lambdas, comprehensions and classes it defines (their free globals), including
    decorators, default values and f-strings.  ``x += 1`` and ``del x`` read ``x``
    (symtable counts both as bindings only).  Builtins are among the names; they are not
    in a notebook's namespace unless the user rebound one, and then the user's is meant.

    Returns the set of names.  Raises :class:`CellError` (a ``ValueError``) naming the
    line when the cell is not plain Python (a ``SyntaxError``, ``%magic`` or ``!cmd``)."""
    top = _table(source)
    names: set[str] = set()
    global_somewhere: set[str] = set()
    stack = [top]
    while stack:
        table = stack.pop()
        for sym in table.get_symbols():
            if table is top or sym.is_global():
                global_somewhere.add(sym.get_name())
                if sym.is_referenced():
                    names.add(sym.get_name())
        stack.extend(table.get_children())
    return names | (_updated_or_deleted(source) & global_somewhere)


def _updated_or_deleted(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del):
            names.add(node.id)
    return names


def bound_names(source: str) -> list[str]:
    """Names the cell binds at its top level (assignments, imports, defs, for targets,
    ``del``) or through ``global`` in its functions, in source order, less IPython's own
    (:func:`kernel_name`): these come back into the notebook.

    Returns the names, in order of first appearance in the source.  Raises
    :class:`CellError` naming the line when the cell is not plain Python."""
    table = _table(source)
    order = {name: i for i, name in enumerate(_first_seen(source))}
    names = {s.get_name() for s in table.get_symbols()
             if s.is_assigned() or s.is_imported() or s.is_namespace()}
    stack = list(table.get_children())
    while stack:
        inner = stack.pop()
        names.update(s.get_name() for s in inner.get_symbols()
                     if s.is_declared_global() and s.is_assigned())
        stack.extend(inner.get_children())
    return sorted((n for n in names if not kernel_name(n)),
                  key=lambda n: (order.get(n, len(order)), n))


def _first_seen(source: str) -> list[str]:
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


def capture(source: str, namespace: Mapping[str, Any],
            shell_objects: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The notebook variables the cell reads, each checked to travel (by pickling it
    now), so a bad one is named here rather than failing as a whole payload.

    IPython's own names stay behind (:func:`kernel_name`), and so do ``get_ipython``,
    ``exit``, ``quit`` and ``open`` while they hold what ``shell_objects`` (the shell's
    ``user_ns_hidden``) holds; without it, by name.  Raises :class:`CellError` naming a
    variable that cannot be pickled (with cloudpickle's error), or when the cell is not
    plain Python.

    Returns ``{name: value}`` of the names read that ``namespace`` holds, in name
    order; names the cell reads but the notebook lacks (builtins, names the cell binds
    first) are left out."""
    missing = object()
    shipped: dict[str, Any] = {}
    for name in sorted(read_names(source)):
        if kernel_name(name) or name not in namespace:
            continue
        value = namespace[name]
        if name in SHELL_OBJECTS and (
                shell_objects is None or shell_objects.get(name, missing) is value):
            continue
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
    (the first ones larger); chunks may be empty when there are fewer values than jobs.

    Returns ``count`` slices of ``values`` (of its own type: list, tuple, array...).
    Raises :class:`CellError` when ``count`` < 1 ("--parallel needs at least 1 job") or
    ``values`` has no length ("--over needs a sequence ...")."""
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
    """Run a cell on a pilot; the job's result is ``{"values": {name: value},
    "unsent": {name: why}, "deleted": [name]}``.

    ``PANDA_INDEX`` and ``PANDA_COUNT`` tell a cell run with ``--parallel`` which of
    the jobs it is; ``chunk`` holds this job's share of the ``--over`` variables.
    Bound values that cannot be pickled stay behind, named in ``unsent``; ``deleted``
    names those of ``names`` the cell had and deleted (``del x``).

    ``variables`` are the notebook values :func:`capture` shipped; ``names`` those of
    :func:`bound_names`.  Whatever the cell raises propagates (the job fails with it,
    its traceback pointing into the cell's lines)."""
    lines = source.splitlines(keepends=True)
    linecache.cache[CELL_FILE] = (len(source), None, lines, CELL_FILE)
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins,
                          "PANDA_INDEX": index, "PANDA_COUNT": count}
    ns.update(variables)
    ns.update(chunk or {})
    had = set(ns)
    exec(compile(source, CELL_FILE, "exec"), ns)  # running the cell is the job
    values: dict[str, Any] = {}
    unsent: dict[str, str] = {}
    deleted: list[str] = []
    for name in names:
        if name not in ns:
            if name in had:
                deleted.append(name)
            continue  # else bound on a branch that did not run
        try:
            pickle.loads(cloudpickle.dumps(ns[name]))
        except Exception as exc:
            unsent[name] = f"{type(exc).__name__}: {exc}"
            continue
        values[name] = ns[name]
    return {"values": values, "unsent": unsent, "deleted": deleted}


def new_output(old: str, new: str) -> str:
    """What ``new`` adds to ``old``: both are tails of one growing stream, so ``new``
    starts somewhere inside ``old`` once the stream has grown past the tail's size.

    A tail that does not hold all of its stream starts with a marker line counting what
    it leaves out (:mod:`panda_lab.output`): then the counts say exactly what is new, and
    output that no look caught is shown as a marker that says how much it was and where
    the full output is.

    Returns the new text (``""`` when nothing is new); without markers, the longest end
    of ``old`` that ``new`` starts with is skipped, and when none is found all of
    ``new`` comes behind a ``"[...]"`` line.  Never raises."""
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
