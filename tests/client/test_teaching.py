"""The course's exercise checks (panda_lab/teaching.py): "right" for a right answer, a hint
for a wrong one that never contains the expected value, and never an exception.

Kind tested: a check that gives the answer away or crashes the class's notebook.  Members:
a missing name, a value of the wrong type, a wrong value near the right one, a value
that is right for a neighbouring question (every event instead of the scouts', the
resolution instead of the width), an answer that makes the check itself fail.
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from panda_lab import teaching
from panda_lab.teaching import check, verdict


class FakeTask:
    """What the checks read of a task: ``jobs``, ``info``, ``report``, ``errors``."""

    def __init__(self, jobs: pd.DataFrame | None = None, attempts: pd.DataFrame | None = None,
                 info: dict | None = None, report: pd.DataFrame | None = None,
                 errors: dict | None = None) -> None:
        self._jobs, self._attempts = jobs, attempts
        self._info, self._report, self._errors = info, report, errors

    def jobs(self, all_attempts: bool = False) -> pd.DataFrame:
        return self._attempts if all_attempts else self._jobs

    def info(self) -> dict:
        return self._info

    def report(self) -> pd.DataFrame:
        return self._report

    def errors(self) -> dict:
        return self._errors


JOBS = pd.DataFrame({"job_index": [0, 1, 2, 3, 4],
                     "pilot_id": [7, 8, 7, 9, 7],
                     "started_at": [1.0, 1.1, 2.0, 1.2, 3.0]})


def hint(exercise: str, ns: dict) -> str:
    text = verdict(exercise, ns)
    assert text.startswith("not yet: "), text
    return text


def test_jobs_per_pilot():
    ns = {"task": FakeTask(JOBS)}
    assert verdict("1.1", {**ns, "jobs_per_pilot": {7: 3, 8: 1, 9: 1}}) == "right"
    assert verdict("1.1", {**ns, "jobs_per_pilot": JOBS.groupby("pilot_id").size()}) == "right"
    assert "define `jobs_per_pilot`" in hint("1.1", ns)
    assert "dict" in hint("1.1", {**ns, "jobs_per_pilot": [3, 1, 1]})
    assert "add up to 4" in hint("1.1", {**ns, "jobs_per_pilot": {7: 2, 8: 1, 9: 1}})
    assert "keys" in hint("1.1", {**ns, "jobs_per_pilot": {0: 3, 1: 1, 2: 1}})
    assert "counts are off" in hint("1.1", {**ns, "jobs_per_pilot": {7: 2, 8: 2, 9: 1}})


def test_job0_pilot_order():
    ns = {"task": FakeTask(JOBS)}
    assert verdict("1.2", {**ns, "job0_pilot_jobs": [0, 2, 4]}) == "right"
    assert "wrong order" in hint("1.2", {**ns, "job0_pilot_jobs": [0, 4, 2]})
    text = hint("1.2", {**ns, "job0_pilot_jobs": [0, 1]})
    assert "not exactly" in text and "[0, 2, 4]" not in text
    assert "job 0" in hint("1.2", {**ns, "job0_pilot_jobs": [2, 4]})


#: Two files of 50,000 events: a scout at the start of each, the rest in one job each.
REPORT = pd.DataFrame({"start": [0, 0, 20000, 20000], "stop": [20000, 20000, 50000, 50000],
                       "scout": [True, True, False, False]})


def test_splitting_checks_say_too_many_or_few_and_spot_the_neighbouring_answer():
    fixed = {"task_fixed": FakeTask(info={"n_jobs": 6})}
    assert verdict("2.1", {**fixed, "n_jobs_fixed": 6}) == "right"
    assert "too few" in hint("2.1", {**fixed, "n_jobs_fixed": 5})
    assert "too many" in hint("2.1", {**fixed, "n_jobs_fixed": 8})
    assert "number" in hint("2.1", {**fixed, "n_jobs_fixed": "6"})
    auto = {"task_auto": FakeTask(report=REPORT)}
    assert verdict("2.2", {**auto, "scout_events": 40000}) == "right"
    assert "every event" in hint("2.2", {**auto, "scout_events": 100000})
    assert "40000" not in hint("2.2", {**auto, "scout_events": 20000})


def test_brokerage_and_simulator_checks():
    info = {"candidates": [{"site": "A", "passed": True}, {"site": "B", "passed": False},
                           {"site": "C", "passed": True}]}
    ns = {"jobs": [{"broker_info": info}]}
    assert verdict("3.1", {**ns, "passed_candidates": 2}) == "right"
    assert "filtered out" in hint("3.1", {**ns, "passed_candidates": 3})
    results = [SimpleNamespace(policy="locality", makespan_s=300.0),
               SimpleNamespace(policy="network", makespan_s=200.0)]
    ns = {"results": results}
    assert verdict("3.2", {**ns, "faster_policy": "network"}) == "right"
    assert "later" in hint("3.2", {**ns, "faster_policy": "locality"})
    assert "not one of" in hint("3.2", {**ns, "faster_policy": "round-robin"})
    assert verdict("3.3", {**ns, "speedup": 1.5}) == "right"
    assert ">= 1" in hint("3.3", {**ns, "speedup": 2 / 3})
    assert "ratio" in hint("3.3", {**ns, "speedup": 1.2})


def test_failure_checks():
    ns = {"fragile_task": FakeTask(errors={3: ValueError(), 7: ValueError()})}
    assert verdict("4.1", {**ns, "failing_inputs": [3, 7]}) == "right"
    assert "2 jobs failed" in hint("4.1", {**ns, "failing_inputs": [3]})
    assert "not the inputs" in hint("4.1", {**ns, "failing_inputs": [2, 6]})
    attempts = pd.DataFrame({"job_index": [0, 0, 1, 2, 2, 3]})
    ns = {"crashy_task": FakeTask(attempts=attempts)}
    assert verdict("4.2", {**ns, "attempts_per_job": {0: 2, 1: 1, 2: 2, 3: 1}}) == "right"
    assert "all_attempts" in hint("4.2", {**ns, "attempts_per_job": {0: 1, 1: 1, 2: 1, 3: 1}})
    assert "counts are off" in hint("4.2", {**ns, "attempts_per_job": {0: 3, 1: 1, 2: 2,
                                                                         3: 1}})


def test_z_peak_checks_never_print_the_generated_values():
    assert verdict("5.1", {"z_mass": 91.25}) == "right"
    assert verdict("5.2", {"z_width": 2.7}) == "right"
    for wrong in (90.5, 92.0, 30.0, float("nan")):
        text = hint("5.1", {"z_mass": wrong})
        assert "91.1" not in text and "91.2" not in text
    assert "full width" in hint("5.2", {"z_width": 1.25})  # the half width
    assert "positive" in hint("5.2", {"z_width": -2.5})
    assert "2.49" not in hint("5.2", {"z_width": 5.0})


def test_a_check_never_raises_and_an_unknown_exercise_is_named(capsys):
    class Broken:
        def jobs(self, all_attempts=False):
            raise RuntimeError("server gone")

    check("1.1", {"task": Broken(), "jobs_per_pilot": {1: 1}})
    assert "could not be checked (RuntimeError: server gone)" in capsys.readouterr().out
    check("5.1", {"z_mass": teaching.Z_MASS})
    assert capsys.readouterr().out == "right\n"
    with pytest.raises(KeyError, match=r"'9\.9'"):
        verdict("9.9", {})
