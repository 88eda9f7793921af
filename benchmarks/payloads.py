"""Payload functions of the benchmarks, in a module of their own.

Dask's workers import it by name (spawned workers inherit ``sys.path``), as they would
a user's package; panda-lab's pilots get it by value (``register_pickle_by_value``,
done only after the Dask part so Dask is measured the way it is normally used).
"""

from __future__ import annotations

import dask


def noop(x=None):
    return x


def inc(x):
    return x + 1


def graph(n: int):
    """A graph with dependencies: n leaves, summed in a tree of 10-wide adds (n = 1,000
    makes 1,111 tasks)."""
    level = [dask.delayed(inc)(i) for i in range(n)]
    while len(level) > 1:
        level = [dask.delayed(sum)(level[i:i + 10]) for i in range(0, len(level), 10)]
    return level[0]
