"""Merge per-chunk results into one: the accumulator rules of a dataset analysis.

A processor returns, for each chunk, a value built from these, nested freely:

=========================  ==================================================================
``None``                   the identity: a chunk with nothing to say
``hist.Hist``, boost hist  ``a + b`` (bin by bin; the axes must match)
int, float, numpy scalar   ``a + b`` (``bool`` is refused: it is a flag, not a count)
``numpy.ndarray``          elementwise ``a + b``; the shapes must match
``dict`` (and subclasses)  union of keys, values merged per key; the type of ``a`` is kept
``list`` / ``tuple``       elementwise, same length: ``[h_mass, h_pt, n]`` is a fixed bundle of
                           accumulators, not a sequence to extend (return an awkward array to
                           collect values across chunks)
``awkward.Array``          concatenated, ``a`` then ``b``
anything else with ``+``   ``a + b``, e.g. ``collections.Counter`` or a user's class
=========================  ==================================================================

:func:`merge_all` takes results in chunk-index order and keeps it, so concatenated arrays come
out in dataset order whichever job finished first. It reduces as a balanced tree (adjacent pairs
first), streaming: memory holds O(log n) partial results, concatenation costs O(n log n) rather
than O(n^2), and float sums add numbers of similar size.

Incompatible values raise :class:`MergeError` (a ``TypeError``) naming where in the nested
result they met, e.g. ``result['hists'][1]: cannot merge Hist with ndarray``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np


class MergeError(TypeError):
    """Two results that cannot be merged; ``path`` says where in the nested result."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.number) and not isinstance(x, bool | np.bool_)


def _kind(x: Any) -> str:
    """The merge rule a value follows; two values merge only if their kinds are equal."""
    if _is_number(x):
        return "number"
    if isinstance(x, bool | np.bool_ | str | bytes):
        return "refused"
    if isinstance(x, np.ndarray):
        return "ndarray"
    if isinstance(x, dict):
        return "dict"
    if isinstance(x, list | tuple):
        return "sequence"
    if _is_awkward(x):
        return "awkward"
    if _is_histogram(x):
        return "hist"
    return "other"


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


def merge(a: Any, b: Any, path: str = "result") -> Any:
    """Merge two results of the same shape (see the module's table); neither is modified."""
    if a is None:
        return b
    if b is None:
        return a
    kind_a, kind_b = _kind(a), _kind(b)
    names = f"{type(a).__name__} with {type(b).__name__}"
    if "refused" in (kind_a, kind_b):
        bad = a if kind_a == "refused" else b
        raise MergeError(
            path,
            f"{type(bad).__name__} is not an accumulator (use a count, an array or a histogram)",
        )
    if kind_a != kind_b:
        raise MergeError(path, f"cannot merge {names}")
    if kind_a == "dict":
        out = copy.copy(a)
        for key, value in b.items():
            out[key] = merge(a[key], value, f"{path}[{key!r}]") if key in a else value
        return out
    if kind_a == "sequence":
        if len(a) != len(b):
            raise MergeError(
                path,
                f"cannot merge {names} of lengths {len(a)} and {len(b)}: "
                "sequences merge elementwise",
            )
        merged = [merge(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))]
        return type(a)(merged) if isinstance(a, list) else _same_tuple(a, merged)
    if kind_a == "ndarray" and a.shape != b.shape:
        raise MergeError(path, f"cannot add arrays of shapes {a.shape} and {b.shape}")
    if kind_a == "awkward":
        import awkward as ak

        try:
            return ak.concatenate([a, b])
        except Exception as exc:
            raise MergeError(path, f"cannot concatenate awkward arrays: {exc}") from exc
    try:
        out = a + b
    except Exception as exc:
        raise MergeError(path, f"cannot merge {names}: {exc}") from exc
    if out is NotImplemented:
        raise MergeError(path, f"cannot merge {names}")
    return out


def _same_tuple(a: tuple, items: list) -> tuple:
    """A tuple of ``a``'s type; named tuples are rebuilt from fields, plain ones from a list."""
    if hasattr(a, "_fields"):
        return type(a)(*items)
    return type(a)(items)


def merge_all(results: Iterable[Any]) -> Any:
    """Merge results given in chunk-index order into one (``None`` for no results).

    Streaming balanced tree: a partial result of 2**k chunks is merged only with its neighbour of
    the same size, like carrying in a binary counter, so order is kept and depth is log n.
    """
    stack: list[tuple[int, Any]] = []  # (level, partial), levels strictly decreasing upwards
    for item in results:
        level, value = 0, item
        while stack and stack[-1][0] == level:
            _, left = stack.pop()
            value = merge(left, value)
            level += 1
        stack.append((level, value))
    if not stack:
        return None
    value = stack.pop()[1]
    while stack:
        value = merge(stack.pop()[1], value)
    return value
