"""A ``%%panda`` cell never drops output silently, and shows any text a job prints.

The kind: output the notebook does not show, without a word.  Reports carry tails of
4000 characters, so what a cell prints faster than it is looked at cannot all be shown;
each place that leaves output out must say how much and where all of it is, and never
start a line in the middle unmarked.  Members tested through a real kernel and server:

- the rules without a kernel: a notebook following tails looked at now and then shows
  every line once, in order, and each gap as a marker whose counts add up
  (``test_following_tails_*``); the spooled full output keeps everything up to the
  limit, then says what it dropped (``test_spooled_output_*``);
- the issue's example, 2,000 numbered lines printed at once: the cell shows a marker
  line ``[... N lines (M characters) not shown; full output: ...]`` whose counts are
  exact, then whole lines to the end, and the full output is retrievable by the job id
  it names (``test_a_cell_printing_2000_lines_*``);
- bursts larger than a tail between two looks of a running cell: each gap is a marker
  and the counts add up (``test_bursts_between_looks_*``);
- output past the ``--output-limit``: the kept output says so and how to raise it
  (``test_output_limit_*``);
- text the wire refuses (an undecodable file name, NUL, a lone surrogate, ANSI codes) in
  a cell's output and in the exception it raises: shown by the rule of
  ``panda_lab.text`` and the kernel lives on (``test_bytes_a_cell_prints_or_raises_*``).
"""

from __future__ import annotations

import re

import pytest

from panda_lab.jupyter.cells import new_output
from panda_lab.output import Capture, split_tail

MARKER = re.compile(r"^\[\.\.\. ([\d,]+) lines? \(([\d,]+) characters\) not shown; full output: "
                    r"`panda-lab output (\d+)` or lab\.job_output\(\d+\)\]$")
LINE = re.compile(r"^line (\d{4}) of 2000$")
ALL = "".join(f"line {i:04d} of 2000\n" for i in range(1, 2001))


def _number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.parametrize("look_every", [1, 7, 150, 450, 5000])
def test_following_tails_shows_every_line_once_and_marks_each_gap(look_every):
    c = Capture(5)
    shown, old = "", ""
    for i in range(1, 2001):
        print(f"line {i:04d} of 2000", file=c)
        if i % look_every == 0 or i == 2000:
            new = c.tail()
            shown += new_output(old, new)
            old = new
    lines = shown.splitlines()
    gaps = [_number(m.group(1)) for m in map(MARKER.match, lines) if m]
    numbers = [int(LINE.match(x).group(1)) for x in lines if not MARKER.match(x)]
    assert numbers == sorted(set(numbers)) and numbers[-1] == 2000
    assert sum(gaps) + len(numbers) == 2000
    assert bool(gaps) == (look_every * 18 > 4000)  # a gap only when a look missed some
    assert new_output(old, c.tail()) == ""  # nothing new, nothing shown


def test_spooled_output_keeps_all_up_to_the_limit_then_says_what_it_dropped(tmp_path):
    small = Capture(5, tmp_path / "small", limit=len(ALL))
    small.write(ALL)
    small.finish()
    assert (tmp_path / "small").read_text() == ALL
    over = Capture(5, tmp_path / "over", limit=1000)
    over.write(ALL)
    over.finish()
    kept = (tmp_path / "over").read_text()
    body = split_tail(over.tail())[3]
    assert kept.startswith(ALL[:1000]) and kept.endswith(body)
    dropped = len(ALL) - 1000 - len(body)
    assert f"[... {dropped:,} characters past the output limit of 1,000" in kept
    near = Capture(5, tmp_path / "near", limit=len(ALL) - 10)  # the tail covers the rest
    near.write(ALL)
    near.finish()
    assert (tmp_path / "near").read_text() == ALL


def test_a_cell_printing_2000_lines_says_what_it_dropped_and_where_all_of_it_is(kernel, nlab):
    reply = kernel.ok("%%panda --name t-2000\n"
                      "for i in range(1, 2001):\n"
                      "    print(f'line {i:04d} of 2000')\n")
    lines = reply.stdout.splitlines()
    marks = [m for m in map(MARKER.match, lines) if m]
    assert len(marks) == 1 and MARKER.match(lines[0]), reply.stdout[:300]
    dropped_lines, dropped_chars, job_id = (_number(g) for g in marks[0].groups())
    shown = [int(LINE.match(x).group(1)) for x in lines[1:]]  # each a whole line
    assert shown == list(range(dropped_lines + 1, 2001))
    assert dropped_chars == len(ALL) - len("\n".join(lines[1:]) + "\n")
    assert 0 < dropped_lines < 2000
    job = nlab.jobs("t-2000")[0]
    assert job["id"] == job_id and job["state"] == "finished"
    assert nlab.job_output(job_id) == ALL
    # as the marker says, from the notebook too
    assert kernel.value(f"__import__('panda_lab').connect().job_output({job_id}) "
                        f"== {ALL!r}")


def test_bursts_between_looks_show_each_gap_as_a_marker(kernel, nlab):
    reply = kernel.ok("%%panda --name t-bursts\n"
                      "import time\n"
                      "for burst in range(3):\n"
                      "    for i in range(600):\n"
                      "        print(f'burst {burst} line {i:03d}', flush=True)\n"
                      "    time.sleep(1.5)\n", timeout=90)
    lines = reply.stdout.splitlines()
    gaps = [_number(m.group(1)) for m in map(MARKER.match, lines) if m]
    shown = [x for x in lines if not MARKER.match(x)]
    assert all(re.fullmatch(r"burst \d line \d{3}", x) for x in shown), shown[:3]
    assert len(gaps) >= 3 and sum(gaps) + len(shown) == 1800
    assert shown[-1] == "burst 2 line 599" and len(set(shown)) == len(shown)
    job = nlab.jobs("t-bursts")[0]
    assert nlab.job_output(job["id"]).count("\n") == 1800


def test_output_limit_of_a_cell_is_kept_and_named(kernel, nlab):
    kernel.ok("%%panda --name t-limit --output-limit 1000\n"
              "for i in range(1, 2001):\n"
              "    print(f'line {i:04d} of 2000')\n")
    full = nlab.job_output(nlab.jobs("t-limit")[0]["id"])
    assert full.startswith(ALL[:1000]) and full.endswith("line 2000 of 2000\n")
    assert "past the output limit of 1,000 characters dropped" in full
    assert "%%panda --output-limit" in full
    reply = kernel.run("%%panda --output-limit -5\nx = 1\n")
    assert reply.status == "error" and "--output-limit needs" in reply.stderr


def test_bytes_a_cell_prints_or_raises_are_shown_and_the_kernel_lives(kernel, nlab):
    reply = kernel.ok("%%panda --name t-bytes\n"
                      "import os, sys\n"
                      "name = os.fsdecode(b'a\\xdf')\n"
                      "print(name, 'nul\\x00', '\\ud800', '\\x1b[31mred\\x1b[0m')\n"
                      "print(name, file=sys.stderr)\n")
    assert "a\\xdf nul\\x00 \\ud800 \x1b[31mred\x1b[0m\n" in reply.stdout
    assert "a\\xdf\n" in reply.stderr
    assert kernel.value("name") == "a\udcdf"  # the value itself comes back as it was
    assert nlab.task("t-bytes").status == "done"
    reply = kernel.run("%%panda --name t-bytes-raise --retries 0\n"
                       "import os\n"
                       "raise FileNotFoundError(os.fsdecode(b'data_\\xdf.root') + '\\x00')\n")
    assert reply.status == "error" and "FileNotFoundError" in reply.traceback
    assert "data_" in reply.traceback
    failed = nlab.jobs("t-bytes-raise")[0]
    assert failed["error_category"] == "user"
    assert failed["error_message"] == "FileNotFoundError: data_\\xdf.root\\x00"
    assert kernel.value("1 + 1") == 2
