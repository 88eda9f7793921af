"""Provisioners start, watch and stop pilots at sites (PanDA's Harvester).

Each provisioner registers itself with the model of its site keys
(:func:`panda_lab.provisioners.config.provisioner`); importing this package imports them
all, so :data:`REGISTRY` is complete before any site is read.
"""

from __future__ import annotations

from pathlib import Path

from panda_lab.provisioners.base import PilotSpec, Provisioner, ProvisionerError
from panda_lab.provisioners.config import REGISTRY, kinds
from panda_lab.provisioners.dask import DaskProvisioner
from panda_lab.provisioners.gateway import GatewayProvisioner
from panda_lab.provisioners.local import LocalProvisioner
from panda_lab.provisioners.slurm import SlurmProvisioner


def make_provisioner(spec: PilotSpec, home: Path, known_pilots: list[dict]) -> Provisioner | None:
    """The provisioner a site's configuration names, from the registry; ``None`` for
    ``provisioner = "none"`` (pilots started by hand) or a site that keeps no pilots.
    ``home`` is the server's runtime directory, ``known_pilots`` the store's running
    pilots (a provisioner adopts its own).  Raises ``ValueError`` for a provisioner name
    the registry does not know (``parse_sites`` refuses those first)."""
    site = spec.site
    kind = kinds().get(site.provisioner)
    if kind is None:
        raise ValueError(f"site {site.name}: no provisioner named {site.provisioner!r}")
    if kind.make is None or site.pilots <= 0:
        return None
    return kind.make.for_site(spec, home, known_pilots)


__all__ = ["REGISTRY", "DaskProvisioner", "GatewayProvisioner", "LocalProvisioner", "PilotSpec",
           "Provisioner", "ProvisionerError", "SlurmProvisioner", "make_provisioner"]
