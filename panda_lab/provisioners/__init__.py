"""Provisioners start, watch and stop pilots at sites: local processes, and more to come."""

from panda_lab.provisioners.base import PilotSpec, Provisioner
from panda_lab.provisioners.local import LocalProvisioner

__all__ = ["LocalProvisioner", "PilotSpec", "Provisioner"]
