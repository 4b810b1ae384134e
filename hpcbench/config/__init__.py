"""Typed, validated configuration: sites, models, sweeps and the resolved job.

Names are imported on first use (PEP 562), so `hpcbench --help` never loads msgspec or YAML.
"""

from __future__ import annotations

import importlib
from typing import Any

from hpcbench.config.errors import ConfigError, UserError

_LAZY = {
    "ModelSpec": "model", "load_models": "model", "resolve_model": "model",
    "Site": "site", "load_site": "site", "site_names": "site", "list_sites": "site",
    "Scenario": "sweep", "Sweep": "sweep", "SweepPoint": "sweep", "load_sweep": "sweep", "sweep_names": "sweep",
}

__all__ = ["ConfigError", "UserError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"hpcbench.config.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'hpcbench.config' has no attribute {name!r}")
