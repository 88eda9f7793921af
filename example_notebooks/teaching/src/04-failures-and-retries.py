# %% [markdown]
# # 4 · Failures, retries, and reading the monitor
#
# *From a notebook cell to the grid*, part 4 of 5 (about 20 minutes).
#
# Jobs fail in two ways. Your code raises (a *user* error): running it again gives the
# same error, so PanDA does not retry it, it reports it. Or the machine lets you down (a
# *system* error: a worker crashed, a pilot died): then the job is retried, and brokerage
# avoids the site that just failed it.

# %%
import tempfile

import panda_lab
from panda_lab.teaching import check

lab = panda_lab.connect()


def fragile(x):
    if x % 4 == 3:
        raise ValueError(f"cannot handle {x}")
    return x * 10


fragile_task = lab.task(lab.submit(fragile, [(i,) for i in range(8)], name="fragile"))
fragile_task.wait(timeout=60)
print(fragile_task.status, fragile_task.results())
fragile_task.errors()

# %% [markdown]
# The monitor shows the same: the task, its jobs by state, and the errors.

# %%
fragile_task.monitor()

# %% [markdown]
# ## Exercise 4.1: which inputs failed?
#
# Set `failing_inputs` to the sorted list of job indexes that failed for good.

# %% tags=["solution"]
# Exercise 4.1: failing_inputs = [...]
failing_inputs = sorted(fragile_task.errors())

# %%
check("4.1", globals())

# %% [markdown]
# ## A machine that crashes
#
# This function kills its own worker process the first time it sees an input (as a
# segfault or an out-of-memory kill would): a system error. Watch the retries.

# %%
marks = tempfile.mkdtemp(prefix="course-")


def crashy(x, marks):
    import os

    mark = os.path.join(marks, str(x))
    if x % 3 == 0 and not os.path.exists(mark):
        open(mark, "w").close()
        os._exit(1)
    return x


crashy_task = lab.task(lab.submit(crashy, [(i, marks) for i in range(6)], name="crashy"))
crashy_task.wait(timeout=120)
print(crashy_task.status, crashy_task.results())
attempts = crashy_task.jobs(all_attempts=True)
attempts[["job_index", "attempt", "state", "site", "error_category", "error_message"]]

# %% [markdown]
# ## Exercise 4.2: counting attempts
#
# Set `attempts_per_job` to a dict `{job index: number of attempts}` for `crashy_task`.
# Then look at the sites: did a retried job run again where it crashed?

# %% tags=["solution"]
# Exercise 4.2: attempts_per_job = {job index: attempts}
attempts_per_job = attempts.groupby("job_index").size().to_dict()

# %%
check("4.2", globals())
