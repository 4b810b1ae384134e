"""The real local Slurm clusters behind the scheduler tests: multi-node jobs, accounting or none,
nodes that are separate network hosts on two networks, tasks bound to their CPUs."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.slurm import SCRIPT, ClusterNetwork, SlurmCluster

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]

TWO_NODE_JOB = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:02:00
srun --nodes=2 --ntasks=2 bash -c 'echo "task node=$SLURMD_NODENAME rank=$SLURM_PROCID"'
"""

# Each node reports, per line: its hostname, then what every node's names resolve to there, then
# its default route.
NETWORK_JOB = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:02:00
srun --nodes=2 --ntasks=2 bash -c '
    echo "host $SLURMD_NODENAME $(hostname)"
    for name in {names}; do
        echo "resolve $SLURMD_NODENAME $name $(getent hosts "$name" | cut -d" " -f1)"
    done
    echo "route $SLURMD_NODENAME $(ip route show default)"'
"""

# node2 listens on its high-speed and its management address (found through their names); node1
# connects to each and says who it is; node2 prints what it saw. They meet through the shared folder.
SERVER = """
import socket, sys, pathlib
ready = pathlib.Path(sys.argv[1])
socks = {}
for net, name in (("hsn", "node2.hsn.test"), ("mgmt", "node2")):
    s = socket.create_server((socket.gethostbyname(name), 0))
    s.settimeout(60)
    socks[net] = s
part = ready.with_suffix(".part")
part.write_text("".join(f"{net} {s.getsockname()[1]}\\n" for net, s in socks.items()))
part.rename(ready)
for net, s in socks.items():
    conn, (peer, _) = s.accept()
    print("seen", net, peer, conn.recv(100).decode(), flush=True)
"""
CLIENT = """
import socket, sys, time, pathlib
ready = pathlib.Path(sys.argv[1])
deadline = time.monotonic() + 60
while not ready.exists():
    assert time.monotonic() < deadline, "no server"
    time.sleep(0.1)
ports = dict(line.split() for line in ready.read_text().splitlines())
for net, name in (("hsn", "node2.hsn.test"), ("mgmt", "node2")):
    with socket.create_connection((name, int(ports[net])), timeout=30) as conn:
        conn.sendall(socket.gethostname().encode())
"""
CONNECT_JOB = """#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:02:00
srun --nodes=1 --ntasks=1 -w node2 python3 -c '{server}' {ready} &
srun --nodes=1 --ntasks=1 -w node1 python3 -c '{client}' {ready}
wait
"""

# One task with 2 CPUs: steps asking for 1 or 2 CPUs, one that widens its own affinity, and a job
# asking for nothing (1 CPU, as on any real cluster).
CPU_JOB = """#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=00:02:00
srun -c 1 bash -c 'echo "c1 $(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
srun -c 2 bash -c 'echo "c2 $(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
srun -c 1 taskset -c 0-{last_cpu} bash -c 'echo "widened $(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
"""
DEFAULT_CPU_JOB = """#!/bin/bash
#SBATCH --nodes=1
#SBATCH --time=00:02:00
srun bash -c 'echo "default $(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
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


def run_job(cluster: SlurmCluster, tmp_path: Path, script: str) -> list[list[str]]:
    """Submit, wait, require success; the output's lines, split into words."""
    job_id, out = submit(cluster, tmp_path, script)
    state = cluster.wait_done(job_id, timeout=120)
    text = out.read_text() if out.exists() else ""
    assert state in ("COMPLETED", ""), f"job {job_id} ended {state}:\n{text}"
    return [line.split() for line in text.splitlines() if line.strip()]


def cpu_count(cpu_list: str) -> int:
    """Number of CPUs in a list like 0-3,6."""
    total = 0
    for part in cpu_list.split(","):
        first, _, last = part.partition("-")
        total += int(last or first) - int(first) + 1
    return total


def daemon_pids(folder: Path) -> list[int]:
    """slurmctld's, node1's and node2's slurmd's."""
    return [int((folder / "run" / f).read_text()) for f in ("slurmctld.pid", "slurmd-node1.pid",
                                                             "slurmd-node2.pid")]


def namespaces() -> set[str]:
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def leftovers(prefix: str) -> list[str]:
    """Namespaces, interfaces, /etc/netns folders and cgroups of a cluster's node hosts."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    found = [ns for ns in namespaces() if ns.startswith(f"{prefix}-")]
    found += [line.split(":")[1].strip() for line in links.splitlines()
              if line.split(":")[1].strip().startswith(f"{prefix}-")]
    found += [str(path) for path in Path("/etc/netns").glob(f"{prefix}-*")]
    return found + [str(path) for path in Path("/sys/fs/cgroup").glob(f"*/{prefix}-*")]


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
    proc = cluster.run(["sinfo", "-h", "-N", "-o", "%N %t %c %o %n"])
    rows = sorted(line.split() for line in proc.stdout.splitlines())
    assert [r[0] for r in rows] == ["node1", "node2"], proc.stdout
    assert all(r[1] in ("idle", "mix", "alloc") for r in rows), proc.stdout
    assert all(r[2] == str(os.cpu_count()) for r in rows), proc.stdout    # what slurmd detects
    # Each node is addressed on the management network and has its own host name.
    assert [(r[3], r[4]) for r in rows] == [(str(n.mgmt_address), n.name) for n in cluster.nodes]
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


def test_nodes_are_network_hosts_with_alcf_names(cluster: SlurmCluster, tmp_path: Path) -> None:
    names = [name for node in cluster.nodes for name in (node.name, node.hsn_name)]
    rows = run_job(cluster, tmp_path, NETWORK_JOB.format(names=" ".join(names)))
    hosts = sorted(r[1:] for r in rows if r[0] == "host")
    assert hosts == [["node1", "node1"], ["node2", "node2"]], rows
    expected = {(n.name, str(n.mgmt_address)) for n in cluster.nodes} | \
        {(n.hsn_name, str(n.hsn_address)) for n in cluster.nodes}
    gateway = next(cluster.mgmt_subnet.hosts())    # the host's end of the management network
    for node in cluster.nodes:
        resolved = {(r[2], r[3] if len(r) > 3 else "") for r in rows if r[:2] == ["resolve", node.name]}
        assert resolved == expected, (node.name, rows)
        route = next(r[2:] for r in rows if r[:2] == ["route", node.name])
        assert route[:5] == ["default", "via", str(gateway), "dev", "mgmt0"], route
    for node in cluster.nodes:
        assert node.mgmt_address in cluster.mgmt_subnet and node.hsn_address in cluster.hsn_subnet


def test_on_node_runs_inside_the_node(cluster: SlurmCluster) -> None:
    node = cluster.node("node2")
    assert cluster.on_node("node2", ["hostname"]).stdout.strip() == "node2"
    addrs = cluster.on_node("node2", ["ip", "-o", "-4", "addr", "show", "hsn0"]).stdout
    assert f" {node.hsn_address}/{cluster.hsn_subnet.prefixlen} " in addrs, addrs
    hosts = cluster.on_node("node2", ["getent", "hosts", node.hsn_name]).stdout.split()
    assert hosts[:2] == [str(node.hsn_address), node.hsn_name]


def test_node1_reaches_node2_on_both_networks(cluster: SlurmCluster, tmp_path: Path) -> None:
    ready = tmp_path / "ports"
    script = CONNECT_JOB.format(server=SERVER, client=CLIENT, ready=ready)
    seen = {r[1]: r[2:] for r in run_job(cluster, tmp_path, script) if r[0] == "seen"}
    node1 = cluster.node("node1")
    assert seen == {"hsn": [str(node1.hsn_address), "node1"], "mgmt": [str(node1.mgmt_address), "node1"]}
    assert ipaddress.IPv4Address(seen["hsn"][0]) in cluster.hsn_subnet


def test_steps_are_bound_to_their_cpus(cluster: SlurmCluster, tmp_path: Path) -> None:
    last_cpu = max(os.sched_getaffinity(0))
    rows = {r[0]: r[1] for r in run_job(cluster, tmp_path, CPU_JOB.format(last_cpu=last_cpu))}
    assert cpu_count(rows["c1"]) == 1, rows
    assert cpu_count(rows["c2"]) == 2, rows
    if "task/cgroup" in cluster.conf.read_text():
        # A cpuset confines the step: widening its own affinity does not give it more CPUs.
        assert cpu_count(rows["widened"]) == 1, rows
    default = {r[0]: r[1] for r in run_job(cluster, tmp_path, DEFAULT_CPU_JOB)}
    assert cpu_count(default["default"]) == 1, default


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
    a, b = slurm_cluster.network, slurm_cluster_accounting.network
    assert a.prefix != b.prefix
    subnets = [a.mgmt_subnet, a.hsn_subnet, b.mgmt_subnet, b.hsn_subnet]
    assert not any(x.overlaps(y) for i, x in enumerate(subnets) for y in subnets[i + 1:]), subnets


def test_script_start_status_stop(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:
    """A third cluster comes up next to the test run's, says so, and `stop` ends only its daemons
    and removes its node hosts; a start after a crash first cleans up what the crashed one left."""
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
        pids = daemon_pids(folder)
        assert all(running(pid) for pid in pids)
        first = ClusterNetwork.read(folder)
        assert not first.mgmt_subnet.overlaps(slurm_cluster.mgmt_subnet)
        assert not first.hsn_subnet.overlaps(slurm_cluster.hsn_subnet)
        assert {node.netns for node in first.nodes} <= namespaces()

        os.kill(pids[0], 9)    # slurmctld crashes: the next start cleans up and starts afresh
        restart = script("start", str(folder), "--name", "thirdone")
        assert restart.returncode == 0 and "already up" not in restart.stdout, restart
        network = ClusterNetwork.read(folder)
        stale = [] if network.prefix == first.prefix else leftovers(first.prefix)
        assert stale == [] and not any(running(pid) for pid in pids[1:]), (stale, restart)
        pids = daemon_pids(folder)
        assert all(running(pid) for pid in pids)
    finally:
        stop = script("stop", str(folder))
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not any(running(pid) for pid in pids)
    assert script("status", str(folder)).returncode == 3
    assert leftovers(network.prefix) == []
    assert not (folder / "network").exists()
    # The test run's cluster is untouched.
    assert slurm_cluster.run(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout.count("node") == 2


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted((REPO / "scripts").glob("*.sh")) + [REPO / ".ci" / "run"]
    proc = subprocess.run(["shellcheck", "--severity=warning", *map(str, scripts)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
