"""Which notebook names a ``%%panda`` cell sends to its job, and which come back.

The kind: a name travels (both ways) by what it *is*, never by how it looks.  Every user
name the cell reads is sent, and every name it binds comes back; only the names IPython
keeps in a notebook for itself stay behind, both ways.  Members tested:

* user names that look like IPython's: a leading underscore (``_k``), dunder-like
  (``__x``), near misses of the history names (``_i_max``, ``_1a``, ``____``, ``_ii2``)
  -- ``test_user_names_that_look_like_ipythons_are_sent``, and through a kernel
  ``test_a_leading_underscore_variable_reaches_the_job`` (the reported example);
* names shadowing builtins (``sum``, ``len``, ``open`` rebound by the user, while the
  kernel's own ``open`` stays) -- ``test_names_shadowing_builtins_are_the_users``,
  ``test_builtins_rebound_in_the_notebook_are_used_by_the_job``;
* names used only inside a comprehension, lambda, nested function, f-string, decorator,
  default argument, class body or method -- ``test_names_read_only_in_inner_scopes``,
  ``test_names_read_in_inner_scopes_reach_the_job``;
* augmented assignment (``_k += 1`` reads and writes), ``del``, ``global`` in a function
  (read, assigned or deleted there) -- ``test_augmented_assignment_and_del_read_the_name``,
  ``test_global_in_a_function_reads_and_binds_the_name``, ``test_run_cell_names_what_it_deleted``,
  ``test_update_delete_and_global_through_a_kernel``;
* names assigned by the cell with leading underscores come back --
  ``test_bound_names_keep_underscores``;
* ``_`` used as a throwaway loop variable in the cell: it neither goes nor comes back, so
  IPython keeps updating ``_`` -- ``test_a_throwaway_underscore_does_not_clobber_ipythons``;
* IPython's own names (``_``, ``__``, ``___``, ``_i``, ``_ii``, ``_iii``, ``_iN``, ``_N``,
  ``_ih``, ``_oh``, ``_dh``, ``In``, ``Out``, ``_exit_code``, the module's ``__name__``,
  ``__builtins__``, ``__builtin__``; ``get_ipython``, ``exit``, ``quit``, ``open`` while
  the shell's) -- ``test_kernel_name_is_ipythons_rule``, ``test_ipythons_names_are_not_sent``,
  ``test_ipythons_names_stay_in_the_notebook``;
* a name deleted by every job of ``--parallel`` is deleted, by some only is not --
  ``test_parallel_deletion_needs_every_job``.
"""

from __future__ import annotations

import pytest

from panda_lab.jupyter.cells import bound_names, capture, kernel_name, read_names, run_cell
from panda_lab.jupyter.magics import bring_back

IPYTHON_NAMES = ["_", "__", "___", "_i", "_ii", "_iii", "_i1", "_i42", "_1", "_42", "_ih",
                 "_oh", "_dh", "In", "Out", "_exit_code", "__name__", "__builtins__",
                 "__builtin__"]
USER_NAMES = ["_k", "__x", "__x__", "_i_max", "_1a", "____", "_ii2", "_iv", "_o", "in_",
              "out", "_In", "sum", "len"]


# -- the rule, without a kernel ----------------------------------------------------------

@pytest.mark.parametrize("name", IPYTHON_NAMES)
def test_kernel_name_is_ipythons_rule(name):
    assert kernel_name(name)


@pytest.mark.parametrize("name", USER_NAMES)
def test_user_names_that_look_like_ipythons_are_sent(name):
    assert not kernel_name(name)
    assert capture(f"z = {name}\n", {name: 7}) == {name: 7}


def test_ipythons_names_are_not_sent():
    ns = {n: [n] for n in IPYTHON_NAMES}
    source = "".join(f"v{i} = {n}\n" for i, n in enumerate(IPYTHON_NAMES))
    assert read_names(source) >= set(IPYTHON_NAMES)
    assert capture(source, ns) == {}


def test_names_shadowing_builtins_are_the_users():
    def my_open(*args):
        return "mine"

    shell = {"get_ipython": object(), "exit": object(), "quit": object(), "open": object()}
    ns = {"sum": 3, "len": len, **shell}
    source = "a = sum + len('xy')\nb = open\nc = exit, quit, get_ipython\n"
    assert capture(source, ns, shell) == {"sum": 3, "len": len}
    ns["open"] = my_open  # rebound by the user: theirs from now on
    assert capture(source, ns, shell) == {"sum": 3, "len": len, "open": my_open}
    # without the shell's objects to compare with, these names are the kernel's
    assert capture(source, ns) == {"sum": 3, "len": len}


INNER = """\
comp = [v * _c for v in range(3)]
gen = sum(v for v in _g)
lam = lambda v: v + _l
def outer():
    def inner():
        return _n
    return inner()
s = f"{_f!r:>{_w}}"
@_deco
def decorated(x=_default):
    return x
class K:
    attr = _class_body
    def method(self):
        return _in_method
"""


def test_names_read_only_in_inner_scopes():
    assert read_names(INNER) == {"_c", "range", "sum", "_g", "_l", "_n", "_f", "_w", "_deco",
                                 "_default", "_class_body", "_in_method"}


def test_augmented_assignment_and_del_read_the_name():
    assert read_names("_k += 1\n") == {"_k"}
    assert read_names("x = 1\ndel _gone\n") == {"_gone"}
    assert read_names("_k += 1\n") & set(bound_names("_k += 1\n")) == {"_k"}
    ns = {"_k": 2, "_gone": "x"}
    assert capture("_k += 1\ndel _gone\n", ns) == ns
    # a function's own local does not read the notebook's
    assert read_names("def f():\n    t = 0\n    t += 1\n    del t\n") == set()


def test_global_in_a_function_reads_and_binds_the_name():
    source = ("def bump():\n    global _count, _made\n    _count += 1\n    _made = 1\n"
              "def drop():\n    global _old\n    del _old\n")
    assert read_names(source) == {"_count", "_old"}
    assert set(bound_names(source)) == {"bump", "drop", "_count", "_made", "_old"}
    out = run_cell(source + "bump()\ndrop()\n", {"_count": 1, "_old": 0},
                   bound_names(source))
    assert out["values"]["_count"] == 2 and out["values"]["_made"] == 1
    assert out["deleted"] == ["_old"]


def test_bound_names_keep_underscores():
    source = "_tmp = 5\n__x = _tmp * 2\nimport os as _os\ndef _helper():\n    pass\n"
    assert bound_names(source) == ["_tmp", "__x", "_os", "_helper"]


def test_ipythons_names_stay_in_the_notebook():
    source = "for _ in range(3):\n    pass\n_1 = _i = Out = In = 0\n_k = 1\n"
    assert bound_names(source) == ["_k"]
    # exit, quit, open, get_ipython bound by the cell are the user's: they come back
    assert bound_names("open = exit = 1\n") == ["open", "exit"]


def test_run_cell_names_what_it_deleted():
    out = run_cell("del _a\nif False:\n    _never = 1\n_b = _a2 = 2\ndel _a2\n",
                   {"_a": 1}, ["_a", "_never", "_b", "_a2"])
    assert out["values"] == {"_b": 2}
    # _a2 was made and deleted by the cell: the notebook never had it to lose
    assert out["deleted"] == ["_a"]


class _Results:
    """What ``bring_back`` asks of a lab: the jobs' results of a done task."""

    def __init__(self, results: dict[int, dict]) -> None:
        self._results = results

    def results(self, task: int) -> dict[int, dict]:
        return self._results


def test_parallel_deletion_needs_every_job():
    ns = {"_a": 1, "_b": 2}
    every = {"values": {}, "unsent": {}, "deleted": ["_a"]}
    some = [{"values": {"_b": 3}, "unsent": {}, "deleted": []},
            {"values": {}, "unsent": {}, "deleted": ["_b"]}]
    lab = _Results({0: every, 1: every, 2: some[0], 3: some[1]})
    # job 0 and 1 deleted _a, 2 and 3 did not; job 2 bound _b, job 3 deleted it
    assert bring_back(lab, 7, {"state": "done", "n_jobs": 4}, ns) == ["_b"]
    assert ns == {"_a": 1, "_b": [None, None, 3, None]}
    lab = _Results({0: every, 1: every})
    bring_back(lab, 8, {"state": "done", "n_jobs": 2}, ns)
    assert "_a" not in ns
    single = {"values": {"_c": 1}, "unsent": {}}  # a result from before "deleted" existed
    bring_back(_Results({0: single}), 9, {"state": "done", "n_jobs": 1}, ns)
    assert ns["_c"] == 1


# -- through a real kernel and a real server ---------------------------------------------

def test_a_leading_underscore_variable_reaches_the_job(kernel):
    kernel.ok("_k = 2")
    reply = kernel.run("%%panda --name t-underscore\nz = _k\n", timeout=120)
    assert reply.status == "ok", reply.traceback + reply.stderr
    assert kernel.value("z") == 2


def test_names_read_in_inner_scopes_reach_the_job(kernel):
    kernel.ok("_c, _g, _l, _n, _f, _w, _default, _class_body, _in_method = "
              "2, [1, 2], 3, 'n', 'f', 5, 9, 10, 11\n"
              "def _deco(fn):\n    fn.tagged = True\n    return fn\n")
    kernel.ok("%%panda --name t-inner\n" + INNER
              + "res = (comp, gen, lam(1), outer(), s, decorated(), decorated.tagged,"
                " K.attr, K().method())\n", timeout=120)
    assert kernel.value("res") == ([0, 2, 4], 3, 4, "n", "  'f'", 9, True, 10, 11)


def test_builtins_rebound_in_the_notebook_are_used_by_the_job(kernel):
    # the kernel's own open (IPython's) is not sent: the job has Python's
    assert kernel.value("open is __import__('builtins').open") is False
    kernel.ok("%%panda --name t-open\nimport builtins\nsame = open is builtins.open\n",
              timeout=120)
    assert kernel.value("same") is True
    kernel.ok("def sum(xs):\n    return 'my sum'\nlen = 'not a function'\n"
              "def open(*args):\n    return 'my open'\n")
    try:
        kernel.ok("%%panda --name t-shadow\nres = (sum([1, 2]), len, open('x'))\n",
                  timeout=120)
        assert kernel.value("res") == ("my sum", "not a function", "my open")
    finally:
        kernel.ok("del sum, len, open")


def test_update_delete_and_global_through_a_kernel(kernel):
    kernel.ok("_count = 1\n_gone = 'x'\n_total = 10\n")
    kernel.ok("%%panda --name t-update\n"
              "_count += 1\n"
              "del _gone\n"
              "def add(v):\n    global _total\n    _total += v\n"
              "add(5)\n", timeout=120)
    assert kernel.value("_count") == 2
    assert kernel.value("_total") == 15
    assert kernel.value("'_gone' in globals()") is False


def test_a_throwaway_underscore_does_not_clobber_ipythons(kernel):
    kernel.ok("6 * 7")  # an output: IPython sets _ = 42
    reply = kernel.ok("%%panda --name t-throwaway\n"
                      "kinds = []\n"
                      "for name, get in [('In', lambda: In), ('Out', lambda: Out),\n"
                      "                  ('_oh', lambda: _oh), ('_ih', lambda: _ih),\n"
                      "                  ('_', lambda: _), ('__', lambda: __),\n"
                      "                  ('_i', lambda: _i), ('_ii', lambda: _ii),\n"
                      "                  ('get_ipython', lambda: get_ipython)]:\n"
                      "    try:\n"
                      "        get()\n"
                      "    except NameError:\n"
                      "        kinds.append(name)\n"
                      "for _ in range(3):\n"
                      "    pass\n", timeout=120)
    assert reply.status == "ok"
    assert kernel.value("kinds") == ["In", "Out", "_oh", "_ih", "_", "__", "_i", "_ii",
                                     "get_ipython"]
    assert kernel.value("_") == 42  # not the job's throwaway 2
    kernel.ok("'next'")
    assert kernel.value("_") == "next"  # and IPython still updates it
