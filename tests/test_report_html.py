"""The HTML report: self-contained (tables, PNG data URIs) and rendered for real by headless Chromium."""

from __future__ import annotations

import argparse
import base64
import io
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hpcbench.report.collect import collect_command
from hpcbench.report.synthetic import point_row, sweep_rows, write_experiment

MODEL = "llama-8b"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Tables (as lists of rows of cell text) and <img> sources of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC, "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for i, (site, gpus) in enumerate((("aurora", 12), ("polaris", 4), ("h100", 8))):
        name = f"2025010{i + 1}T000000Z-abcde{i}"
        rows = sweep_rows(name, site, MODEL, 20, gpus=gpus, scale=1.0 + i)
        if site == "polaris":  # an incomplete FOM, and failures to surface
            rows = [r for r in rows if r["fom"] != "FOM2"]
            rows.append(point_row(name, site, MODEL, "chat", "", 64, 5.0, gpus=gpus, failed=7,
                                  prompt_len_mismatches=3))
        write_experiment(root, site, MODEL, name, rows)
    out = tmp_path_factory.mktemp("report")
    ns = argparse.Namespace(roots=[root], out=out, format="csv,md,html", site=None, model=None, compare=None,
                            no_plots=False)
    assert collect_command(ns) == 0
    return out / "report.html"


def test_html_has_the_tables_and_embedded_png_plots(report: Path) -> None:
    page = Page()
    page.feed(report.read_text())
    assert len(page.tables) >= 5
    fom = page.tables[0]
    header = fom[0]
    by_site = {row[0]: dict(zip(header, row)) for row in fom[1:]}
    assert set(by_site) == {"aurora", "polaris", "h100"}
    assert by_site["polaris"]["FOM"] == "incomplete"
    assert by_site["aurora"]["status"] == "complete" and by_site["aurora"]["FOM"].replace(",", "")
    problems = next(t for t in page.tables if "failed" in t[0] and "points with failures" in t[0])
    assert any(row[2].startswith("20250102") and "7" in row for row in problems[1:])
    assert len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        w, h = png_size(base64.b64decode(src.split(",", 1)[1]))
        assert w > 300 and h > 200
    assert "src=\"http" not in report.read_text() and "<link" not in report.read_text()


@pytest.mark.chromium
def test_headless_chromium_renders_the_page(report: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium not found: run scripts/install-deps.sh (installs Debian's chromium)")
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000",
             report.resolve().as_uri()],
            capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    data = shot.read_bytes()
    assert png_size(data) == (1280, 2000)
    assert len(data) > 50_000
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    colours = img.resize((320, 500)).getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "screenshot is (nearly) blank"
    # the table header colour of the stylesheet is on screen: the page was laid out, not just painted white
    assert any(rgb == (0x1F, 0x3B, 0x73) for _, rgb in img.getcolors(maxcolors=1 << 22) or [])
