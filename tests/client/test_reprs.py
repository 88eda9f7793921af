"""What a person sees of a session and a task, in a notebook and in a terminal.

Kind tested (in ``test_every_surface_says_the_same_outcome``): a surface that computes
its own idea of a task's state, so that a task that lost data looks like a success on
one and like a running task on another.  Members, each checked for the one label
(:mod:`panda_lab.model.outcome`), its tone and the jobs lost: the server's task record
(``summary``, also what the panel's server extension passes on), ``task.summary``,
``repr(task)`` and ``task._repr_html_()``, ``lab.tasks()``, the task monitor widget
(title, bar colour, summary line instead of a rate and ETA, no Kill button) and its text
form, ``lab.monitor()`` (row label, bar colour), and the CLI's ``task`` and ``tasks``.
The panel and status bar (TypeScript) read the same ``summary``.
"""

from __future__ import annotations

import pytest


def half(x):
    return x / 2


def test_lab_and_task_show_readable_summaries(mlab):
    text = repr(mlab)
    assert mlab.url in text and "LOCAL-GRID (grid" in text
    html = mlab._repr_html_()
    assert "<table>" in html and "LOCAL-HPC" in html and "sqlite" in html
    with mlab.executor(name="repr-me") as ex:
        assert ex.submit(half, 3).result(timeout=30) == 1.5
        task = mlab.task(ex.task_id)
    assert "repr-me" in repr(ex) or f"task={task.id}" in repr(ex)
    task.wait(timeout=30)
    assert "'repr-me' done: its job finished · wall time " in repr(task)
    assert ">done: its job finished</b>" in task._repr_html_()
    assert "repr-me" in task._repr_html_()
    frame = mlab.tasks()
    assert frame.loc[task.id, "name"] == "repr-me" and frame.loc[task.id, "state"] == "done"
    assert frame.loc[task.id, "outcome"] == "done: its job finished"
    assert frame.loc[task.id, "jobs_lost"] == 0 and frame.loc[task.id, "wall_s"] > 0
    jobs = task.jobs()
    assert list(jobs["state"]) == ["finished"] and jobs.index.name == "id"


def half_or_fail(i):
    if i % 2:
        raise ValueError(f"odd input {i}")
    return i


def test_every_surface_says_the_same_outcome(mlab, capsys):
    pytest.importorskip("ipywidgets")
    from panda_lab.cli.main import main
    from panda_lab.widgets.monitor import LabMonitor, TaskMonitor
    from panda_lab.widgets.snapshot import take, text

    task_id = mlab.submit(half_or_fail, [(i,) for i in range(4)], name="lossy", retries=0)
    mlab.wait(task_id, timeout=60)
    label, lost = "finished: 2 of 4 jobs failed", "2 jobs lost"
    record = mlab.task_info(task_id)
    assert record["summary"]["label"] == label and record["summary"]["tone"] == "warning"
    assert record["summary"]["jobs_lost"] == 2 and record["summary"]["rate"] is None
    task = mlab.task(task_id)
    assert task.summary == record["summary"]
    assert label in repr(task) and f"{lost}: see task.errors()" in repr(task)
    assert f"panda-tone-warning' style='color:#ef6c00'>{label}</b>" in task._repr_html_()
    row = mlab.tasks().loc[task_id]
    assert (row["outcome"], row["jobs_lost"]) == (label, 2)
    m = TaskMonitor(mlab, task_id, start=False)
    assert label in m.title.value and "panda-tone-warning" in m.title.value
    assert m.bar.bar_style == "warning" and m.kill_button.layout.display == "none"
    assert lost in m.pace.value and " jobs/s" not in m.pace.value and "ETA" not in m.pace.value
    assert text(take(mlab, task_id)).startswith(f"task {task_id} 'lossy': {label} ·")
    lm = LabMonitor(mlab, start=False)
    row_label, bar, counts = lm.rows[task_id]
    assert label in row_label.value and bar.bar_style == "warning" and lost in counts.value
    for widget in (m, lm):
        widget.close()
    home = ["--home", str(mlab.home)]
    assert main([*home, "task", str(task_id)]) == 0
    assert capsys.readouterr().out.startswith(f"task {task_id} 'lossy': {label}")
    assert main([*home, "tasks"]) == 0
    assert label in capsys.readouterr().out
