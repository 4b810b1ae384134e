"""Read many results/points.csv files into one DataFrame, fast and forgiving.

Parsing each small file separately costs milliseconds of per-call overhead (1,000 files: seconds), so
files sharing a header are concatenated and parsed in one call. Each file is checked first as bytes: a
last line without its newline is a row cut off by a killed job and is dropped. If the bulk parse finds a
malformed row, that group is parsed again file by file so the warning can name the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpcbench.experiment import POINTS_CSV
from hpcbench.results import POINT_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

# Columns holding text; every other contract column is a number (empty -> NaN).
TEXT_COLUMNS: frozenset[str] = frozenset({
    "experiment", "job_id", "site", "model", "hf_id", "mode", "accelerator", "engine", "engine_version",
    "dtype", "sweep", "point_id", "scenario", "fom", "api", "stream", "started_at", "finished_at", "slo",
})
SOURCE_COLUMN = "experiment_path"  # added by collect: the directory a row came from


@dataclass
class _File:
    index: int
    path: Path
    body: bytes  # data lines only, each ending in a newline
    lines: int
    problems: list[str] = field(default_factory=list)


def read_points(exp_dirs: list[Path], warnings: list[str], use_pyarrow: bool | None = None) -> "pd.DataFrame":
    """All rows of the experiments' points.csv files, in experiment then file order, plus SOURCE_COLUMN.

    Contract columns missing from a file are empty; columns unknown to the contract are kept at the end.
    Every file with a problem adds exactly one line to warnings.
    """
    import numpy as np
    import pandas as pd

    if use_pyarrow is None:
        use_pyarrow = _have_pyarrow()
    groups: dict[bytes, list[_File]] = {}
    files: list[_File] = []
    for i, exp in enumerate(exp_dirs):
        f = _load(i, exp / POINTS_CSV, groups)
        if f is not None:
            files.append(f)
        else:
            warnings.append(_missing_reason(exp / POINTS_CSV))
    frames = []
    for header, members in groups.items():
        columns = _header_columns(header)
        if columns is None:
            for f in members:
                f.problems.append("unreadable header line; file skipped")
            continue
        old = [c for c in POINT_COLUMNS if c not in columns]
        for f in members:
            if old:
                f.problems.append(f"older column set: {len(old)} column(s) missing ({_names(old)}), left empty")
        frames.extend(_parse_group(header, columns, members, use_pyarrow))
    for f in files:
        if f.problems:
            warnings.append(f"{f.path}: " + "; ".join(f.problems))
    if not frames:
        return _empty_frame()
    df = pd.concat(frames, ignore_index=True, sort=False)
    df = df.sort_values("_src", kind="stable")
    paths = [str(p) for p in exp_dirs]
    df[SOURCE_COLUMN] = pd.Categorical.from_codes(df["_src"].to_numpy(), categories=paths)
    extra = [c for c in df.columns if c not in POINT_COLUMNS and c not in ("_src", SOURCE_COLUMN)]
    src = df["_src"].to_numpy()
    df = df.reindex(columns=list(POINT_COLUMNS) + extra + [SOURCE_COLUMN])
    # rows from files that predate the experiment column still belong to their directory
    names = pd.Series(np.array([p.name for p in exp_dirs], dtype=object)[src], index=df.index)
    df["experiment"] = df["experiment"].astype(object).where(df["experiment"].notna(), names).astype("string")
    return df.reset_index(drop=True)


def _have_pyarrow() -> bool:
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def _missing_reason(path: Path) -> str:
    if not path.exists():
        return f"{path}: missing (no sweep point finished)"
    return f"{path}: cannot be read"


def _load(index: int, path: Path, groups: dict[bytes, list[_File]]) -> _File | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    nl = data.find(b"\n")
    if nl < 0:
        f = _File(index, path, b"", 0, ["no complete header line; file skipped"] if data else ["empty file"])
        return f
    header, body = data[:nl].rstrip(b"\r"), data[nl + 1:]
    f = _File(index, path, body, 0)
    if body and not body.endswith(b"\n"):
        f.body = body[: body.rfind(b"\n") + 1]
        f.problems.append("truncated last line dropped (job killed mid-write?)")
    f.lines = f.body.count(b"\n")
    groups.setdefault(header, []).append(f)
    return f


def _header_columns(header: bytes) -> list[str] | None:
    import csv

    try:
        cols = next(csv.reader([header.decode("utf-8")]))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        return None
    return cols if cols and len(set(cols)) == len(cols) else None


def _names(cols: list[str], limit: int = 4) -> str:
    return ", ".join(cols[:limit]) + (", ..." if len(cols) > limit else "")


def _parse_group(header: bytes, columns: list[str], members: list[_File], use_pyarrow: bool) -> list["pd.DataFrame"]:
    """One bulk parse; on a row-count mismatch (malformed rows), parse each file alone to name it."""
    import numpy as np

    members = [f for f in members if f.lines]
    if not members:
        return []
    df = _parse(header + b"\n" + b"".join(f.body for f in members), columns, use_pyarrow)
    counts = [f.lines for f in members]
    if len(df) == sum(counts):
        df["_src"] = np.repeat(np.array([f.index for f in members], dtype=np.int64), counts)
        return [df]
    frames = []
    for f in members:
        one = _parse(header + b"\n" + f.body, columns, use_pyarrow)
        if len(one) != f.lines:
            f.problems.append(f"{f.lines - len(one)} malformed row(s) skipped")
        one["_src"] = f.index
        frames.append(one)
    return frames


def _parse(data: bytes, columns: list[str], use_pyarrow: bool) -> "pd.DataFrame":
    if use_pyarrow:
        return _parse_pyarrow(data, columns)
    return _parse_pandas(data, columns)


def _parse_pyarrow(data: bytes, columns: list[str]) -> "pd.DataFrame":
    import pyarrow as pa
    import pyarrow.csv as pacsv

    numeric = [c for c in columns if c not in TEXT_COLUMNS and c in POINT_COLUMNS]
    types = {c: (pa.string() if c not in numeric else pa.float64()) for c in columns}
    parse = pacsv.ParseOptions(invalid_row_handler=lambda row: "skip")
    try:
        table = pacsv.read_csv(io.BytesIO(data), parse_options=parse,
                               convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
    except pa.ArrowInvalid:
        # a value that is not a number: read all as text, then coerce (non-numbers become empty)
        import pandas as pd

        text = {c: pa.string() for c in columns}
        df = pacsv.read_csv(io.BytesIO(data), parse_options=parse,
                            convert_options=pacsv.ConvertOptions(column_types=text, strings_can_be_null=True)).to_pandas()
        for c in numeric:
            df[c] = pd.to_numeric(df[c], errors="coerce")
        return df
    return table.to_pandas()


def _parse_pandas(data: bytes, columns: list[str]) -> "pd.DataFrame":
    import pandas as pd

    dtypes = {c: "string" if c in TEXT_COLUMNS or c not in POINT_COLUMNS else "float64" for c in columns}
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=dtypes, on_bad_lines="skip", keep_default_na=False,
                         na_values=[""])
    except ValueError:
        # a value that does not parse as a number: read as text, then coerce column by column
        df = pd.read_csv(io.BytesIO(data), dtype=str, on_bad_lines="skip", keep_default_na=False, na_values=[""])
        for c, t in dtypes.items():
            df[c] = pd.to_numeric(df[c], errors="coerce") if t == "float64" else df[c]
    return df


def _empty_frame() -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype="object" if c in TEXT_COLUMNS else "float64")
                         for c in (*POINT_COLUMNS, SOURCE_COLUMN)})
