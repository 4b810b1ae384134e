"""Assemble the report (tables, plots) and write report.md / report.html / fom.csv into the output folder."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from hpcbench.report.cells import Table, fmt, from_frame
from hpcbench.report.fom import fom_table
from hpcbench.report.groups import LAYOUT, SHOWN
from hpcbench.report.tables import LATENCY_COLUMNS, best_per_scenario, per_gpu_by_site, problems, totals

if TYPE_CHECKING:
    import pandas as pd

    from hpcbench.report.collect import Collected

TITLE = "hpcbench report"
LABELS = {
    "nodes": "nodes", "gpus": "GPUs", "input_len": "ISL", "output_len": "OSL",
    "total_throughput": "total tok/s", "output_throughput": "output tok/s", "per_gpu_output": "output tok/s/GPU",
    "ttft_ms_median": "TTFT p50 ms", "ttft_ms_p90": "TTFT p90 ms", "ttft_ms_p99": "TTFT p99 ms",
    "tpot_ms_median": "TPOT p50 ms", "tpot_ms_p90": "TPOT p90 ms", "tpot_ms_p99": "TPOT p99 ms",
    "prompt_len_mismatches": "prompt len mismatches", "output_len_mismatches": "output len mismatches",
    "points_with_failures": "points with failures", "request_rate": "req/s",
    "merged_stream_requests": "merged streams",
}


def fom_section(df: "pd.DataFrame") -> tuple[Table, "pd.DataFrame"]:
    """The FOM table; an incomplete group shows 'incomplete' where the sum would be, flagged."""
    ft = fom_table(df)
    shown = ft.drop(columns=["best_points"]).astype(object)
    incomplete = ft["status"] != "complete"
    shown.loc[incomplete, "FOM"] = "incomplete"
    shown = shown.drop(columns=LAYOUT)  # folded into the deployment label
    table = from_frame("Figure of merit (Aurora FOM = FOM1 + FOM2 + FOM3)", shown, LABELS, note=(
        "FOMk = best total throughput (input + output tokens/s) among the points tagged FOMk of one "
        "deployment: the same site, model, sweep, nodes, GPUs and deployment (mode, engine and version, "
        "TP, PP, replicas, dtype, context length). The sum is shown only when all three parts were "
        "measured. Failed requests and length mismatches are those of the best points."))
    cols = list(shown.columns)
    table.flagged = {(i, cols.index("FOM")) for i, bad in enumerate(incomplete.tolist()) if bad}
    # honest numbers: a FOM built on failed requests or wrong lengths is highlighted, not hidden
    for name in ("failed", "prompt_len_mismatches", "output_len_mismatches"):
        nonzero = ft[name].fillna(0).to_numpy() > 0
        table.flagged |= {(i, cols.index(name)) for i, bad in enumerate(nonzero) if bad}
    return table, ft


def build_tables(df: "pd.DataFrame") -> tuple[list[Table], "pd.DataFrame"]:
    fom_tbl, ft = fom_section(df)
    best = best_per_scenario(df)
    tables = [fom_tbl]
    if not best.empty:
        tput_cols = [*SHOWN, "deployment", "scenario", "input_len", "output_len", "concurrency",
                     "request_rate", "total_throughput", "output_throughput", "per_gpu_output", "failed"]
        tables.append(from_frame("Best throughput per scenario", best[tput_cols], LABELS, note=(
            "The highest total-throughput point of each scenario (of its sweep) and deployment. Output "
            "tok/s/GPU divides by the GPUs the job holds.")))
        lat_cols = ["site", "model", "sweep", "nodes", "scenario", "concurrency", "request_rate", *LATENCY_COLUMNS,
                    "merged_stream_requests"]
        lat = from_frame("Latency at the best-throughput point", best[lat_cols], LABELS, note=(
            "Time to first token and time per output token percentiles, in ms. Merged streams: requests "
            "whose stream had fewer token events than tokens (the server sent several tokens at once); "
            "where there are any, TPOT is flagged as unreliable, and a request whose whole output came "
            "at once has no TPOT at all (empty, never 0)."))
        merged = best["merged_stream_requests"].fillna(0).to_numpy() > 0
        lat.flagged = {(i, lat_cols.index(c)) for i, bad in enumerate(merged) if bad
                       for c in ("tpot_ms_median", "tpot_ms_p90", "tpot_ms_p99", "merged_stream_requests")}
        tables.append(lat)
        tables.append(from_frame("Best output tokens/s per GPU, by site", per_gpu_by_site(df), LABELS))
    prob = problems(df)
    t = totals(df)
    tables.append(from_frame("Failed requests and length mismatches", prob, LABELS, note=(
        f"All experiments: {fmt(t['failed'])} failed of {fmt(t['completed'] + t['failed'])} requests, "
        f"{fmt(t['prompt_len_mismatches'])} prompt-length and {fmt(t['output_len_mismatches'])} "
        "output-length mismatches. Failed requests are not in any throughput; a length mismatch means "
        "the server saw or produced a different token count than the scenario asked for.")))
    return tables, ft


def write_report(collected: "Collected", out: Path, formats: list[str], plots: bool = True) -> list[Path]:
    """report.md / report.html (and fom.csv with csv) in out; plots under out/plots unless plots=False."""
    df = collected.points
    tables, ft = build_tables(df)
    images = []
    if plots:
        from hpcbench.report.plots import make_plots

        images = make_plots(df, out / "plots")
    t = totals(df)
    summary = [
        f"{fmt(t['experiments'])} experiments, {fmt(t['points'])} sweep points "
        f"({collected.duplicates_dropped} re-run duplicates dropped)",
        f"sites: {', '.join(sorted(df['site'].dropna().astype(str).unique()))}; "
        f"models: {', '.join(sorted(df['model'].dropna().astype(str).unique()))}",
        f"{len(collected.warnings)} warning(s) while collecting" + (": " + " | ".join(collected.warnings[:5])
                                                                   if collected.warnings else ""),
        "generated " + datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    ]
    written = []
    if "csv" in formats:
        ft.to_csv(out / "fom.csv", index=False)
        written.append(out / "fom.csv")
    if "md" in formats:
        from hpcbench.report.markdown import render_markdown

        (out / "report.md").write_text(render_markdown(TITLE, summary, tables, images, out))
        written.append(out / "report.md")
    if "html" in formats:
        from hpcbench.report.html import render_html

        (out / "report.html").write_text(render_html(TITLE, summary, tables, images))
        written.append(out / "report.html")
    return written + [p for _, p in images]

