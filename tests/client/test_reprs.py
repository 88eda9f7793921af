"""What a person sees of a session and a task, in a notebook and in a terminal."""

from __future__ import annotations


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
    assert "'repr-me' done: 1/1 jobs done" in repr(task)
    assert "<b>done</b>" in task._repr_html_() and "repr-me" in task._repr_html_()
    frame = mlab.tasks()
    assert frame.loc[task.id, "name"] == "repr-me" and frame.loc[task.id, "state"] == "done"
    jobs = task.jobs()
    assert list(jobs["state"]) == ["finished"] and jobs.index.name == "id"
