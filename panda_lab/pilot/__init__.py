"""The pilot loop and the payload runner: what runs on a compute resource."""

from panda_lab.pilot.pilot import Pilot, PilotOptions

__all__ = ["Pilot", "PilotOptions"]
