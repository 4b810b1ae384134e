"""The Aurora figure of merit: FOM = FOM1 + FOM2 + FOM3, per deployment (hpcbench.report.groups).

FOMk is the best total_throughput (input + output tokens/s, the seeds' throughput) among the deployment's
points tagged FOMk. A deployment missing a part gets no FOM sum: a partial sum would read as a (bad) full
FOM. Points of another sweep, mode, engine version or layout never fill in a missing part.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hpcbench.report.groups import DEPLOYMENT, with_deployment

if TYPE_CHECKING:
    import pandas as pd

FOM_PARTS: tuple[str, ...] = ("FOM1", "FOM2", "FOM3")


def best_fom_points(df: "pd.DataFrame") -> "pd.DataFrame":
    """The best (highest total_throughput) row per deployment x FOM part, with its `deployment` label."""
    tagged = with_deployment(df[df["fom"].isin(FOM_PARTS) & df["total_throughput"].notna()])
    if tagged.empty:
        return tagged
    idx = tagged.groupby(DEPLOYMENT + ["fom"], dropna=False, sort=True)["total_throughput"].idxmax()
    return tagged.loc[idx.to_numpy()]


def fom_table(df: "pd.DataFrame") -> "pd.DataFrame":
    """One row per deployment that has any FOM-tagged point.

    Columns: the DEPLOYMENT columns and their `deployment` label, FOM1..FOM3 (tokens/s), FOM (sum, NaN
    unless all parts are there), status ("complete" or "incomplete: missing FOMk"), failed and mismatch counts of the best
    points, and which point gave each part.
    """
    import pandas as pd

    best = best_fom_points(df)
    cols = DEPLOYMENT + ["deployment", *FOM_PARTS, "FOM", "status", "failed", "prompt_len_mismatches",
                         "output_len_mismatches", "best_points"]
    if best.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, grp in best.groupby(DEPLOYMENT, dropna=False, sort=True):
        parts = {r.fom: r for r in grp.itertuples(index=False)}
        values = {p: float(parts[p].total_throughput) if p in parts else math.nan for p in FOM_PARTS}
        missing = [p for p in FOM_PARTS if p not in parts]
        rows.append({
            **dict(zip(DEPLOYMENT, key)),
            "deployment": grp["deployment"].iloc[0],
            **values,
            "FOM": math.nan if missing else sum(values.values()),
            "status": "complete" if not missing else "incomplete: missing " + ", ".join(missing),
            "failed": grp["failed"].sum(min_count=1),
            "prompt_len_mismatches": grp["prompt_len_mismatches"].sum(min_count=1),
            "output_len_mismatches": grp["output_len_mismatches"].sum(min_count=1),
            "best_points": "; ".join(f"{p}={parts[p].experiment}/{parts[p].point_id}" for p in FOM_PARTS
                                     if p in parts),
        })
    return pd.DataFrame(rows, columns=cols)
