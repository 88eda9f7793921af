# %% [markdown]
# # 2 · Splitting a dataset, and scout jobs
#
# *From a notebook cell to the grid*, part 2 of 5 (about 20 minutes).
#
# An analysis runs over a **dataset**: files of events. PanDA's task manager (JEDI) splits
# it into jobs, each a range of events of one file, cut at the file's cluster boundaries.
# How big should a job be? Give a number (`events_per_job=20_000`), or let **scout jobs**
# measure: with `"auto"` a few small jobs run first, their speed is measured, and the rest
# of the dataset is cut into jobs of about the target duration.

# %%
import awkward as ak

import panda_lab
from panda_lab.analysis.sample import make_sample
from panda_lab.teaching import check

lab = panda_lab.connect()
files = make_sample("data-course", files=2, events=50_000, basket_events=5_000, seed=7)
dataset = lab.datasets.register("course.small", [str(f) for f in files], replace=True)
dataset.files_frame()

# %% [markdown]
# A processor gets a chunk of events and returns something that adds up.

# %%
def count(events):
    return {"events": len(events), "two_muons": int(ak.sum(events.nMuon == 2))}


task_fixed = lab.analyze(count, dataset, events_per_job=20_000, name="course-fixed")
print(task_fixed.result())
task_fixed.report()[["job_index", "file_index", "start", "stop", "sites", "status"]]

# %% [markdown]
# ## Exercise 2.1: how many jobs?
#
# Set `n_jobs_fixed` to the number of jobs `task_fixed` was split into.

# %% tags=["solution"]
# Exercise 2.1: n_jobs_fixed = ...
n_jobs_fixed = len(task_fixed.report())

# %%
check("2.1", globals())

# %% [markdown]
# ## Scouts
#
# Now let the scouts decide. `task_auto.scouting` shows what they measured, and the
# report marks their rows with `scout`.

# %%
task_auto = lab.analyze(count, dataset, events_per_job="auto", n_scouts=2,
                        target_job_seconds=1.0, name="course-auto")
print(task_auto.result())
print(task_auto.scouting)
task_auto.report()[["job_index", "file_index", "start", "stop", "scout", "status"]]

# %% [markdown]
# ## Exercise 2.2: what the scouts read
#
# Set `scout_events` to the number of events the scout jobs of `task_auto` processed.

# %% tags=["solution"]
# Exercise 2.2: scout_events = ...
report = task_auto.report()
scouts = report[report["scout"].fillna(False).astype(bool)]
scout_events = int((scouts["stop"] - scouts["start"]).sum())

# %%
check("2.2", globals())

# %% [markdown]
# **To think about:** why are scouts small? What would go wrong if the first job of a
# task were given a tenth of the dataset?
