"""What a job and a pilot used, in words (panda_lab/model/usage.py).

Kind: resource numbers that read 0 or the pilot's own instead of the payload's.  Here
the member is the wording: a number not measured must say so, never read "0 MB"."""

from __future__ import annotations

from panda_lab.model.usage import job_usage, megabytes, pilot_usage


def test_a_jobs_use_in_words_and_not_measured_is_never_zero():
    job = {"peak_rss_mb": 231.4, "cpu_s": 4.1, "started_at": 10.0, "ended_at": 14.2}
    assert job_usage(job) == "peak memory 231 MB, CPU 4.10 s (98 % of its 4.20 s run)"
    assert job_usage({"peak_rss_mb": None, "cpu_s": None}) == "memory and CPU not measured"
    assert job_usage({"memory_mb": 0}) == "memory and CPU not measured"
    assert job_usage({"peak_rss_mb": 2048.0, "cpu_s": None}) == \
        "peak memory 2.0 GB, CPU not measured"
    assert megabytes(0.42) == "0.4 MB"


def test_a_pilots_use_in_words():
    assert pilot_usage({"rss_mb": None}) == "usage not reported yet"
    assert pilot_usage({"rss_mb": 412.0, "cpu_s": 12.3, "cpu_pct": 97.4}) == \
        "412 MB, CPU 97 %, 12 s CPU in all"
    assert pilot_usage({"rss_mb": 41.0, "cpu_s": 1.5, "cpu_pct": None}) == \
        "41 MB, 1.50 s CPU in all"
