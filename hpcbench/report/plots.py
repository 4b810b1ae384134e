"""PNG plots with matplotlib's Agg backend (no display on login or compute nodes)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from hpcbench.report.groups import DEPLOYMENT, with_deployment
from hpcbench.report.tables import with_per_gpu

if TYPE_CHECKING:
    import pandas as pd

MAX_SERIES = 10  # more lines than this make a legend nobody can read; the best ones are kept


def make_plots(df: "pd.DataFrame", out: Path) -> list[tuple[str, Path]]:
    """(caption, path) of every plot written into out (created if needed)."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        ("Total throughput vs concurrency, per scenario", _throughput_vs_concurrency(df, out / "throughput_vs_concurrency.png")),
        ("Latency vs throughput (median TTFT and TPOT), per scenario", _latency_vs_throughput(df, out / "latency_vs_throughput.png")),
        ("Best per-GPU output throughput across sites", _per_gpu_across_sites(df, out / "per_gpu_by_site.png")),
    ]
    return [(caption, path) for caption, path in plots if path is not None]


def _series(df: "pd.DataFrame") -> list[tuple[str, "pd.DataFrame"]]:
    """(label, rows) per deployment (hpcbench.report.groups), best-first, at most MAX_SERIES."""
    groups = []
    for _, g in with_deployment(df).groupby(DEPLOYMENT, dropna=False, sort=True):
        first = g.iloc[0]
        nodes = first["nodes"]
        n = "" if isinstance(nodes, float) and math.isnan(nodes) else f" {int(nodes)}n"
        groups.append((f"{first['site']} / {first['model']}{n}, {first['deployment']}", g))
    groups.sort(key=lambda x: -float(x[1]["total_throughput"].max()))
    return groups[:MAX_SERIES]


def _workloads(pts: "pd.DataFrame") -> list[tuple[str, "pd.DataFrame"]]:
    """(title, rows) per sweep x scenario: a scenario name means one workload only within its sweep."""
    return [(f"{sweep} / {scen}", g) for (sweep, scen), g in
            pts[pts["scenario"].notna()].groupby(["sweep", "scenario"], dropna=False, sort=True)]


def _grid(n: int, ncols: int, size: tuple[float, float]):  # -> (figure, list of axes)
    import matplotlib.pyplot as plt

    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _throughput_vs_concurrency(df: "pd.DataFrame", path: Path) -> Path | None:
    pts = df[df["concurrency"].notna() & df["total_throughput"].notna()]
    workloads = _workloads(pts)
    if not workloads:
        return None
    fig, axes = _grid(len(workloads), min(2, len(workloads)), (6.0, 4.0))
    for ax, (title, sub) in zip(axes, workloads):
        for label, g in _series(sub):
            # several experiments may repeat a concurrency: plot the best of them
            line = g.groupby("concurrency")["total_throughput"].max().sort_index()
            ax.plot(line.index, line.to_numpy(), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set(title=title, xlabel="concurrency (requests in flight)", ylabel="total tokens/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _latency_vs_throughput(df: "pd.DataFrame", path: Path) -> Path | None:
    pts = df[df["total_throughput"].notna()]
    workloads = _workloads(pts)
    if not workloads:
        return None
    fig, axes = _grid(2 * len(workloads), 2, (6.0, 3.6))
    for i, (title, sub) in enumerate(workloads):
        for ax, metric, name in ((axes[2 * i], "ttft_ms_median", "TTFT p50 (ms)"),
                                 (axes[2 * i + 1], "tpot_ms_median", "TPOT p50 (ms)")):
            for label, g in _series(sub):
                g = g[g[metric].notna()].sort_values("total_throughput")
                ax.plot(g["total_throughput"], g[metric], marker="o", label=label)
            ax.set(title=f"{title}: {name}", xlabel="total tokens/s", ylabel=name)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, path)


def _per_gpu_across_sites(df: "pd.DataFrame", path: Path) -> Path | None:
    pts = with_per_gpu(df[df["output_throughput"].notna()])
    pts = pts[pts["per_gpu_output"].notna()]
    if pts.empty:
        return None
    # with several models a bar is a site / model pair, else just the site
    label = pts["site"].astype(str)
    if pts["model"].nunique() > 1:
        label = label + " / " + pts["model"].astype(str)
    workload = pts["sweep"].astype(str) + " / " + pts["scenario"].astype(str)
    best = pts.assign(_label=label, _workload=workload).groupby(["_workload", "_label"], dropna=False)[
        "per_gpu_output"].max()
    best = best.unstack("_label")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(best.index) * max(1, len(best.columns)) / 2), 4.2))
    width = 0.8 / max(1, len(best.columns))
    for j, site in enumerate(best.columns):
        xs = [i + j * width for i in range(len(best.index))]
        ax.bar(xs, best[site].fillna(0).to_numpy(), width=width, label=str(site))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(best.index))], [str(s) for s in best.index])
    ax.set(title="Best output tokens/s per GPU (GPUs held by the job)", ylabel="output tokens/s per GPU")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
