"""A call's inputs are captured when it is submitted, and each job runs on its own copy.

The kind: anything a payload reads that can change between two submits of the same
function object.  ``ThreadPoolExecutor`` reads it when the call runs; a PandaExecutor
job runs elsewhere, later, so it must run with what the client had at ``submit`` (at
``map`` for a map): never with a copy frozen at an earlier submit, and never with what
an earlier job changed on the pilot's reused worker.  Members, each changed between two
submits of one function object, through real pilots:

- a global rebound (the reported case: 19 then 9, as a ThreadPoolExecutor gives),
  ``test_a_rebound_global_is_read_at_each_submit``;
- a global mutated in place, ``test_a_global_mutated_in_place_is_read_at_each_submit``;
- a closure cell, ``test_a_closure_cell_is_read_at_each_submit``;
- default and keyword-only default arguments, replaced or mutated in place,
  ``test_default_arguments_are_read_at_each_submit``;
- an attribute of a callable object, ``test_a_callable_objects_attributes_are_read_at_each_submit``;
- the function's own ``__dict__``, ``test_a_functions_dict_is_read_at_each_submit``;
- a bound method's instance, ``test_a_bound_methods_instance_is_read_at_each_submit``;
- a ``functools.partial``'s mutable argument, ``test_a_partials_arguments_are_read_at_each_submit``;
- an argument mutated after submit, and two submits before either ran,
  ``test_each_call_keeps_what_it_had_at_its_submit``;
- ``map`` captures at each map call, ``test_map_captures_the_function_at_each_call``;
- a worker reused between jobs (one pilot, one slot): a job that mutates its global, its
  default or its object on the pilot leaves nothing for the next job,
  ``test_a_reused_worker_gives_each_job_a_fresh_copy``.

Not covered, by design: the state of modules a payload imports by reference (an installed
package's globals) lives in the worker process, as with ``ProcessPoolExecutor``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

THRESHOLD = 10
CUTS = [10]
COUNTER = 0


def above(xs):
    return sum(x > THRESHOLD for x in xs)


def above_cut(xs):
    return sum(x > CUTS[0] for x in xs)


def scaled(x, factor=2, seen=[], *, offset=0):  # noqa: B006 - the mutable default is the point
    return x * factor + offset + len(seen)


def configured(cfg, x):
    return x * cfg["factor"]


def bump():
    global COUNTER
    COUNTER += 1
    return COUNTER


def collect(x, acc=[]):  # noqa: B006 - a job must not see what another appended
    acc.append(x)
    return list(acc)


class Scale:
    def __init__(self, factor):
        self.factor = factor
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x * self.factor + 100 * (self.calls - 1)

    def apply(self, x):
        return x * self.factor


def both(ex, fn, *args):
    """The executor's result next to a ThreadPoolExecutor's, for the same call now."""
    with ThreadPoolExecutor(1) as tp:
        expected = tp.submit(fn, *args).result()
    return ex.submit(fn, *args).result(timeout=60), expected


def test_a_rebound_global_is_read_at_each_submit(mlab):
    global THRESHOLD
    with mlab.executor(name="cap-global") as ex:
        try:
            THRESHOLD = 10
            assert both(ex, above, range(30)) == (19, 19)
            THRESHOLD = 20
            assert both(ex, above, range(30)) == (9, 9)
        finally:
            THRESHOLD = 10


def test_a_global_mutated_in_place_is_read_at_each_submit(mlab):
    with mlab.executor(name="cap-inplace") as ex:
        try:
            assert both(ex, above_cut, range(30)) == (19, 19)
            CUTS[0] = 25
            assert both(ex, above_cut, range(30)) == (4, 4)
        finally:
            CUTS[0] = 10


def test_a_closure_cell_is_read_at_each_submit(mlab):
    limit = 10

    def below(xs):
        return sum(x < limit for x in xs)

    with mlab.executor(name="cap-closure") as ex:
        assert both(ex, below, range(30)) == (10, 10)
        limit = 3
        assert both(ex, below, range(30)) == (3, 3)


def test_default_arguments_are_read_at_each_submit(mlab):
    defaults, kwdefaults = scaled.__defaults__, dict(scaled.__kwdefaults__)
    with mlab.executor(name="cap-defaults") as ex:
        try:
            assert both(ex, scaled, 5) == (10, 10)
            scaled.__defaults__ = (3, [])
            assert both(ex, scaled, 5) == (15, 15)
            scaled.__defaults__[1].extend([0, 0])          # a default mutated in place
            assert both(ex, scaled, 5) == (17, 17)
            scaled.__kwdefaults__["offset"] = 1000
            assert both(ex, scaled, 5) == (1017, 1017)
        finally:
            scaled.__defaults__, scaled.__kwdefaults__ = defaults, kwdefaults


def test_a_callable_objects_attributes_are_read_at_each_submit(mlab):
    scale = Scale(2)
    with mlab.executor(name="cap-object") as ex:
        assert ex.submit(scale, 5).result(timeout=60) == 10
        scale.factor = 7
        assert ex.submit(scale, 5).result(timeout=60) == 35


def test_a_functions_dict_is_read_at_each_submit(mlab):
    def weighted(x):
        return x * weighted.weight

    weighted.weight = 2
    with mlab.executor(name="cap-dict") as ex:
        assert both(ex, weighted, 5) == (10, 10)
        weighted.weight = 9
        assert both(ex, weighted, 5) == (45, 45)


def test_a_bound_methods_instance_is_read_at_each_submit(mlab):
    scale = Scale(2)
    method = scale.apply  # one bound method object, submitted twice
    with mlab.executor(name="cap-method") as ex:
        assert both(ex, method, 5) == (10, 10)
        scale.factor = 4
        assert both(ex, method, 5) == (20, 20)


def test_a_partials_arguments_are_read_at_each_submit(mlab):
    cfg = {"factor": 2}
    fn = partial(configured, cfg)
    with mlab.executor(name="cap-partial") as ex:
        assert both(ex, fn, 5) == (10, 10)
        cfg["factor"] = 6
        assert both(ex, fn, 5) == (30, 30)


def test_each_call_keeps_what_it_had_at_its_submit(mlab):
    global THRESHOLD
    xs = [1, 2, 3]
    with mlab.executor(name="cap-order") as ex:
        try:
            total = ex.submit(sum, xs)
            xs.append(100)                     # after submit: not this call's input
            THRESHOLD = 10
            first = ex.submit(above, range(30))
            THRESHOLD = 20                     # before either call ran
            second = ex.submit(above, range(30))
            assert (total.result(timeout=60), first.result(timeout=60),
                    second.result(timeout=60)) == (6, 19, 9)
        finally:
            THRESHOLD = 10


def test_map_captures_the_function_at_each_call(mlab):
    global THRESHOLD
    ranges = [range(30), range(15), range(40)]
    with mlab.executor(name="cap-map") as ex:
        try:
            THRESHOLD = 10
            assert list(ex.map(above, ranges)) == [19, 4, 29]
            THRESHOLD = 20
            assert list(ex.map(above, ranges, chunksize=2)) == [9, 0, 19]
        finally:
            THRESHOLD = 10


def test_a_reused_worker_gives_each_job_a_fresh_copy(mlab):
    """One pilot with one slot runs every job here, in one worker process it reuses."""
    scale = Scale(3)
    with mlab.executor(name="cap-worker", site="LOCAL-GRID") as ex:
        assert [ex.submit(bump).result(timeout=60) for _ in range(3)] == [1, 1, 1]
        assert list(ex.map(lambda _: bump(), range(4))) == [1, 1, 1, 1]
        assert [ex.submit(collect, i).result(timeout=60) for i in range(3)] == [[0], [1], [2]]
        assert list(ex.map(collect, range(3))) == [[0], [1], [2]]
        assert [ex.submit(scale, 1).result(timeout=60) for _ in range(3)] == [3, 3, 3]
        sites = {f.site for f in [ex.submit(bump) for _ in range(2)] if f.result(timeout=60)}
    assert sites == {"LOCAL-GRID"} and COUNTER == 0 and scale.calls == 0
