"""The checks of the course "From a notebook cell to the grid" (``example_notebooks/teaching``).

Each exercise of the course asks for a value under a given name; its check cell calls
``check("N.M", globals())``, which prints ``right`` when the value is right and otherwise
a hint: what is wrong and where to look, never the expected value.  The expected value
is computed here from what the notebook ran (its task, its results), the same way a
grader would, so a check cannot be passed by copying a number from this module.

The rule followed is the one of nbgrader's and otter-grader's autograded cells: a check
never raises on a wrong or missing answer (a class must be able to run the notebook top
to bottom), and it says what is wrong without revealing the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

RIGHT = "right"

#: Generated values of the course's dimuon sample (panda_lab/analysis/sample.py), GeV.
Z_MASS, Z_WIDTH = 91.1876, 2.4952
#: How far a fitted Z mass and width may be from them, GeV (the fit of 100,000 events).
MASS_TOLERANCE, WIDTH_TOLERANCE = 0.3, 0.8


class Hint(Exception):
    """A wrong answer: the message says what is wrong, not what is right."""


def _need(ns: Mapping[str, Any], *names: str) -> list[Any]:
    missing = [n for n in names if n not in ns or ns[n] is None]
    if missing:
        raise Hint(f"define {', '.join(f'`{n}`' for n in missing)} first (run the cells "
                   "above, then write your answer in the exercise cell)")
    return [ns[n] for n in names]


def _as_dict(value: Any, name: str) -> dict:
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise Hint(f"`{name}` should be a dict, not {type(value).__name__}")
    return {int(k) if isinstance(k, (int, float)) and not isinstance(k, bool) else k: v
            for k, v in value.items()}


def _number(value: Any, name: str) -> float:
    if isinstance(value, (bool, str)) or not hasattr(value, "__float__"):
        raise Hint(f"`{name}` should be a number, not {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x):
        raise Hint(f"`{name}` is {x}: did the fit converge?")
    return x


# ---- 1. jobs and pilots ----------------------------------------------------------------

def _jobs_per_pilot(ns: Mapping[str, Any]) -> None:
    answer, task = _need(ns, "jobs_per_pilot", "task")
    got = _as_dict(answer, "jobs_per_pilot")
    jobs = task.jobs()
    want = {int(k): int(v) for k, v in jobs.groupby("pilot_id").size().items()}
    total = sum(int(v) for v in got.values() if isinstance(v, (int, float)))
    if total != len(jobs):
        raise Hint(f"your counts add up to {total}, but the task has {len(jobs)} jobs: "
                   "count each job once, under the pilot that ran it")
    if set(got) != set(want):
        raise Hint("the keys should be the ids of the pilots that ran the jobs "
                   "(a column of task.jobs())")
    if got != want:
        raise Hint("the right pilots, but some counts are off: group the jobs by pilot")


def _job0_pilot_order(ns: Mapping[str, Any]) -> None:
    answer, task = _need(ns, "job0_pilot_jobs", "task")
    if not isinstance(answer, (list, tuple)):
        raise Hint(f"`job0_pilot_jobs` should be a list of job indexes, not "
                   f"{type(answer).__name__}")
    jobs = task.jobs()
    pilot = jobs.loc[jobs["job_index"] == 0, "pilot_id"].iloc[0]
    mine = jobs[jobs["pilot_id"] == pilot].sort_values("started_at")
    want = [int(i) for i in mine["job_index"]]
    got = [int(i) for i in answer]
    if 0 not in got:
        raise Hint("job 0 itself is missing: start from the pilot that ran job 0")
    if sorted(got) != sorted(want):
        raise Hint(f"you listed {len(got)} jobs; these are not exactly the jobs of job 0's "
                   "pilot (filter task.jobs() on its pilot_id)")
    if got != want:
        raise Hint("the right jobs, in the wrong order: order them by when they started")


# ---- 2. splitting and scouts -----------------------------------------------------------

def _n_jobs_fixed(ns: Mapping[str, Any]) -> None:
    answer, task = _need(ns, "n_jobs_fixed", "task_fixed")
    got = _number(answer, "n_jobs_fixed")
    want = int(task.info()["n_jobs"])
    if got != want:
        raise Hint(f"{got:g} is too {'many' if got > want else 'few'}: a job never crosses "
                   "a file boundary, so each file is cut on its own (count the rows of "
                   "task_fixed.report())")


def _scout_events(ns: Mapping[str, Any]) -> None:
    answer, task = _need(ns, "scout_events", "task_auto")
    got = _number(answer, "scout_events")
    report = task.report()
    scouts = report[report["scout"].fillna(False).astype(bool)]
    want = int((scouts["stop"] - scouts["start"]).sum())
    total = int((report["stop"] - report["start"]).sum())
    if got == want:
        return
    if got == total:
        raise Hint("that is every event of the dataset: keep only the scout jobs' rows")
    raise Hint("not the scouts' events: select the report's rows where `scout` is "
               "true and add up how many entries each one read (stop - start)")


# ---- 3. brokerage and the simulator ----------------------------------------------------

def _passed_candidates(ns: Mapping[str, Any]) -> None:
    answer, jobs = _need(ns, "passed_candidates", "jobs")
    got = _number(answer, "passed_candidates")
    info = jobs[0]["broker_info"]
    cands = info.get("candidates") or []
    want = sum(1 for c in cands if c.get("passed"))
    if got == len(cands) and want != len(cands):
        raise Hint("that counts every candidate: some were filtered out")
    if got != want:
        raise Hint("count the candidates of job 0's broker_info whose `passed` is true")


def _faster_policy(ns: Mapping[str, Any]) -> None:
    answer, results = _need(ns, "faster_policy", "results")
    if not isinstance(answer, str):
        raise Hint("`faster_policy` should be a policy's name (a str)")
    names = [str(r.policy) for r in results]
    if answer not in names:
        raise Hint(f"{answer!r} is not one of the policies you simulated")
    if answer != str(min(results, key=lambda r: r.makespan_s).policy):
        raise Hint("that policy finished later: compare the results' makespan_s")


def _speedup(ns: Mapping[str, Any]) -> None:
    answer, results = _need(ns, "speedup", "results")
    got = _number(answer, "speedup")
    spans = sorted(r.makespan_s for r in results)
    want = spans[-1] / spans[0]
    if got < 1:
        raise Hint("a speed-up is the slower makespan over the faster one: it is >= 1")
    if abs(got - want) > 0.01 * want:
        raise Hint("not the ratio of the two makespans (slower / faster)")


# ---- 4. failures and retries -----------------------------------------------------------

def _failing_inputs(ns: Mapping[str, Any]) -> None:
    answer, task = _need(ns, "failing_inputs", "fragile_task")
    if not isinstance(answer, (list, tuple, set)):
        raise Hint(f"`failing_inputs` should be a list, not {type(answer).__name__}")
    want = sorted(task.errors())
    got = sorted(int(x) for x in answer)
    if len(got) != len(want):
        raise Hint(f"you have {len(got)} inputs, but {len(want)} jobs failed for good "
                   "(task.errors() says which)")
    if got != want:
        raise Hint("the right number, but not the inputs that failed: the keys of "
                   "task.errors() are job indexes")


def _attempts_per_job(ns: Mapping[str, Any]) -> None:
    answer, task = _need(ns, "attempts_per_job", "crashy_task")
    got = _as_dict(answer, "attempts_per_job")
    attempts = task.jobs(all_attempts=True)
    want = {int(k): int(v) for k, v in attempts.groupby("job_index").size().items()}
    if set(got) != set(want):
        raise Hint("the keys should be every job index of the task")
    if all(v == 1 for v in got.values()):
        raise Hint("every job had one attempt? look at every attempt, not only the "
                   "latest (task.jobs(all_attempts=True))")
    if got != want:
        raise Hint("some counts are off: count the rows of each job_index among all attempts")


# ---- 5. the Z peak ---------------------------------------------------------------------

def _z_mass(ns: Mapping[str, Any]) -> None:
    (answer,) = _need(ns, "z_mass")
    got = _number(answer, "z_mass")
    if not 60 <= got <= 120:
        raise Hint("that is outside the histogram (60-120 GeV): is it the mass parameter?")
    if abs(got - Z_MASS) > MASS_TOLERANCE:
        raise Hint(f"off by more than {MASS_TOLERANCE} GeV: start the fit near the "
                   "fullest bin, and fit with the errors sqrt(N)")


def _z_width(ns: Mapping[str, Any]) -> None:
    (answer,) = _need(ns, "z_width")
    got = _number(answer, "z_width")
    if got <= 0:
        raise Hint("a width is positive: take the absolute value of the fitted parameter")
    if abs(got - Z_WIDTH) > WIDTH_TOLERANCE:
        raise Hint("off by too much: is it the Breit-Wigner's full width (gamma is its "
                   "half width in scipy's voigt_profile), not the resolution?")


#: Each exercise's checker, by the number the notebooks use ("notebook.exercise").
CHECKS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "1.1": _jobs_per_pilot, "1.2": _job0_pilot_order,
    "2.1": _n_jobs_fixed, "2.2": _scout_events,
    "3.1": _passed_candidates, "3.2": _faster_policy, "3.3": _speedup,
    "4.1": _failing_inputs, "4.2": _attempts_per_job,
    "5.1": _z_mass, "5.2": _z_width,
}


def verdict(exercise: str, ns: Mapping[str, Any]) -> str:
    """``"right"``, or a hint (one line, starting ``"not yet: "``) for exercise
    ``exercise`` (a key of :data:`CHECKS`) given the notebook's names ``ns``
    (``globals()``).  Raises ``KeyError`` naming the exercise when there is no such
    exercise; any other error of a check is reported as a hint, not raised."""
    if exercise not in CHECKS:
        raise KeyError(f"no exercise {exercise!r}: the course has {', '.join(CHECKS)}")
    try:
        CHECKS[exercise](ns)
    except Hint as hint:
        return f"not yet: {hint}"
    except Exception as exc:  # a value of an unexpected shape: say so, do not crash
        return f"not yet: your answer could not be checked ({type(exc).__name__}: {exc})"
    return RIGHT


def check(exercise: str, ns: Mapping[str, Any]) -> None:
    """Print :func:`verdict` for ``exercise`` (a check cell's whole output)."""
    print(verdict(exercise, ns))
