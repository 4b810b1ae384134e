"""`hpcbench collect`: merge every experiment's points.csv into one table, then write the report.

Re-runs (resume) append rows with point ids already present; only the last whole row of each
(experiment, point_id) counts, so a point is never counted twice.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcbench.config.errors import UserError
from hpcbench.experiment import default_root
from hpcbench.report.discover import find_experiment_dirs
from hpcbench.report.read import read_points

if TYPE_CHECKING:
    import pandas as pd

FORMATS: frozenset[str] = frozenset({"csv", "parquet", "md", "html"})


@dataclass
class Collected:
    points: "pd.DataFrame"
    experiments: list[Path]
    warnings: list[str] = field(default_factory=list)
    duplicates_dropped: int = 0


def collect_points(roots: list[Path], sites: list[str] | None = None, models: list[str] | None = None,
                   use_pyarrow: bool | None = None) -> Collected:
    """One row per (experiment, sweep point) under roots, filtered by site/model. UserError when empty."""
    warnings: list[str] = []
    dirs = find_experiment_dirs(roots, warnings)
    searched = ", ".join(str(r) for r in roots)
    if not dirs:
        raise UserError(f"no experiment directories (holding config.yaml) under: {searched}")
    df = read_points(dirs, warnings, use_pyarrow=use_pyarrow)
    before = len(df)
    df = dedupe(df)
    dropped = before - len(df)
    df = filter_points(df, sites, models)
    if df.empty:
        what = _filter_text(sites, models)
        raise UserError(f"no result rows{what} in {len(dirs)} experiment directories under: {searched}")
    return Collected(df.reset_index(drop=True), dirs, warnings, dropped)


def dedupe(df: "pd.DataFrame") -> "pd.DataFrame":
    """Keep the last row per (experiment, point_id); rows without a point_id cannot be matched and stay."""
    keyed = df["point_id"].notna()
    dup = df.duplicated(subset=["experiment", "point_id"], keep="last") & keyed
    return df[~dup]


def filter_points(df: "pd.DataFrame", sites: list[str] | None, models: list[str] | None) -> "pd.DataFrame":
    if sites:
        df = df[df["site"].isin(sites)]
    if models:
        df = df[df["model"].isin(models)]
    return df


def _filter_text(sites: list[str] | None, models: list[str] | None) -> str:
    parts = []
    if sites:
        parts.append("site " + "/".join(sites))
    if models:
        parts.append("model " + "/".join(models))
    return f" for {' and '.join(parts)}" if parts else ""


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format: unknown {', '.join(bad) or '(empty)'}; expected a comma list of "
                        f"{', '.join(sorted(FORMATS))}")
    if "parquet" in formats:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--format parquet needs pyarrow (pip install pyarrow)") from None
    return formats


def write_table(df: "pd.DataFrame", out: Path, formats: list[str]) -> list[Path]:
    """The merged table as points.csv and/or points.parquet in out."""
    written = []
    if "csv" in formats:
        _write_csv(df, out / "points.csv")
        written.append(out / "points.csv")
    if "parquet" in formats:
        table = df.copy()
        for c in table.columns:  # mixed object columns (old files) must be one type for Parquet
            if table[c].dtype == object:
                table[c] = table[c].astype("string")
        table.to_parquet(out / "points.parquet", index=False)
        written.append(out / "points.parquet")
    return written


def _write_csv(df: "pd.DataFrame", path: Path) -> None:
    """pyarrow's CSV writer is several times faster than DataFrame.to_csv on wide tables."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        df.to_csv(path, index=False)
        return
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
        table = table.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f
                                      for f in table.schema]))
        pacsv.write_csv(table, path)
    except (pa.ArrowException, TypeError, ValueError):
        df.to_csv(path, index=False)  # a column mixing types (old and new files): pandas copes


def _import_libraries(formats: list[str], plots: bool) -> None:
    """Import the `report` extra's libraries this run needs before anything is written, so a missing one
    (ModuleNotFoundError, which the command line names with the extra) leaves no half-written folder."""
    import pandas  # noqa: F401

    if plots and {"md", "html"} & set(formats):
        import matplotlib  # noqa: F401


def collect_command(args: Any) -> int:
    """The CLI entry: collect, write table and report (and comparison), print where everything went.
    Every refusal (no results, unknown --compare side, bad --format) comes before anything is written."""
    formats = parse_formats(getattr(args, "format", "csv,md,html") or "csv,md,html")
    plots = not args.no_plots
    _import_libraries(formats, plots)
    compare = getattr(args, "compare", None)
    roots = [Path(r) for r in (args.roots or [])]
    if not roots:
        roots = _compare_dirs(compare) or [default_root()]
    collected = collect_points(roots, args.site, args.model)
    if compare:
        from hpcbench.report.compare import side_points

        for side in compare:
            side_points(collected, side)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {out}: {exc.strerror or exc}; choose another -o") from None
    for w in collected.warnings:
        print(f"hpcbench: warning: {w}", file=sys.stderr)
    written = write_table(collected.points, out, formats)
    if {"md", "html"} & set(formats):
        from hpcbench.report.build import write_report

        written += write_report(collected, out, formats, plots=plots)
    if compare:
        from hpcbench.report.compare import run_compare

        written += run_compare(collected, compare[0], compare[1], out)
    n_exp = collected.points["experiment_path"].nunique()
    print(f"collected {len(collected.points)} points from {n_exp} experiments"
          + (f" ({collected.duplicates_dropped} re-run duplicates dropped)" if collected.duplicates_dropped else "")
          + (f", {len(collected.warnings)} warning(s)" if collected.warnings else ""))
    for path in written:
        print(f"wrote {path}")
    return 0


def _compare_dirs(compare: list[str] | None) -> list[Path]:
    """With no roots given, two existing directories to compare are the roots."""
    if compare and all(Path(c).is_dir() for c in compare):
        return [Path(c) for c in compare]
    return []
