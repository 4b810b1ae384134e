"""Which points may be compared or combined: the one place that says what defines a deployment.

Two points belong to the same deployment only when the site, model, sweep, launch mode, engine and its
version, node and GPU counts, parallel layout, dtype and context length are all equal. A FOM sums the
best points of one deployment; a scenario table or plot line shows one deployment. Scenario names are
only unique within a sweep ("chat" is a different workload in different sweeps), so a scenario is
always keyed by its sweep too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# Shown as columns of their own in the report tables.
SHOWN: list[str] = ["site", "model", "sweep", "nodes", "gpus"]
# Folded into the one-line `deployment` label next to them.
LAYOUT: list[str] = ["mode", "engine", "engine_version", "tp", "pp", "replicas", "dtype", "max_model_len"]
DEPLOYMENT: list[str] = SHOWN + LAYOUT
WORKLOAD: list[str] = DEPLOYMENT + ["scenario"]


def _text(value: Any) -> str:
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "?"
    return f"{value:g}" if isinstance(value, float) else str(value)


def layout_label(row: dict[str, Any]) -> str:
    """The deployment's layout in one line, e.g. "serve vllm 0.11.0, TP4 PP1 x2, bfloat16, len 8192"."""
    t = {c: _text(row.get(c)) for c in LAYOUT}
    return (f"{t['mode']} {t['engine']} {t['engine_version']}, TP{t['tp']} PP{t['pp']} x{t['replicas']}, "
            f"{t['dtype']}, len {t['max_model_len']}")


def with_deployment(df: "pd.DataFrame") -> "pd.DataFrame":
    """df with a `deployment` column (layout_label of each row); missing key columns are added empty."""
    out = df.copy()
    for c in DEPLOYMENT:
        if c not in out:
            out[c] = math.nan
    out["deployment"] = [layout_label(r) for r in out[LAYOUT].to_dict("records")] if len(out) else []
    return out
