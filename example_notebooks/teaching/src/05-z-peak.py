# %% [markdown]
# # 5 · A small physics analysis, end to end: the Z peak
#
# *From a notebook cell to the grid*, part 5 of 5 (about 20 minutes).
#
# Everything together: a dataset, a processor, jobs at the sites, a merged histogram, and
# a fit. The sample's events carry muon pairs; many come from Z bosons.

# %%
import awkward as ak
import hist
import matplotlib.pyplot as plt
import numpy as np
from scipy.special import voigt_profile

import panda_lab
from panda_lab.analysis.sample import make_sample
from panda_lab.teaching import check

lab = panda_lab.connect()
files = make_sample("data-course-z", files=2, events=50_000, basket_events=10_000, seed=2024)
dataset = lab.datasets.register("course.z", [str(f) for f in files], replace=True)

MASS = hist.axis.Regular(60, 60.0, 120.0, name="mass", label="m(mu mu) [GeV]")


def dimuon(events):
    mu = events.Muon[events.nMuon == 2]
    mu = mu[ak.sum(mu.charge, axis=1) == 0]
    px, py = mu.pt * np.cos(mu.phi), mu.pt * np.sin(mu.phi)
    pz = mu.pt * np.sinh(mu.eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + mu.mass**2)
    m2 = ak.sum(e, axis=1) ** 2 - ak.sum(px, axis=1) ** 2 - ak.sum(py, axis=1) ** 2 \
        - ak.sum(pz, axis=1) ** 2
    return {"mass": hist.Hist(MASS).fill(np.sqrt(np.maximum(ak.to_numpy(m2), 0)))}


task = lab.analyze(dimuon, dataset, events_per_job=25_000, name="course-z")
mass = task.result()["mass"]
x, y = mass.axes[0].centers, mass.values()
print(f"{int(y.sum()):,} opposite-charge pairs in 60-120 GeV")

# %% [markdown]
# ## The line shape
#
# A Z decays with a Breit-Wigner of full width Γ; the detector smears it with a Gaussian
# of width sigma. Together: a Voigt profile, `scipy.special.voigt_profile(x - m, sigma, gamma)`,
# where `gamma` is **half** the width Γ. Under the peak, a falling background.

# %%
bin_width = mass.axes[0].widths[0]


def model(x, n, m, sigma, gamma, a, b):
    return n * bin_width * voigt_profile(x - m, sigma, gamma) + a * np.exp(-b * (x - 60))

# %% [markdown]
# ## Exercise 5.1 and 5.2: fit the peak
#
# Fit `model` to the histogram with `scipy.optimize.curve_fit` (errors: `sqrt(N)`), and set
# `z_mass` to the fitted mass and `z_width` to the fitted full width Γ, both in GeV.

# %% tags=["solution"]
# Exercises 5.1 and 5.2: z_mass = ..., z_width = ...
from scipy.optimize import curve_fit

params, cov = curve_fit(model, x, y, p0=[y.sum(), x[np.argmax(y)], 1.0, 1.0, y[0], 0.05],
                        sigma=np.sqrt(np.maximum(y, 1)), maxfev=20_000)
z_mass, z_width = params[1], 2 * abs(params[3])

# %%
check("5.1", globals())

# %%
check("5.2", globals())

# %%
fit = globals().get("params")  # None until the exercise cell has run
fig, ax = plt.subplots(figsize=(7, 4))
ax.errorbar(x, y, yerr=np.sqrt(y), fmt=".", color="black", label="generated data")
if fit is not None:
    ax.plot(x, model(x, *fit), label="fit")
ax.set_xlabel(MASS.label)
ax.legend()
plt.show()
