"""Merge per-chunk results into one: the accumulator rules of a dataset analysis.

A processor returns, for each chunk, a value built from these, nested freely:

=========================  ==================================================================
``None``                   the identity: a chunk with nothing to say
``hist.Hist``, boost hist  ``a + b`` (bin by bin): same axes (type, bins, edges, flow, name,
                           label) and same storage; growing category axes may differ in their
                           categories
int, float, numpy scalar   ``a + b`` (``bool`` is refused: it is a flag, not a count)
``numpy.ndarray``          elementwise ``a + b``; the shapes must match
``dict`` (and subclasses)  union of keys, values merged per key: a key missing on one side takes
                           the other side's value (a missing key is the identity); the more
                           derived type of the two is kept, unrelated mapping types are refused
``set``                    union
``list`` / ``tuple``       elementwise, same length: ``[h_mass, h_pt, n]`` is a fixed bundle of
                           accumulators, not a sequence to extend (return an awkward array to
                           collect values across chunks)
``awkward.Array``          concatenated, ``a`` then ``b``; arrays whose types would only
                           concatenate into a union (``int64`` with ``var * int64``, records
                           with other fields) are refused
coffea's accumulators      their own ``a + b`` (``coffea.processor.AccumulatorABC``:
                           ``dict_accumulator``, ``defaultdict_accumulator``,
                           ``list_accumulator`` extends and stays one,
                           ``set_accumulator``,
                           ``value_accumulator``, ``column_accumulator`` concatenates), as in
                           coffea, whatever builtin type they also derive from
anything else with ``+``   ``a + b``, e.g. ``collections.Counter`` or a user's class
=========================  ==================================================================

These are coffea's rules (``coffea.processor.accumulate``: ``None`` skipped, ``+`` for what
has it, union for sets and mappings with missing keys copied over, mapping types related by
inheritance) with three deliberate differences: lists and tuples merge elementwise, awkward
arrays concatenate, and what boost-histogram would merge into nonsense (axes that differ only
in their flow bins) is refused.

``rules="coffea"`` (:data:`COFFEA`) is for a coffea processor (``processor.ProcessorABC``),
whose author expects coffea's own ``Runner``'s result: there lists and tuples concatenate
(``a + b``, as coffea's ``accumulate`` does), and their items are not accumulators to
check (a list of strings or of event numbers is fine).  Every other rule is the same;
awkward arrays still concatenate (coffea's ``+`` would add them elementwise, which fails
for chunks of different lengths: coffea users collect columns with
``column_accumulator``, which concatenates too).  :func:`rules_for` says which rules a
processor gets.

:func:`merge_all` takes results in chunk-index order and keeps it, so concatenated arrays come
out in dataset order whichever job finished first. It reduces as a balanced tree (adjacent pairs
first), streaming: memory holds O(log n) partial results, concatenation costs O(n log n) rather
than O(n^2), and float sums add numbers of similar size.

Incompatible values raise :class:`MergeError` (a ``TypeError``) naming where in the nested
result they met and what differed, e.g. ``result['mass']: axis 0 ('mass'): Regular(10, 0, 150,
name='mass') vs Regular(20, 0, 150, name='mass')``; the left side is the result merged so far.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Set
from typing import Any

import numpy as np

#: Longest description of one side of a difference (a variable axis' edges can be long).
_SHOWN = 160

#: The merge rules: panda-lab's own (the default) and coffea's for coffea processors.
PANDA, COFFEA = "panda-lab", "coffea"
RULES = (PANDA, COFFEA)


def rules_for(processor: Any) -> str:
    """:data:`COFFEA` for a coffea processor (an instance of ``coffea.processor.
    ProcessorABC``, checked without importing coffea when it is not loaded), else
    :data:`PANDA`."""
    if not any(c.__module__.startswith("coffea.") for c in type(processor).__mro__):
        return PANDA
    from coffea.processor import ProcessorABC

    return COFFEA if isinstance(processor, ProcessorABC) else PANDA


def _check_rules(rules: str) -> None:
    if rules not in RULES:
        raise ValueError(f"rules must be one of {', '.join(map(repr, RULES))}, "
                         f"not {rules!r}")


class MergeError(TypeError):
    """Two results that cannot be merged.

    ``path`` says where in the nested result (Python subscripts from ``result``, e.g.
    ``result['mass']['hist']``), ``reason`` what differed, left side (merged so far) first.
    Raised where a job's result meets the others, it also names that input: ``task``,
    ``job_index``, ``chunks`` (dicts with ``path``, ``start``, ``stop`` and ``file_index``: the
    file and entry range of each chunk), and what it was merged into: ``merged_jobs`` (job
    indices, on the server) or ``merged_chunks`` (earlier chunks of the same job, on a pilot).
    """

    #: The error category a pilot reports for it: never retried, the task fails at once.
    panda_category = "merge"

    def __init__(self, path: str, reason: str, *, task: int | None = None,
                 job_index: int | None = None, chunks: Iterable[dict] = (),
                 merged_jobs: Iterable[int] = (), merged_chunks: Iterable[dict] = ()) -> None:
        self.path = path
        self.reason = reason
        self.task = task
        self.job_index = job_index
        self.chunks = [_chunk_fields(c) for c in chunks]
        self.merged_jobs = sorted(merged_jobs)
        self.merged_chunks = [_chunk_fields(c) for c in merged_chunks]
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}: {self.reason}"
        if self.job_index is None and not self.chunks:
            return where
        who = f"job {self.job_index}" if self.job_index is not None else "a chunk"
        if self.chunks:
            who += f" ({_ranges(self.chunks)})"
        if self.merged_jobs:
            jobs = ", ".join(map(str, self.merged_jobs[:8]))
            more = f", ... ({len(self.merged_jobs)} jobs)" if len(self.merged_jobs) > 8 else ""
            into = f"the merged result of job{'s' * (len(self.merged_jobs) > 1)} {jobs}{more}"
        elif self.merged_chunks:
            into = f"the job's result of {_ranges(self.merged_chunks)}"
        else:
            into = ""
        task = f"task {self.task}: " if self.task is not None else ""
        return (f"{task}the result of {who} cannot be merged"
                f"{' into ' + into if into else ''}: {where}")

    def to_dict(self) -> dict:
        """A JSON-able form, for the server to keep and send; :meth:`from_dict` reverses it.

        Keys: ``path``, ``reason``, ``task``, ``job_index``, ``chunks``, ``merged_jobs``,
        ``merged_chunks`` and ``message`` (``str(self)``)."""
        return {"path": self.path, "reason": self.reason, "task": self.task,
                "job_index": self.job_index, "chunks": self.chunks,
                "merged_jobs": self.merged_jobs, "merged_chunks": self.merged_chunks,
                "message": str(self)}

    @classmethod
    def from_dict(cls, d: dict) -> MergeError:
        """The error :meth:`to_dict` recorded (``message`` is recomputed, not read).
        ``KeyError`` when ``path`` or ``reason`` is missing."""
        return cls(d["path"], d["reason"], task=d.get("task"), job_index=d.get("job_index"),
                   chunks=d.get("chunks") or (), merged_jobs=d.get("merged_jobs") or (),
                   merged_chunks=d.get("merged_chunks") or ())

    def __reduce__(self):
        d = self.to_dict()
        d.pop("message")
        return (_rebuild, (d,))


def _rebuild(d: dict) -> MergeError:
    return MergeError.from_dict(d)


def _chunk_fields(c: dict) -> dict:
    return {k: c[k] for k in ("file_index", "path", "start", "stop") if k in c}


def _ranges(chunks: list[dict]) -> str:
    return "; ".join(f"{c.get('path')} entries {c.get('start')}-{c.get('stop')}" for c in chunks)


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.number) and not isinstance(x, bool | np.bool_)


def _kind(x: Any) -> str:
    """The merge rule a value follows; two values merge only if their kinds are equal."""
    if _is_number(x):
        return "number"
    if _is_coffea_accumulator(x):  # before dict/list/set: coffea's own ``+`` decides
        return "other"
    if isinstance(x, bool | np.bool_ | str | bytes):
        return "refused"
    if isinstance(x, np.ndarray):
        return "ndarray"
    if isinstance(x, dict):
        return "dict"
    if isinstance(x, list | tuple):
        return "sequence"
    if isinstance(x, Set):
        return "set"
    if _is_awkward(x):
        return "awkward"
    if _is_histogram(x):
        return "hist"
    if not hasattr(type(x), "__add__"):
        return "refused"
    return "other"


def _is_coffea_accumulator(x: Any) -> bool:
    if not any(c.__module__.startswith("coffea.") for c in type(x).__mro__):
        return False  # a user's subclass of coffea's accumulators counts too
    from coffea.processor.accumulator import AccumulatorABC

    return isinstance(x, AccumulatorABC)


def _is_awkward(x: Any) -> bool:
    module = type(x).__module__
    if not module.startswith("awkward"):
        return False
    import awkward as ak

    return isinstance(x, ak.Array)


def _is_histogram(x: Any) -> bool:
    module = type(x).__module__
    if not module.startswith(("hist", "boost_histogram")):
        return False
    import boost_histogram as bh

    return isinstance(x, bh.Histogram)


def _refusal(x: Any) -> str:
    return (f"{type(x).__name__} is not an accumulator (return a count, an array, a "
            "histogram, or a dict or list of them)")


def check_accumulator(value: Any, path: str = "result", rules: str = PANDA) -> None:
    """Raise :class:`MergeError` if ``value`` is not made of accumulators (the module's table):
    a chunk's result is checked even when it is the first, so that a ``str`` or an object
    without ``+`` is refused at once, not when a second chunk arrives.

    ``path`` is how the error names ``value`` (``result['mass']``); nested dicts, lists and
    tuples are checked member by member (lists and tuples not under ``rules="coffea"``,
    which concatenates them).  Returns ``None`` when ``value`` is fine."""
    if value is None:
        return
    kind = _kind(value)
    if kind == "refused":
        raise MergeError(path, _refusal(value))
    if kind == "dict":
        for key, v in value.items():
            check_accumulator(v, f"{path}[{key!r}]", rules)
    elif kind == "sequence" and rules != COFFEA:
        for i, v in enumerate(value):
            check_accumulator(v, f"{path}[{i}]", rules)


def hist_difference(a: Any, b: Any) -> str | None:
    """What keeps two histograms from merging bin by bin, in words (``None``: nothing).

    boost-histogram refuses most differences with a bare "axes not mergable", and adds
    axes that differ only in their flow bins into garbage; this names the difference.

    Returns the first difference found, in this order: histogram types, number of axes,
    each axis (``"axis 0 ('mass'): Regular(...) vs Regular(...)"``; growing category axes
    may differ in their categories), storage type.  For ``hist`` and boost-histogram
    objects only."""
    if type(a) is not type(b):
        return (f"a {type(a).__module__.split('.')[0]}.{type(a).__name__} vs a "
                f"{type(b).__module__.split('.')[0]}.{type(b).__name__}")
    if a.ndim != b.ndim:
        return f"{a.ndim} axes vs {b.ndim} axes: {_short(list(a.axes))} vs {_short(list(b.axes))}"
    for i, (x, y) in enumerate(zip(a.axes, b.axes, strict=True)):
        name = getattr(x, "name", "") or ""
        label = f"axis {i}" + (f" ({name!r})" if name else "")
        growing = x.traits.growth and y.traits.growth and type(x) is type(y)
        same = (x.traits == y.traits and getattr(x, "name", None) == getattr(y, "name", None)
                and getattr(x, "label", None) == getattr(y, "label", None)) if growing else x == y
        if not same:
            left, right = _short(x), _short(y)
            if left == right:
                left, right = f"{left} {x.traits}", f"{right} {y.traits}"
                if left == right:
                    left, right = _short(x.metadata), _short(y.metadata)
            return f"{label}: {left} vs {right}"
    if a.storage_type is not b.storage_type:
        return f"storage {a.storage_type.__name__} vs {b.storage_type.__name__}"
    return None


def _merge_mappings(a: dict, b: dict, path: str, rules: str) -> dict:
    if isinstance(a, type(b)):       # the more derived type of the two (coffea's rule)
        out = copy.copy(a)
    elif isinstance(b, type(a)):
        out = copy.copy(b)
        out.clear()
        dict.update(out, a)  # plain insertion: a Counter's ``update`` would add
    else:
        raise MergeError(path, f"mappings of unrelated types: {type(a).__name__} vs "
                               f"{type(b).__name__}")
    for key, value in b.items():
        out[key] = merge(a[key], value, f"{path}[{key!r}]", rules) if key in a else value
    return out


def merge(a: Any, b: Any, path: str = "result", rules: str = PANDA) -> Any:
    """Merge two results of the same shape (see the module's table); neither is modified.

    ``a`` is the result merged so far and ``b`` the next one: a :class:`MergeError` names
    ``a``'s side first.  ``path`` is how errors name the top level (``"result"``).

    Returns the merged value, of ``a``'s type (for mappings the more derived of the two);
    ``None`` only when both are ``None``.  Raises :class:`MergeError` (a ``TypeError``) at
    the first pair of values the table refuses: different kinds, a ``bool``, ``str`` or
    object without ``+``, sequences of other lengths, arrays of other shapes, histograms
    that differ (:func:`hist_difference`), unrelated mapping types, awkward arrays that
    concatenate only into a union, or a ``+`` that raises; one side alone that is no
    accumulator is refused too (:func:`check_accumulator`).  ``rules``: :data:`PANDA` or
    :data:`COFFEA` (lists and tuples concatenate); ``ValueError`` for another."""
    if a is None or b is None:
        _check_rules(rules)
        value = b if a is None else a
        check_accumulator(value, path, rules)
        return value
    kind_a, kind_b = _kind(a), _kind(b)
    names = f"{type(a).__name__} with {type(b).__name__}"
    if "refused" in (kind_a, kind_b):
        raise MergeError(path, _refusal(a if kind_a == "refused" else b))
    if kind_a != kind_b:
        raise MergeError(path, f"cannot merge {names}")
    if kind_a == "dict":
        return _merge_mappings(a, b, path, rules)
    if kind_a == "sequence" and rules == COFFEA:
        if isinstance(a, list) != isinstance(b, list):
            raise MergeError(path, f"cannot concatenate {names}")
        return type(a)([*a, *b]) if isinstance(a, list) else tuple(a) + tuple(b)
    if kind_a == "sequence":
        if len(a) != len(b):
            raise MergeError(
                path,
                f"cannot merge {names} of lengths {len(a)} and {len(b)}: "
                "sequences merge elementwise",
            )
        merged = [merge(x, y, f"{path}[{i}]", rules)
                  for i, (x, y) in enumerate(zip(a, b, strict=True))]
        return type(a)(merged) if isinstance(a, list) else _same_tuple(a, merged)
    if kind_a == "set":
        return a | b
    if kind_a == "ndarray" and a.shape != b.shape:
        raise MergeError(path, f"cannot add arrays of shapes {a.shape} and {b.shape}")
    if kind_a == "hist":
        diff = hist_difference(a, b)
        if diff is not None:
            raise MergeError(path, f"histograms differ: {diff}")
    if kind_a == "awkward":
        return _concatenate(a, b, path)
    if isinstance(a, list) and isinstance(b, list) and _is_coffea_accumulator(a):
        # coffea's list_accumulator: ``list.__add__`` comes first in its MRO and returns a
        # plain list, which the next merge would take for a bundle; extend, keep the type.
        return type(a)([*a, *b])
    try:
        out = a + b
    except Exception as exc:
        raise MergeError(path, f"cannot merge {names}: {exc}") from exc
    if out is NotImplemented:
        raise MergeError(path, f"cannot merge {names}")
    if kind_a == "hist":
        _keep_variances_known(a, b, out)
    return out


def _keep_variances_known(a: Any, b: Any, out: Any) -> None:
    """boost-histogram forgets, on ``a + b``, that unweighted counts have variances equal
    to the counts (``variances()`` turns ``None``): a sum of Poisson counts is Poisson,
    so ``out`` keeps them known when both sides had them (its ``_variance_known`` flag,
    boost-histogram's own).  Without it a merged histogram could show no error bars."""
    if getattr(out, "_variance_known", True) or not hasattr(a, "variances"):
        return
    if a.variances() is not None and b.variances() is not None:
        out._variance_known = True


def _concatenate(a: Any, b: Any, path: str) -> Any:
    import awkward as ak

    try:
        out = ak.concatenate([a, b])
    except Exception as exc:
        raise MergeError(path, f"cannot concatenate awkward arrays: {exc}") from exc
    ta, tb = str(a.type.content), str(b.type.content)
    if ta != tb and "union[" in str(out.type) and "union[" not in ta + tb:
        raise MergeError(path, f"awkward arrays of types {ta} vs {tb} concatenate only into "
                               "a union of both: each chunk must return the same type")
    return out


def _same_tuple(a: tuple, items: list) -> tuple:
    """A tuple of ``a``'s type; named tuples are rebuilt from fields, plain ones from a list."""
    if hasattr(a, "_fields"):
        return type(a)(*items)
    return type(a)(items)


def merge_all(results: Iterable[Any], rules: str = PANDA) -> Any:
    """Merge results given in chunk-index order into one (``None`` for no results).

    Streaming balanced tree: a partial result of 2**k chunks is merged only with its neighbour of
    the same size, like carrying in a binary counter, so order is kept and depth is log n.
    ``results`` is consumed once (a generator is fine).  Raises :class:`MergeError` as
    :func:`merge` does; a single result is checked with :func:`check_accumulator`.
    ``rules`` as :func:`merge`'s.
    """
    _check_rules(rules)
    stack: list[tuple[int, Any]] = []  # (level, partial), levels strictly decreasing upwards
    seen = 0
    for item in results:
        seen += 1
        level, value = 0, item
        while stack and stack[-1][0] == level:
            _, left = stack.pop()
            value = merge(left, value, rules=rules)
            level += 1
        stack.append((level, value))
    if not stack:
        return None
    if seen == 1:  # never met another result: check it alone
        check_accumulator(stack[0][1], rules=rules)
    value = stack.pop()[1]
    while stack:
        value = merge(stack.pop()[1], value, rules=rules)
    return value
