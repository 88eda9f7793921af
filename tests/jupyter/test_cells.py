"""The rules of a cell as a job, without a kernel."""

from __future__ import annotations

import threading

import pytest

from panda_lab.jupyter.cells import (
    CellError,
    bound_names,
    capture,
    new_output,
    read_names,
    run_cell,
    split,
)

CELL = """\
import numpy as np
x = data * k
def f(a):
    return a + offset
for i in range(3):
    total = total + i
class C:
    pass
y = [z for z in w]
"""


def test_read_names_are_the_globals_the_cell_and_its_functions_read():
    assert read_names(CELL) == {"data", "k", "offset", "i", "range", "total", "w"}


def test_bound_names_come_in_source_order():
    assert bound_names(CELL) == ["np", "x", "f", "i", "total", "C", "y"]


def test_capture_ships_only_what_is_read_and_names_what_cannot_travel():
    ns = {"data": 2, "k": 3, "unused": object(), "_hidden": 1, "In": [], "offset": 1}
    # a user's leading underscore travels; IPython's In does not
    assert capture("y = data * k + _hidden\nprint(In)\n", ns) == {"data": 2, "k": 3,
                                                                 "_hidden": 1}
    ns["lock"] = threading.Lock()
    with pytest.raises(CellError, match="reads 'lock'"):
        capture("with lock:\n    pass\n", ns)
    with pytest.raises(CellError, match="not plain Python"):
        capture("%time x = 1\n", ns)


def test_split_cuts_contiguous_chunks_that_differ_by_one_at_most():
    assert split(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split((1, 2), 3) == [(1,), (2,), ()]
    with pytest.raises(CellError, match="sequence"):
        split(5, 2)


def test_run_cell_returns_bound_values_and_names_what_stays_behind():
    out = run_cell("import threading\nn = base + PANDA_INDEX\nlock = threading.Lock()\n"
                   "if False:\n    never = 1\n",
                   {"base": 10}, ["threading", "n", "lock", "never"], index=2, count=3)
    assert out["values"]["n"] == 12 and out["values"]["threading"] is threading
    assert "lock" in out["unsent"] and "never" not in out["values"]


def test_run_cell_tracebacks_show_the_cell_source():
    import traceback

    with pytest.raises(ZeroDivisionError) as info:
        run_cell("a = 1\nb = a / 0\n", {}, ["a", "b"])
    text = "".join(traceback.format_exception(info.value))
    assert 'File "<panda cell>", line 2' in text and "b = a / 0" in text


@pytest.mark.parametrize("old,new,delta", [
    ("", "abc", "abc"),
    ("ab", "abcd", "cd"),
    ("0123456789", "56789xyz", "xyz"),          # the tail lost its start in between
    ("aaaa", "zzzz", "[...]\nzzzz"),             # nothing in common: say a part is missing
])
def test_new_output_is_what_a_tail_adds(old, new, delta):
    assert new_output(old, new) == delta
