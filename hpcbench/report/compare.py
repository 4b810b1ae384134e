"""`collect --compare A B`: two experiments (directories) or two sites, point by point, with ratios B/A.

Points are matched on what was asked (scenario, lengths, concurrency, request rate), plus the model when
both sides measured a common model. When one side has several rows for a key (several experiments of a
site), its best total-throughput row stands for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from hpcbench.config.errors import UserError
from hpcbench.report.cells import Table, from_frame, to_text
from hpcbench.report.markdown import table_md
from hpcbench.report.tables import with_per_gpu

if TYPE_CHECKING:
    import pandas as pd

    from hpcbench.report.collect import Collected

KEY: list[str] = ["scenario", "input_len", "output_len", "concurrency", "request_rate"]
METRICS: list[str] = ["total_throughput", "output_throughput", "per_gpu_output", "ttft_ms_median",
                      "ttft_ms_p99", "tpot_ms_median", "tpot_ms_p99", "failed"]
SHOWN: dict[str, str] = {"total_throughput": "total tok/s", "per_gpu_output": "out tok/s/GPU",
                         "ttft_ms_median": "TTFT p50 ms", "tpot_ms_median": "TPOT p50 ms"}


def side_points(collected: "Collected", spec: str) -> "pd.DataFrame":
    """Rows for one side: an existing directory (experiments under it) or a site name."""
    from hpcbench.report.collect import collect_points

    path = Path(spec)
    if path.is_dir():
        real = os.path.realpath(path)
        df = collected.points
        paths = {p for p in df["experiment_path"].astype(str).unique() if _under(os.path.realpath(p), real)}
        mine = df[df["experiment_path"].astype(str).isin(paths)]
        if not mine.empty:
            return mine
        return collect_points([path]).points  # not under the collected roots: read it on its own
    df = collected.points[collected.points["site"] == spec]
    if df.empty:
        sites = ", ".join(sorted(collected.points["site"].dropna().astype(str).unique()))
        raise UserError(f"--compare: {spec!r} is neither a directory nor a collected site (sites: {sites})")
    return df


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def compare_points(a: "pd.DataFrame", b: "pd.DataFrame") -> "pd.DataFrame":
    """Outer join of A and B on the point key; <metric>_A, <metric>_B and <metric>_B/A per metric.

    A point only one side measured stays, with the other side empty (no ratio).
    """
    import pandas as pd

    key = list(KEY)
    if set(a["model"].dropna()) & set(b["model"].dropna()):
        key = ["model", *key]
    best_a, best_b = _best(a, key), _best(b, key)
    merged = pd.merge(best_a, best_b, on=key, how="outer", suffixes=("_A", "_B"), sort=True)
    cols = list(key)
    for m in METRICS:
        ratio = merged[f"{m}_B"] / merged[f"{m}_A"].where(merged[f"{m}_A"] != 0)
        merged[f"{m}_B/A"] = ratio
        cols += [f"{m}_A", f"{m}_B", f"{m}_B/A"]
    return merged[cols].reset_index(drop=True)


def _best(df: "pd.DataFrame", key: list[str]) -> "pd.DataFrame":
    pts = with_per_gpu(df)
    pts = pts.assign(_tt=pts["total_throughput"].fillna(float("-inf")))
    idx = pts.groupby(key, dropna=False, sort=True)["_tt"].idxmax()
    return pts.loc[idx.to_numpy(), key + METRICS]


def compare_table(cmp: "pd.DataFrame", a: str, b: str) -> Table:
    key = [c for c in ["model", *KEY] if c in cmp.columns]
    cols = list(key)
    labels = {"input_len": "ISL", "output_len": "OSL", "request_rate": "req/s"}
    for m, name in SHOWN.items():
        for side in ("A", "B", "B/A"):
            cols.append(f"{m}_{side}")
            labels[f"{m}_{side}"] = f"{name} {side}"
    digits = {f"{m}_B/A": 3 for m in SHOWN}
    return from_frame(f"Compare A={a} vs B={b}", cmp[cols], labels, digits=digits,
                      note="B/A > 1: B has more throughput, or more latency. Unmatched points have no ratio.")


def run_compare(collected: "Collected", a: str, b: str, out: Path) -> list[Path]:
    """Print the comparison and write compare.csv and compare.md into out."""
    cmp = compare_points(side_points(collected, a), side_points(collected, b))
    table = compare_table(cmp, a, b)
    print(to_text(table))
    cmp.to_csv(out / "compare.csv", index=False)
    (out / "compare.md").write_text(table_md(table))
    return [out / "compare.csv", out / "compare.md"]
