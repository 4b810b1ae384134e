"""Report tables computed from the merged points (DataFrames; formatting lives in hpcbench.report.cells)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpcbench.report.groups import SHOWN, WORKLOAD, with_deployment

if TYPE_CHECKING:
    import pandas as pd

LATENCY_COLUMNS: list[str] = ["ttft_ms_median", "ttft_ms_p90", "ttft_ms_p99",
                              "tpot_ms_median", "tpot_ms_p90", "tpot_ms_p99"]


def with_per_gpu(df: "pd.DataFrame") -> "pd.DataFrame":
    """Add per_gpu_output: output_throughput / gpus the job holds (not the client's GPUs); NaN if unknown."""
    out = df.copy()
    gpus = out["gpus"].where(out["gpus"] > 0)
    out["per_gpu_output"] = out["output_throughput"] / gpus
    return out


def best_per_scenario(df: "pd.DataFrame") -> "pd.DataFrame":
    """The highest total_throughput point per deployment x scenario (hpcbench.report.groups), with its latencies."""
    pts = with_deployment(with_per_gpu(df[df["total_throughput"].notna()]))
    if pts.empty:
        return pts
    idx = pts.groupby(WORKLOAD, dropna=False, sort=True)["total_throughput"].idxmax()
    best = pts.loc[idx.to_numpy()]
    cols = SHOWN + ["deployment", "scenario", "input_len", "output_len", "concurrency", "request_rate",
                             "total_throughput", "output_throughput", "per_gpu_output", *LATENCY_COLUMNS,
                             "failed", "merged_stream_requests", "experiment", "point_id"]
    return best[cols].reset_index(drop=True)


def per_gpu_by_site(df: "pd.DataFrame") -> "pd.DataFrame":
    """Best per-GPU output throughput per model x sweep x scenario x site (any deployment): rows model x
    sweep x scenario, a column per site."""
    pts = with_per_gpu(df[df["output_throughput"].notna()])
    if pts.empty:
        return pts
    best = pts.groupby(["model", "sweep", "scenario", "site"], dropna=False)["per_gpu_output"].max()
    return best.unstack("site").reset_index()


def problems(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per experiment: failed requests, points with failures, prompt/output length mismatches.

    Only experiments with something to report; totals are in the caption built from the same frame.
    """
    import pandas as pd

    if df.empty:
        return pd.DataFrame()
    g = df.assign(_failed_point=df["failed"] > 0).groupby(["site", "model", "experiment"], dropna=False, sort=True)
    out = pd.DataFrame({
        "points": g.size(),
        "completed": g["completed"].sum(min_count=1),
        "failed": g["failed"].sum(min_count=1),
        "points_with_failures": g["_failed_point"].sum(),
        "prompt_len_mismatches": g["prompt_len_mismatches"].sum(min_count=1),
        "output_len_mismatches": g["output_len_mismatches"].sum(min_count=1),
    }).reset_index()
    bad = (out[["failed", "prompt_len_mismatches", "output_len_mismatches"]].fillna(0) > 0).any(axis=1)
    return out[bad].reset_index(drop=True)


def totals(df: "pd.DataFrame") -> dict[str, float]:
    """Whole-collection counts for the report's summary line."""
    return {
        "experiments": float(df["experiment_path"].nunique()) if "experiment_path" in df else float("nan"),
        "points": float(len(df)),
        "completed": float(df["completed"].sum()),
        "failed": float(df["failed"].sum()),
        "prompt_len_mismatches": float(df["prompt_len_mismatches"].sum()),
        "output_len_mismatches": float(df["output_len_mismatches"].sum()),
    }
