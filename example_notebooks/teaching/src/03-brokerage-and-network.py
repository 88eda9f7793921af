# %% [markdown]
# # 3 · Brokerage, data locality and the network
#
# *From a notebook cell to the grid*, part 3 of 5 (about 20 minutes).
#
# Before a job is queued, **brokerage** picks its site. It filters the candidates (a site
# offline, too small, excluded) and weighs the others: free capacity, speed, reliability,
# whether the data is there (locality), and how long reading it over the network would take.
# Every decision is recorded in the job's `broker_info`, and `explain` says it in a sentence.

# %%
from pathlib import Path

import panda_lab
import panda_lab.sim
from panda_lab.model.explain import explain
from panda_lab.teaching import check

lab = panda_lab.connect()
task = lab.task(lab.submit(abs, [(-i,) for i in range(6)], name="brokerage"))
task.wait(timeout=60)
jobs = lab.jobs(task.id)
for job in jobs:
    print(job["job_index"], explain(job["broker_info"]))

# %% [markdown]
# The record itself: every candidate, whether it passed the filters, and its factors.

# %%
jobs[0]["broker_info"]["candidates"]

# %% [markdown]
# ## Exercise 3.1: who was in the running?
#
# Set `passed_candidates` to the number of candidate sites of job 0 that passed the filters.

# %% tags=["solution"]
# Exercise 3.1: passed_candidates = ...
passed_candidates = sum(1 for c in jobs[0]["broker_info"]["candidates"] if c["passed"])

# %%
check("3.1", globals())

# %% [markdown]
# ## The simulator: a whole grid in virtual time
#
# Three laptop sites cannot show what the network does. The simulator runs a scenario
# (sites, slots, links, datasets, tasks) through the same splitter and brokerage as the
# server, in virtual time. Here all data sits at one site; let us compare two policies:
# `locality` (go where the data is) and `network` (weigh the cost of reading it remotely).

# %%
scenarios = Path(panda_lab.sim.__file__).parent / "scenarios"
scenario = panda_lab.sim.load(scenarios / "data-at-one-site.toml")
print(scenario.name, "-", scenario.description)
results = panda_lab.sim.simulate(scenario, ["locality", "network"])
for r in results:
    print(f"{r.policy:>9}: makespan {r.makespan_s / 3600:.2f} h")

# %% [markdown]
# ## Exercise 3.2: which policy wins?
#
# Set `faster_policy` to the name of the policy whose run ended first.

# %% tags=["solution"]
# Exercise 3.2: faster_policy = "..."
faster_policy = str(min(results, key=lambda r: r.makespan_s).policy)

# %%
check("3.2", globals())

# %% [markdown]
# ## Exercise 3.3: by how much?
#
# Set `speedup` to how many times faster the winner finished (slower makespan / faster).

# %% tags=["solution"]
# Exercise 3.3: speedup = ...
spans = sorted(r.makespan_s for r in results)
speedup = spans[-1] / spans[0]

# %%
check("3.3", globals())

# %% [markdown]
# **To think about:** the scenario's links are good (200 MB/s). What would you expect
# with slow links? Try `slow-link-to-big-site.toml`.
