"""The brokerage simulator: a scenario's workload run in virtual time through the same
splitter and brokerage functions as the server (:mod:`panda_lab.sim.engine`), from a
TOML scenario (:mod:`panda_lab.sim.scenario`).  Imports the model only."""

from panda_lab.sim.engine import Result, Simulation, simulate
from panda_lab.sim.scenario import Scenario, ScenarioError, load, parse

__all__ = ["Result", "Scenario", "ScenarioError", "Simulation", "load", "parse", "simulate"]
