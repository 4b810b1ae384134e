"""Whole jobs on the local site through `hpcbench submit --wait`: the offline mode (the ALCF offline
FOM: vllm.LLM in-process, no server)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.ray]
TESTS = Path(__file__).resolve().parent


def test_offline_mode_job_runs_the_grid(tiny_model, tmp_path):
    out = subprocess.run([sys.executable, "-m", "hpcbench", "submit", "--site", "local", "--model", "tiny",
                          "--model-path", str(tiny_model), "--sweep", str(TESTS / "sweeps" / "offline.yaml"),
                          "--root", str(tmp_path), "--wait"], capture_output=True, text=True, timeout=900,
                         env={**os.environ}, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    (points,) = tmp_path.glob("local/tiny/*/results/points.csv")
    rows = list(csv.DictReader(points.open()))
    assert sorted((r["output_len"], r["concurrency"]) for r in rows) == [("16", "1"), ("16", "8"), ("32", "1"),
                                                                        ("32", "8")]
    for r in rows:
        assert r["api"] == "offline" and r["mode"] == "offline" and r["failed"] == "0"
        batch, length = int(r["concurrency"]), int(r["input_len"]) + int(r["output_len"])
        assert int(r["total_input_tokens"]) + int(r["total_output_tokens"]) == batch * length
        assert float(r["total_throughput"]) > 0
