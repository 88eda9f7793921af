"""Provisioners start, watch and stop pilots at sites (PanDA's Harvester)."""

from __future__ import annotations

from pathlib import Path

from panda_lab.provisioners.base import PilotSpec, Provisioner
from panda_lab.provisioners.local import LocalProvisioner


def make_provisioner(spec: PilotSpec, home: Path, known_pilots: list[dict]) -> Provisioner | None:
    """The provisioner a site's configuration names; ``None`` for ``provisioner = "none"``
    (pilots started by hand) or a site that keeps no pilots."""
    site = spec.site
    if site.provisioner == "none" or site.pilots <= 0:
        return None
    if site.provisioner == "local":
        return LocalProvisioner(spec, home / "logs", known_pilots)
    if site.provisioner == "slurm":
        from panda_lab.provisioners.slurm import SlurmProvisioner

        return SlurmProvisioner(spec, home)
    if site.provisioner == "dask":
        from panda_lab.provisioners.dask import DaskProvisioner

        return DaskProvisioner(spec)
    if site.provisioner == "gateway":
        from panda_lab.provisioners.gateway import GatewayProvisioner

        return GatewayProvisioner(spec)
    raise ValueError(f"site {site.name}: no provisioner named {site.provisioner!r}")


__all__ = ["LocalProvisioner", "PilotSpec", "Provisioner", "make_provisioner"]
