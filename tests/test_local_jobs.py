"""Whole jobs on the local site through `hpcbench submit`: the offline mode (the ALCF offline FOM:
vllm.LLM in-process, no server), a server killed mid-sweep and a walltime that ends during the sweep,
each followed by `submit --resume`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.vllm import wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.ray]
TESTS = Path(__file__).resolve().parent


def hpcbench(*args: object, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcbench", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ}, stdin=subprocess.DEVNULL)


def submit(tiny_model: Path, root: Path, sweep: Path, *extra: object) -> tuple[Path, subprocess.CompletedProcess]:
    out = hpcbench("submit", "--site", "local", "--model", "tiny", "--model-path", tiny_model, "--sweep", sweep,
                   "--root", root, *extra)
    (exp,) = root.glob("local/tiny/*/config.yaml")
    return exp.parent, out


def job_running(exp: Path) -> bool:
    """Whether the local job's process (its id is "<pid>.<start ticks>") is still there."""
    pid = json.loads((exp / "submit.json").read_text())["job_id"].split(".")[0]
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def rows(exp: Path) -> list[dict[str, str]]:
    path = exp / "results" / "points.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def requests_per_point(exp: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (exp / "results" / "requests.jsonl").read_text().splitlines():
        point = json.loads(line)["point_id"]
        counts[point] = counts.get(point, 0) + 1
    return counts


def status(root: Path) -> dict:
    out = hpcbench("status", "--json", "--root", root, timeout=60)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    return row


def sweep_points(sweep: Path) -> dict[str, int]:
    """point_id -> num_requests of a sweep file."""
    from hpcbench.config.sweep import load_sweep

    return {p.point_id: p.num_requests for p in load_sweep(str(sweep)).points()}


def assert_whole_and_good(got: list[dict[str, str]], points: dict[str, int]) -> None:
    for r in got:
        assert r["failed"] == "0" and int(r["completed"]) == points[r["point_id"]], r


def assert_resumed_to_the_end(exp: Path, points: dict[str, int], first: list[dict[str, str]]) -> None:
    """`submit --resume --wait` completes; every point is there exactly once, whole and good, and the
    rows of the first run are untouched (not run again)."""
    out = hpcbench("submit", "--resume", exp, "--wait")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    final = rows(exp)
    assert sorted(r["point_id"] for r in final) == sorted(points)
    assert_whole_and_good(final, points)
    started = {r["point_id"]: r["started_at"] for r in final}
    assert all(started[r["point_id"]] == r["started_at"] for r in first)
    assert requests_per_point(exp) == points


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


# Two quick points, then three of several seconds each: the kill lands while the sweep runs.
KILL_SWEEP = """\
name: kill-resume
scenarios:
  - name: quick
    input_len: 16
    output_len: 8
    concurrency: [1, 2]
    num_requests: 4
    warmup: 0
  - name: long
    input_len: 16
    output_len: 128
    concurrency: [1, 2, 4]
    num_requests: 24
    warmup: 0
"""


def test_killed_server_stops_the_sweep_and_resume_runs_the_rest(tiny_model, tmp_path):
    sweep = tmp_path / "kill.yaml"
    sweep.write_text(KILL_SWEEP)
    points = sweep_points(sweep)
    root = tmp_path / "runs"
    exp, out = submit(tiny_model, root, sweep)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    try:
        wait_for(lambda: len(rows(exp)) >= 2 or not job_running(exp), 600, "two points written")
        assert len(rows(exp)) == 2, (exp / "logs" / "driver.log").read_text()[-3000:]
        [engine] = json.loads((exp / "provenance.json").read_text())["engines"]
        os.kill(engine["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: not job_running(exp), 120, "the job to end")
    finally:
        if job_running(exp):
            hpcbench("cancel", exp, "--root", root)
    assert time.monotonic() - t0 < 60  # the sweep stopped at once, it did not go on against a dead server
    st = status(root)
    assert st["state"] == "failed", st
    assert "was killed by signal 9 (SIGKILL) during the sweep" in st["detail"], st
    first = rows(exp)
    assert 2 <= len(first) < len(points) and len({r["point_id"] for r in first}) == len(first)
    assert_whole_and_good(first, points)
    assert set(requests_per_point(exp)) == {r["point_id"] for r in first}
    assert_resumed_to_the_end(exp, points, first)


# A decode-heavy point, then a prefill-heavy one: scaled by tokens from the first, the second looks
# like 20 minutes of work or more (a decode step takes 5 ms or more here; the point itself takes seconds),
# more than the walltime leaves, so the driver stops before it. The walltime leaves minutes for the
# start on a busy machine, and the job ends long before it.
WALLTIME_SWEEP = """\
name: walltime-resume
scenarios:
  - name: decode
    input_len: 1
    output_len: 512
    concurrency: 1
    num_requests: 1
    warmup: 0
  - name: prefill
    input_len: 1900
    output_len: 1
    concurrency: 16
    num_requests: 128
    warmup: 0
"""
WALLTIME_S = 600


def test_walltime_stops_before_a_point_that_cannot_finish_and_resume_completes(tiny_model, tmp_path):
    sweep = tmp_path / "walltime.yaml"
    sweep.write_text(WALLTIME_SWEEP)
    points = sweep_points(sweep)
    root = tmp_path / "runs"
    t0 = time.monotonic()
    exp, out = submit(tiny_model, root, sweep, "--walltime", f"00:{WALLTIME_S // 60:02d}:{WALLTIME_S % 60:02d}",
                      "--wait")
    assert time.monotonic() - t0 < WALLTIME_S, out.stdout[-3000:]  # it ended before its walltime, on its own
    finished = json.loads((exp / "finished").read_text())
    assert (finished["exit_code"], finished["reason"]) == (124, "timeout"), finished
    phase = json.loads((exp / "phase.json").read_text())
    assert phase["phase"] == "failed", phase
    assert phase["detail"].startswith("walltime: stopped before point prefill_in1900_out1_c16_n128 (needs ~"), phase
    assert phase["detail"].endswith(f" s left); run `hpcbench submit --resume {exp}`"), phase
    first = rows(exp)
    assert [r["point_id"] for r in first] == ["decode_in1_out512_c1_n1"]
    assert_whole_and_good(first, points)
    assert_resumed_to_the_end(exp, points, first)
