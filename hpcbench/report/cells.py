"""Tables as rows of display strings, shared by the Markdown, HTML and terminal renderings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    # cells to emphasise in HTML (row, column): e.g. an incomplete FOM
    flagged: set[tuple[int, int]] = field(default_factory=set)


def fmt(value: Any, digits: int = 1, fixed: bool = False) -> str:
    """Numbers with thousands separators; integers without decimals unless fixed; missing values empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f):
        return ""
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f.is_integer() and abs(f) < 1e15 and not fixed:
        return f"{int(f):,}"
    return f"{f:,.{digits}f}"


def from_frame(title: str, df: "pd.DataFrame", labels: dict[str, str] | None = None, note: str = "",
               digits: dict[str, int] | None = None) -> Table:
    """A Table of df's columns, renamed by labels; `digits`: fixed decimals per column (else 1, ints bare)."""
    labels = labels or {}
    digits = digits or {}
    cols = list(df.columns)
    rows = [[_cell(v, digits[c], True) if c in digits else _cell(v, 1, False) for c, v in zip(cols, rec)]
            for rec in df.itertuples(index=False)]
    return Table(title, [labels.get(c, c) for c in cols], rows, note)


def _cell(v: Any, digits: int, fixed: bool) -> str:
    try:
        import pandas as pd

        if v is pd.NA:
            return ""
    except ImportError:
        pass
    return fmt(v, digits, fixed)


def to_text(table: Table) -> str:
    """A plain aligned table for the terminal."""
    widths = [max(len(c), *(len(r[i]) for r in table.rows)) if table.rows else len(c)
              for i, c in enumerate(table.columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(table.columns, widths))
    out = [table.title, line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in table.rows]
    if table.note:
        out.append(table.note)
    return "\n".join(out)
