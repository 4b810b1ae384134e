"""Typed, validated configuration: sites, models, sweeps and the resolved job."""

from hpcbench.config.errors import ConfigError, UserError
from hpcbench.config.model import ModelSpec, load_models, resolve_model
from hpcbench.config.site import Site, load_site, site_names
from hpcbench.config.sweep import Scenario, Sweep, SweepPoint, load_sweep, sweep_names

__all__ = [
    "ConfigError", "UserError", "ModelSpec", "load_models", "resolve_model", "Site", "load_site",
    "site_names", "Scenario", "Sweep", "SweepPoint", "load_sweep", "sweep_names",
]
