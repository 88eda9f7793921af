"""Kind: a remote exception that does not survive a plain pickle round trip loses its type.

A job's exception comes back to the notebook with its own type (``except FitError``
works, ``isinstance`` is true), its ``args`` and attributes, its ``__cause__`` /
``__context__`` chain, its ``__notes__`` and, for an exception group, its members
(``except*`` works); the remote traceback stays reachable.  A part that cannot travel
is dropped and named in a note; a type that truly cannot be rebuilt here becomes a
``RemoteError`` that names the remote type and why.

Members tested, through a real server and pilots (``test_job_*``) and on the pickling
logic alone (``test_unit_*``):

- required constructor arguments, ``FitError(chi2, ndf)``: test_job_required_constructor_args,
  test_unit_required_constructor_args_take_the_parts_route
- keyword-only required arguments: test_job_keyword_only_args, test_unit_keyword_only_args
- unpicklable attributes (lock, generator, file open for writing), an unpicklable argument,
  an attribute over the size limit: test_job_unpicklable_attributes,
  test_unit_unpicklable_attributes_are_dropped_and_named,
  test_unit_unpicklable_argument_comes_back_as_its_repr, test_unit_too_large_attribute
- exception groups (``except*``, members with their own chains):
  test_job_exception_group, test_unit_group_members_keep_type_and_chain
- chained cause and context: test_job_cause_and_context_chain,
  test_unit_cause_context_and_suppress_context, test_unit_cause_cycle_ends,
  test_unit_long_chain_is_cut_and_says_so, test_unit_huge_group_is_cut_and_says_so
- ``__notes__``: test_job_notes
- ``__reduce__`` that raises: test_job_reduce_raises
- ``__str__`` that raises (took the worker down, the error came back as a lost job):
  test_job_str_raises, test_unit_str_raises
- a class that cannot be imported on the client: test_job_class_not_importable_here,
  test_unit_class_not_importable_here (also as a group member);
  a class that cannot be pickled, one that cannot be created without its constructor:
  test_unit_class_not_picklable, test_unit_class_not_creatable
- BaseException from user code: test_job_keyboard_interrupt_and_system_exit
- exceptions that do pickle keep their own pickling (a custom ``__reduce__``); built-in
  fields (``OSError.errno``) and ``__slots__`` of ones that do not; records of older
  pilots still load:
  test_unit_own_pickling_is_obeyed, test_unit_builtin_fields, test_unit_old_record
- message and traceback kept within what the server accepts: test_unit_huge_message_is_cut
- through a ``%%panda`` cell: tests/jupyter/test_magics.py::
  test_a_remote_exception_keeps_its_type_through_a_cell
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import sys
import textwrap
import threading
import uuid

import cloudpickle
import pytest

from panda_lab.client.futures import JobFailed, RemoteError, RemoteTraceback, exception_from_job
from panda_lab.payload import MESSAGE_LIMIT, TRACEBACK_LIMIT, _error
from panda_lab.remote_errors import MAX_EXCEPTIONS, VALUE_LIMIT, _own_dumps

# ---- exceptions a user writes -------------------------------------------------------------


class FitError(Exception):
    """The issue's example: two required arguments, one formatted message."""

    def __init__(self, chi2: float, ndf: int) -> None:
        super().__init__(f"fit did not converge: chi2/ndf = {chi2}/{ndf}")
        self.chi2 = chi2
        self.ndf = ndf


class CutError(Exception):
    def __init__(self, message: str, *, cut: str) -> None:
        super().__init__(message)
        self.cut = cut


class StatefulError(Exception):
    def __init__(self, what: str, sink: io.TextIOBase) -> None:
        super().__init__(what)
        self.lock = threading.Lock()
        self.events = (i for i in range(3))
        self.sink = sink
        self.run = 42


class NoReduceError(Exception):
    def __reduce__(self):
        raise TypeError("this exception refuses to be pickled")


class BadStrError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str is broken")


class ReducingError(Exception):
    """Says how it pickles: that is obeyed, even though it drops ``cache``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value
        self.cache = "rebuilt on demand"

    def __reduce__(self):
        return (ReducingError, (self.value,))


class UnpicklableClassError(Exception):
    guard = threading.Lock()  # travels with the class, by value: it cannot


class NewOnlyError(Exception):
    def __new__(cls, *, code: int):
        return super().__new__(cls)

    def __init__(self, *, code: int) -> None:
        super().__init__(f"code {code}")


class SlotError(Exception):
    __slots__ = ("detector",)

    def __init__(self, detector: str, run: int) -> None:
        super().__init__(f"{detector} dead in run {run}")
        self.detector = detector


class FileError(OSError):
    def __init__(self, path: str) -> None:
        super().__init__(2, "No such file", path)
        self.hint = "check the replica"


# ---- the pickling logic alone: what the pilot writes, what the client rebuilds ------------


def roundtrip(exc: BaseException, category: str = "user") -> BaseException:
    """``exc`` through the pilot's report and the client's rebuild."""
    err = _error(category, exc)
    job = {"id": 7, "state": "failed", "error_category": category,
           "error_message": err["message"], "error_traceback": err["traceback"],
           "error_exception": base64.b64encode(err["exception"]).decode()}
    return exception_from_job(job)


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a job's code leaves it."""
    try:
        raise exc
    except BaseException as e:
        return e


def lost_notes(exc: BaseException) -> list[str]:
    return [n for n in getattr(exc, "__notes__", []) if n.startswith("panda-lab: ")]


def test_unit_required_constructor_args_take_the_parts_route():
    with pytest.raises(TypeError):  # why the exception's own pickling fails
        pickle.loads(_own_dumps(FitError(12.5, 3)))
    back = roundtrip(raised(FitError(12.5, 3)))
    assert type(back) is FitError
    assert (back.chi2, back.ndf) == (12.5, 3)
    assert str(back) == "fit did not converge: chi2/ndf = 12.5/3"
    assert lost_notes(back) == []
    assert isinstance(back.__cause__, RemoteTraceback) and "FitError" in back.__cause__.tb


def test_unit_keyword_only_args():
    back = roundtrip(raised(CutError("no events pass", cut="pt > 25")))
    assert type(back) is CutError and back.cut == "pt > 25" and back.args == ("no events pass",)


def test_unit_unpicklable_attributes_are_dropped_and_named(tmp_path):
    with open(tmp_path / "log.txt", "w") as sink:
        back = roundtrip(raised(StatefulError("state", sink)))
    assert type(back) is StatefulError and back.args == ("state",) and back.run == 42
    for name in ("lock", "events", "sink"):
        assert not hasattr(back, name)
    notes = lost_notes(back)
    assert len(notes) == 3
    assert any("'lock' (_thread.lock) was not sent back" in n for n in notes)
    assert any("'events' (generator)" in n for n in notes)
    assert any("'sink' (_io.TextIOWrapper)" in n for n in notes)


def test_unit_unpicklable_argument_comes_back_as_its_repr():
    lock = threading.Lock()
    back = roundtrip(raised(ValueError("bad lock", lock)))
    assert type(back) is ValueError and back.args[0] == "bad lock"
    assert back.args[1] == repr(lock)
    assert lost_notes(back) == ["panda-lab: args[1] (_thread.lock) came back as its repr: "
                                "TypeError: cannot pickle '_thread.lock' object"]


def test_unit_too_large_attribute():
    exc = FitError(1.0, 1)
    exc.samples = b"x" * (VALUE_LIMIT + 1)
    back = roundtrip(raised(exc))
    assert type(back) is FitError and back.chi2 == 1.0 and not hasattr(back, "samples")
    assert "too large to send back" in lost_notes(back)[0]


def test_unit_own_pickling_is_obeyed():
    back = roundtrip(raised(ReducingError(5)))
    assert type(back) is ReducingError and back.value == 5
    assert back.cache == "rebuilt on demand"  # by its own __init__, as its __reduce__ says
    back = roundtrip(raised(KeyError("muon_pt")))
    assert type(back) is KeyError and back.args == ("muon_pt",)


def test_unit_builtin_fields():
    back = roundtrip(raised(FileError("/data/run1.root")))
    assert type(back) is FileError and isinstance(back, OSError)
    assert (back.errno, back.strerror, back.filename) == (2, "No such file", "/data/run1.root")
    assert back.hint == "check the replica"
    back = roundtrip(raised(SystemExit(3)))
    assert type(back) is SystemExit and back.code == 3
    back = roundtrip(raised(SlotError("calorimeter", 7)))
    assert type(back) is SlotError and back.detector == "calorimeter"
    assert str(back) == "calorimeter dead in run 7"


def test_unit_cause_context_and_suppress_context():
    def fit():
        try:
            {}["mass"]
        except KeyError:
            raise FitError(9.0, 2) from ValueError("negative width")

    try:
        fit()
    except FitError as e:
        back = roundtrip(e)
    assert type(back) is FitError
    assert type(back.__cause__) is ValueError and back.__cause__.args == ("negative width",)
    assert type(back.__context__) is KeyError and back.__context__.args == ("mass",)
    assert back.__suppress_context__ is True
    # the remote traceback ends the cause chain: the user's cause is not hidden by it
    assert isinstance(back.__cause__.__cause__, RemoteTraceback)
    tb = back.__cause__.__cause__.tb
    assert "negative width" in tb and "in fit" in tb


def test_unit_cause_cycle_ends():
    a, b = FitError(1.0, 1), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    back = roundtrip(a)
    assert type(back) is FitError and type(back.__cause__) is ValueError
    # no endless walk: the remote traceback closes the loop
    assert isinstance(back.__cause__.__cause__, RemoteTraceback)


def test_unit_long_chain_is_cut_and_says_so():
    exc: BaseException = ValueError(0)
    for i in range(1, MAX_EXCEPTIONS + 20):
        nxt = ValueError(i)
        nxt.__cause__ = exc
        exc = nxt
    back = roundtrip(exc)
    depth, node = 0, back
    while type(node) is ValueError:
        depth, node = depth + 1, node.__cause__
    assert depth == MAX_EXCEPTIONS and isinstance(node, RemoteTraceback)


def test_unit_huge_group_is_cut_and_says_so():
    back = roundtrip(raised(ExceptionGroup("all", [ValueError(i) for i in range(150)])))
    assert type(back) is ExceptionGroup and len(back.exceptions) == MAX_EXCEPTIONS - 1
    assert lost_notes(back) == [f"panda-lab: 51 of the group's 150 exceptions were cut "
                                f"(at most {MAX_EXCEPTIONS} travel)"]


def test_unit_group_members_keep_type_and_chain():
    inner = raised(FitError(3.0, 1))
    inner.__cause__ = ZeroDivisionError("empty bin")
    group = raised(ExceptionGroup("fits failed", [
        inner, CutError("none", cut="eta"),
        ExceptionGroup("nested", [NoReduceError("n")])]))
    back = roundtrip(group)
    assert type(back) is ExceptionGroup and back.message == "fits failed"
    fit, cut, nested = back.exceptions
    assert type(fit) is FitError and fit.chi2 == 3.0
    assert type(fit.__cause__) is ZeroDivisionError
    assert type(cut) is CutError and cut.cut == "eta"
    assert type(nested.exceptions[0]) is NoReduceError
    caught = []
    try:
        raise back
    except* FitError as eg:
        caught.append(eg.exceptions)
    except* (CutError, NoReduceError) as eg:
        caught.append(eg.exceptions)
    assert caught[0] == (fit,) and len(caught[1]) == 2


def test_unit_str_raises():
    err = _error("user", raised(BadStrError("x")))  # must not raise: it would kill the worker
    assert err["message"] == "BadStrError: <str() failed: RuntimeError>"
    back = roundtrip(raised(BadStrError("x")))
    assert type(back) is BadStrError and back.args == ("x",)


def _pilot_only_module(tmp_path):
    """A module importable now (as on the pilot), then not any more (as on the client)."""
    name = f"pilot_only_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        class DetectorError(Exception):
            def __init__(self, channel):
                super().__init__(f"dead channel {channel}")
                self.channel = channel
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        module = __import__(name)
    finally:
        sys.path.remove(str(tmp_path))
    return name, module


def test_unit_class_not_importable_here(tmp_path):
    name, module = _pilot_only_module(tmp_path)
    single = _error("user", raised(module.DetectorError(17)))
    group = _error("user", raised(ExceptionGroup("run", [module.DetectorError(3),
                                                          FitError(2.0, 4)])))
    del sys.modules[name]  # now this process is the client, which lacks the module
    job = {"id": 3, "state": "failed", "error_category": "user",
           "error_message": single["message"], "error_traceback": single["traceback"],
           "error_exception": base64.b64encode(single["exception"]).decode()}
    back = exception_from_job(job)
    assert type(back) is RemoteError and isinstance(back, JobFailed)
    assert back.remote_type == f"{name}.DetectorError"
    assert "ModuleNotFoundError" in back.reason and name in back.reason
    assert str(back).startswith(f"{name}.DetectorError: dead channel 17 (raised on the "
                                "pilot; not rebuilt here: its class cannot be loaded "
                                "(ModuleNotFoundError")
    assert back.job_id == 3 and back.category == "user"
    assert "dead channel 17" in back.remote_traceback
    assert isinstance(back.__cause__, RemoteTraceback)
    job["error_exception"] = base64.b64encode(group["exception"]).decode()
    back = exception_from_job(job)
    assert type(back) is ExceptionGroup
    stand_in, fit = back.exceptions
    assert type(stand_in) is RemoteError and "dead channel 3" in str(stand_in)
    assert type(fit) is FitError and fit.ndf == 4


def test_unit_class_not_picklable():
    back = roundtrip(raised(UnpicklableClassError("guarded")))
    assert type(back) is RemoteError
    assert back.remote_type.endswith("UnpicklableClassError")
    assert back.reason.startswith("its class cannot be pickled on the pilot (TypeError: "
                                  "cannot pickle '_thread.lock' object")


def test_unit_class_not_creatable():
    back = roundtrip(raised(NewOnlyError(code=4)))
    assert type(back) is RemoteError and "code 4" in str(back)
    assert back.reason.startswith("it cannot be created without its constructor (TypeError")


def test_unit_old_record():
    """A pilot of an older version sent the exception pickled as it is."""
    job = {"id": 1, "state": "failed", "error_category": "user", "error_message": "m",
           "error_traceback": "tb", "error_exception":
               base64.b64encode(cloudpickle.dumps(KeyError("k"))).decode()}
    back = exception_from_job(job)
    assert type(back) is KeyError and back.__cause__.tb == "tb"
    job["error_exception"] = base64.b64encode(b"not a pickle").decode()
    back = exception_from_job(job)
    assert type(back) is RemoteError and "its record cannot be read" in str(back)


def test_unit_huge_message_is_cut():
    exc = raised(ValueError("x" * 500_000))
    err = _error("user", exc)
    assert len(err["message"]) < MESSAGE_LIMIT + 100 and "characters dropped" in err["message"]
    assert len(err["traceback"]) < TRACEBACK_LIMIT + 100
    assert type(roundtrip(exc)) is ValueError


# ---- through a real server and pilots -----------------------------------------------------


def fail_with(kind: str):
    """Raise, on a pilot, the exception ``kind`` names."""
    if kind == "fit":
        raise FitError(12.5, 3)
    if kind == "kwonly":
        raise CutError("no events pass", cut="pt > 25")
    if kind == "state":
        raise StatefulError("state", open(os.devnull, "w"))  # noqa: SIM115
    if kind == "group":
        raise ExceptionGroup("fits failed", [FitError(1.0, 2), CutError("none", cut="eta")])
    if kind == "chain":
        try:
            {}["mass"]
        except KeyError as missing:
            raise FitError(9.0, 2) from missing
    if kind == "context":
        try:
            _ = 1 / 0
        except ZeroDivisionError:
            raise CutError("while fitting", cut="m > 0")  # noqa: B904 the context is tested
    if kind == "notes":
        exc = FitError(2.0, 1)
        exc.add_note("fit range 60-120 GeV")
        raise exc
    if kind == "reduce":
        raise NoReduceError("no pickling for me")
    if kind == "str":
        raise BadStrError("unprintable")
    if kind == "interrupt":
        raise KeyboardInterrupt("stop")
    if kind == "exit":
        sys.exit(3)
    if kind == "pilot-only":
        import tempfile

        where = tempfile.mkdtemp()
        name = f"pilot_only_{uuid.uuid4().hex}"
        with open(os.path.join(where, f"{name}.py"), "w") as f:
            f.write("class DetectorError(Exception):\n"
                    "    def __init__(self, channel):\n"
                    "        super().__init__(f'dead channel {channel}')\n")
        sys.path.insert(0, where)
        try:
            module = __import__(name)
        finally:
            sys.path.remove(where)
        raise module.DetectorError(17)
    raise AssertionError(kind)


@pytest.fixture
def failed(mlab):
    """``failed(kind)``: the exception of a job that ran ``fail_with(kind)``."""
    with mlab.executor(name=f"t-remote-exc-{uuid.uuid4().hex[:8]}") as ex:
        def run(kind: str) -> BaseException:
            exc = ex.submit(fail_with, kind).exception(timeout=60)
            assert exc is not None
            return exc
        yield run


def test_job_required_constructor_args(mlab):
    with mlab.executor(name="t-fiterror") as ex:
        fut = ex.submit(fail_with, "fit")
        try:
            fut.result(timeout=60)
        except FitError as e:
            caught = e
        else:  # pragma: no cover
            pytest.fail("no FitError")
    assert (caught.chi2, caught.ndf) == (12.5, 3)
    assert str(caught) == "fit did not converge: chi2/ndf = 12.5/3"
    assert isinstance(caught.__cause__, RemoteTraceback)
    assert "fail_with" in caught.__cause__.tb
    task = mlab.task("t-fiterror")
    assert type(task.errors()[0]) is FitError
    jobs = task.jobs(all_attempts=True)
    assert list(jobs["attempt"]) == [1] and list(jobs["error_category"]) == ["user"]


def test_job_keyword_only_args(failed):
    exc = failed("kwonly")
    assert type(exc) is CutError and exc.cut == "pt > 25"


def test_job_unpicklable_attributes(failed):
    exc = failed("state")
    assert type(exc) is StatefulError and exc.run == 42 and exc.args == ("state",)
    named = " ".join(lost_notes(exc))
    assert all(f"'{a}'" in named for a in ("lock", "events", "sink"))


def test_job_exception_group(failed):
    exc = failed("group")
    assert type(exc) is ExceptionGroup
    fits, cuts = [], []
    try:
        raise exc
    except* FitError as eg:
        fits = [(e.chi2, e.ndf) for e in eg.exceptions]
    except* CutError as eg:
        cuts = [e.cut for e in eg.exceptions]
    assert fits == [(1.0, 2)] and cuts == ["eta"]


def test_job_cause_and_context_chain(failed):
    exc = failed("chain")
    assert type(exc) is FitError and type(exc.__cause__) is KeyError
    assert exc.__cause__.args == ("mass",)
    assert isinstance(exc.__cause__.__cause__, RemoteTraceback)
    assert "direct cause" in exc.__cause__.__cause__.tb
    exc = failed("context")
    assert type(exc) is CutError and type(exc.__context__) is ZeroDivisionError
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "During handling of the above exception" in exc.__cause__.tb


def test_job_notes(failed):
    exc = failed("notes")
    assert type(exc) is FitError and exc.__notes__ == ["fit range 60-120 GeV"]


def test_job_reduce_raises(failed):
    exc = failed("reduce")
    assert type(exc) is NoReduceError and exc.args == ("no pickling for me",)


def test_job_str_raises(mlab):
    with mlab.executor(name="t-badstr") as ex:
        exc = ex.submit(fail_with, "str").exception(timeout=60)
    assert type(exc) is BadStrError and exc.args == ("unprintable",)
    # a user error, reported once: not a lost worker retried as a system error
    jobs = mlab.task("t-badstr").jobs(all_attempts=True)
    assert list(jobs["attempt"]) == [1] and list(jobs["error_category"]) == ["user"]


def test_job_class_not_importable_here(failed):
    exc = failed("pilot-only")
    assert type(exc) is RemoteError
    assert exc.remote_type.startswith("pilot_only_") and exc.remote_type.endswith(
        ".DetectorError")
    assert "No module named" in exc.reason
    assert "dead channel 17" in str(exc) and "not rebuilt here" in str(exc)
    assert "fail_with" in exc.remote_traceback and isinstance(exc.__cause__, RemoteTraceback)


def test_job_keyboard_interrupt_and_system_exit(failed):
    exc = failed("interrupt")
    assert type(exc) is KeyboardInterrupt and exc.args == ("stop",)
    exc = failed("exit")
    assert type(exc) is SystemExit and exc.code == 3
