"""The real local Slurm clusters behind the scheduler tests: multi-node jobs, accounting or none."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from fixtures.slurm import SCRIPT, SlurmCluster

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]

TWO_NODE_JOB = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:02:00
srun --nodes=2 --ntasks=2 bash -c 'echo "task node=$SLURMD_NODENAME rank=$SLURM_PROCID"'
"""

FAILING_JOB = """#!/bin/bash
#SBATCH --nodes=1
#SBATCH --time=00:01:00
echo "about to fail"
exit 3
"""


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a daemon's reaper may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def submit(cluster: SlurmCluster, tmp_path: Path, script: str) -> tuple[str, Path]:
    path = tmp_path / "job.sh"
    path.write_text(script)
    out = tmp_path / "job-%j.out"
    proc = cluster.run(["sbatch", "--parsable", f"--output={out}", str(path)])
    job_id = proc.stdout.strip().split(";")[0]
    assert job_id.isdigit(), proc.stdout
    return job_id, tmp_path / f"job-{job_id}.out"


def sacct_row(cluster: SlurmCluster, job_id: str, timeout: float = 30) -> list[str]:
    """JobID|State|ExitCode of the job's allocation, once slurmdbd has its final state."""
    deadline = time.monotonic() + timeout
    row: list[str] = []
    while time.monotonic() < deadline:
        proc = cluster.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode", "-j", job_id])
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if lines:
            row = lines[0].split("|")
            if row[1] not in ("PENDING", "RUNNING", "COMPLETING"):
                return row
        time.sleep(0.5)
    raise AssertionError(f"sacct has no final state for job {job_id} after {timeout}s (last: {row})")


@pytest.fixture(params=["plain", "accounting"])
def cluster(request: pytest.FixtureRequest) -> SlurmCluster:
    name = "slurm_cluster" if request.param == "plain" else "slurm_cluster_accounting"
    return request.getfixturevalue(name)


def test_cluster_has_two_idle_nodes(cluster: SlurmCluster) -> None:
    proc = cluster.run(["sinfo", "-h", "-N", "-o", "%N %t %c"])
    rows = sorted(line.split() for line in proc.stdout.splitlines())
    assert [r[0] for r in rows] == ["node1", "node2"], proc.stdout
    assert all(r[1] in ("idle", "mix", "alloc") for r in rows), proc.stdout
    assert all(r[2] == "2" for r in rows), proc.stdout
    conf = cluster.conf.read_text()
    assert f"ClusterName={cluster.name}" in conf
    assert ("accounting_storage/slurmdbd" in conf) == cluster.accounting


def test_two_node_job_runs_srun_on_both_nodes(cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id, out = submit(cluster, tmp_path, TWO_NODE_JOB)
    state = cluster.wait_done(job_id, timeout=120)
    assert state in ("COMPLETED", ""), f"job {job_id} ended {state}: {out.read_text() if out.exists() else ''}"
    text = out.read_text()
    tasks = sorted(line.split(None, 1)[1] for line in text.splitlines() if line.startswith("task "))
    assert tasks == ["node=node1 rank=0", "node=node2 rank=1"], text

    sacct = cluster.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode", "-j", job_id],
                        check=False)
    if cluster.accounting:
        assert sacct_row(cluster, job_id) == [job_id, "COMPLETED", "0:0"]
    else:
        assert "accounting storage is disabled" in (sacct.stdout + sacct.stderr).lower(), sacct


def test_failing_job_state_and_exit_code(cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id, out = submit(cluster, tmp_path, FAILING_JOB)
    state = cluster.wait_done(job_id, timeout=120)
    # MinJobAge keeps the finished job in squeue for 30 s: long enough to read it here.
    assert state == "FAILED", state
    assert "about to fail" in out.read_text()
    if cluster.accounting:
        assert sacct_row(cluster, job_id) == [job_id, "FAILED", "3:0"]


def test_clusters_run_side_by_side(slurm_cluster: SlurmCluster,
                                   slurm_cluster_accounting: SlurmCluster) -> None:
    assert slurm_cluster.conf != slurm_cluster_accounting.conf
    assert slurm_cluster.name != slurm_cluster_accounting.name
    names = [c.run(["scontrol", "show", "config"]).stdout for c in (slurm_cluster, slurm_cluster_accounting)]
    ports = [next(line.split("=")[1].strip() for line in text.splitlines() if line.startswith("SlurmctldPort"))
             for text in names]
    assert ports[0] != ports[1]
    for cluster, text in zip((slurm_cluster, slurm_cluster_accounting), names):
        assert f"ClusterName             = {cluster.name}" in text


def test_script_start_status_stop(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:
    """A third cluster comes up next to the test run's, says so, and `stop` ends only its daemons."""
    folder = tmp_path / "c3"

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), *args], env={**slurm_cluster.env, "SLURM_CONF": ""},
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    down = script("status", str(folder))
    assert down.returncode == 3 and "down" in down.stdout, down
    try:
        up = script("start", str(folder), "--name", "thirdone")
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.strip().splitlines()[-1] == f"SLURM_CONF={folder.resolve()}/slurm.conf"
        again = script("start", str(folder), "--name", "thirdone")
        assert again.returncode == 0 and "already up" in again.stdout, again
        status = script("status", str(folder))
        assert status.returncode == 0 and "up: cluster thirdone" in status.stdout, status
        pids = [int((folder / "run" / f).read_text()) for f in ("slurmctld.pid", "slurmd-node1.pid",
                                                                  "slurmd-node2.pid")]
        assert all(running(pid) for pid in pids)
    finally:
        stop = script("stop", str(folder))
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not any(running(pid) for pid in pids)
    assert script("status", str(folder)).returncode == 3
    # The test run's cluster is untouched.
    assert slurm_cluster.run(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout.count("node") == 2


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted((REPO / "scripts").glob("*.sh")) + [REPO / ".ci" / "run"]
    proc = subprocess.run(["shellcheck", "--severity=warning", *map(str, scripts)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
