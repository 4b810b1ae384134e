"""Render the report as one self-contained HTML page: styles inline, plots as base64 data URIs, so the
file can be mailed or copied off a cluster and opened anywhere."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from hpcbench.report.cells import Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { color: #1f3b73; } h2 { color: #1f3b73; border-bottom: 2px solid #c9d6ef; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 13px; }
th { background: #1f3b73; color: #fff; padding: 4px 8px; text-align: left; }
td { border: 1px solid #c9d6ef; padding: 3px 8px; text-align: right; }
tr:nth-child(even) td { background: #eef3fb; }
td.flag { background: #fbe3c8 !important; color: #8a4200; font-weight: 600; }
p.note { color: #555; font-size: 13px; max-width: 60em; }
img { max-width: 100%; border: 1px solid #ddd; margin-bottom: 1.5em; }
"""


def table_html(table: Table) -> str:
    out = [f"<h2>{escape(table.title)}</h2>"]
    if table.note:
        out.append(f'<p class="note">{escape(table.note)}</p>')
    if not table.rows:
        return "\n".join(out + ["<p>(none)</p>"])
    out.append("<table>")
    out.append("<tr>" + "".join(f"<th>{escape(c)}</th>" for c in table.columns) + "</tr>")
    for i, row in enumerate(table.rows):
        cells = "".join(
            f'<td class="flag">{escape(v)}</td>' if (i, j) in table.flagged else f"<td>{escape(v)}</td>"
            for j, v in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def render_html(title: str, summary: list[str], tables: list[Table], images: list[tuple[str, Path]]) -> str:
    body = [f"<h1>{escape(title)}</h1>", "<ul>" + "".join(f"<li>{escape(s)}</li>" for s in summary) + "</ul>"]
    body += [table_html(t) for t in tables]
    if images:
        body.append("<h2>Plots</h2>")
        for caption, path in images:
            body.append(f"<h3>{escape(caption)}</h3>")
            body.append(f'<img alt="{escape(caption)}" src="{data_uri(path)}">')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
