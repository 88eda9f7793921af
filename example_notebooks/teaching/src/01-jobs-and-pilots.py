# %% [markdown]
# # 1 · Jobs and pilots: late binding, seen live
#
# *From a notebook cell to the grid*, part 1 of 5 (about 20 minutes).
#
# PanDA does not send a job to a machine. It puts the job in a queue; **pilots** (small
# programs already running at each site) ask the server for work when they have a free
# slot, and only then is a job bound to a pilot. This is *late binding*: a job goes to
# whichever pilot is free first, and a slow or dead machine never holds a job it cannot run.
#
# Here the server and its three sites (grid, cloud, hpc) run on this machine, one pilot each.

# %%
import pandas as pd

import panda_lab
from panda_lab.teaching import check

lab = panda_lab.connect()
pd.DataFrame(lab.sites())[["name", "kind", "pilots", "queued", "running"]]

# %% [markdown]
# ## More jobs than slots
#
# We submit 12 jobs, each a short sleep. There are only 3 pilots, so most jobs wait in the
# queue: watch the monitor as the pilots take them one after the other.

# %%
def work(i):
    import time

    time.sleep(0.2)
    return i * i


task = lab.task(lab.submit(work, [(i,) for i in range(12)], name="late-binding"))
lab.monitor()

# %%
task.wait(timeout=120)
jobs = task.jobs()
jobs[["job_index", "state", "site", "pilot_id", "started_at", "ended_at"]]

# %% [markdown]
# ## Exercise 1.1: who did the work?
#
# Make `jobs_per_pilot`, a dict `{pilot id: number of jobs that pilot ran}`, from `jobs`.

# %% tags=["solution"]
# Exercise 1.1: jobs_per_pilot = {pilot id: jobs it ran}
jobs_per_pilot = jobs.groupby("pilot_id").size().to_dict()

# %%
check("1.1", globals())

# %% [markdown]
# ## Exercise 1.2: one pilot's day
#
# A pilot takes a job, runs it, and asks again. Make `job0_pilot_jobs`: the list of job
# indexes run by the pilot that ran job 0, in the order it started them. Nobody decided
# that list in advance: it is what late binding made.

# %% tags=["solution"]
# Exercise 1.2: job0_pilot_jobs = [job indexes], in the order they started
pilot = jobs.loc[jobs["job_index"] == 0, "pilot_id"].iloc[0]
job0_pilot_jobs = list(jobs[jobs["pilot_id"] == pilot].sort_values("started_at")["job_index"])

# %%
check("1.2", globals())

# %% [markdown]
# **To think about:** run the submission cell again. Do the same pilots run the same jobs?
# Why is that a good thing when one site is slower than the others?
