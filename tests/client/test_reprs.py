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
    assert "'repr-me' done: all 1 jobs finished · wall time " in repr(task)
    assert ">done: all 1 jobs finished</b>" in task._repr_html_()
    assert "repr-me" in task._repr_html_()
    frame = mlab.tasks()
    assert frame.loc[task.id, "name"] == "repr-me" and frame.loc[task.id, "state"] == "done"
    assert frame.loc[task.id, "outcome"] == "done: all 1 jobs finished"
    assert frame.loc[task.id, "jobs_lost"] == 0 and frame.loc[task.id, "wall_s"] > 0
    jobs = task.jobs()
    assert list(jobs["state"]) == ["finished"] and jobs.index.name == "id"
