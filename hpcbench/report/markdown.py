"""Render report tables as GitHub-flavoured Markdown."""

from __future__ import annotations

from pathlib import Path

from hpcbench.report.cells import Table


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_md(table: Table) -> str:
    lines = [f"## {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    if not table.rows:
        return "\n".join(lines + ["(none)", ""])
    lines.append("| " + " | ".join(_esc(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(_esc(v) for v in r) + " |" for r in table.rows]
    return "\n".join(lines + [""])


def render_markdown(title: str, summary: list[str], tables: list[Table], images: list[tuple[str, Path]],
                    base: Path) -> str:
    """The whole report; images are linked relative to base (the folder report.md is written to)."""
    parts = [f"# {title}", "", *[f"- {s}" for s in summary], ""]
    parts += [table_md(t) for t in tables]
    if images:
        parts += ["## Plots", ""]
        for caption, path in images:
            parts += [f"### {caption}", "", f"![{caption}]({path.relative_to(base).as_posix()})", ""]
    return "\n".join(parts)
