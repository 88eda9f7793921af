"""The dimuon mass analysis used by the demo, the example notebooks and the benchmarks.

Events with exactly two opposite-charge muons; their invariant mass filled into a
histogram.  Vectorised with awkward and numpy: no per-event Python loop.
"""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np

MASS_AXIS = hist.axis.Regular(120, 60.0, 120.0, name="mass", label=r"$m_{\mu\mu}$ [GeV]")


def dimuon_mass(events: ak.Array) -> np.ndarray:
    """Invariant masses of the opposite-charge pairs of events with exactly two muons.

    ``events`` needs ``nMuon`` and the ``Muon`` collection (``pt``, ``eta``, ``phi``,
    ``mass``, ``charge``).  Returns a float numpy array, one mass in GeV per selected
    event (the units of ``Muon.pt`` and ``Muon.mass``)."""
    mu = events.Muon[events.nMuon == 2]
    mu = mu[ak.sum(mu.charge, axis=1) == 0]
    pt, eta, phi, m = mu.pt, mu.eta, mu.phi, mu.mass
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    m2 = (
        ak.sum(e, axis=1) ** 2
        - ak.sum(px, axis=1) ** 2
        - ak.sum(py, axis=1) ** 2
        - ak.sum(pz, axis=1) ** 2
    )
    return np.sqrt(np.maximum(ak.to_numpy(m2), 0.0))


def process(events: ak.Array) -> dict:
    """The processor: a mass histogram and the number of events seen.

    Returns ``{"mass": hist.Hist (120 bins, 60-120 GeV), "events": int}``."""
    h = hist.Hist(MASS_AXIS, storage=hist.storage.Double()).fill(dimuon_mass(events))
    return {"mass": h, "events": len(events)}


def peak(h: hist.Hist) -> float:
    """The centre of the most populated bin of ``h``'s first axis (GeV for ``mass``): where
    the Z is.  The first such bin on a tie; ``h`` must be one-dimensional."""
    return float(h.axes[0].centers[int(np.argmax(h.values()))])
