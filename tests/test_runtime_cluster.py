"""Ray readiness against a real 2-node Ray cluster on this machine (two `ray start` daemons told apart by
their node-name resources, with their own temp dir and ports)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.vllm import free_port, processes_with
from hpcbench.runtime.cluster import ClusterError, node_resources_json, status, wait_for_cluster

pytestmark = pytest.mark.ray


class RayDaemons:
    """Ray daemons of this test, each in its own process group (so only they are ever stopped)."""

    def __init__(self) -> None:
        # Short temp dir: Ray's socket paths must stay under 107 characters.
        self.tmp = tempfile.mkdtemp(prefix="hpcbt-ray-", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def start(self, node: str, head: bool) -> None:
        argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--num-cpus=1", "--num-gpus=0",
                f"--temp-dir={self.tmp}", "--disable-usage-stats", f"--resources={node_resources_json(node)}",
                "--dashboard-agent-listen-port=0", "--metrics-export-port=0", "--min-worker-port=0",
                "--max-worker-port=0", "--block"]
        if head:
            argv += ["--head", "--node-ip-address=127.0.0.1", f"--port={self.port}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}"]
        else:
            argv += [f"--address={self.address}"]
        log = open(Path(self.tmp) / f"{node}.log", "wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)


@pytest.fixture(scope="module")
def ray_daemons() -> Iterator[RayDaemons]:
    d = RayDaemons()
    try:
        yield d
    finally:
        d.stop()
    deadline = time.monotonic() + 10
    while processes_with(d.tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_with(d.tmp)


def test_status_names_missing_nodes_and_short_gpus() -> None:
    raw = [{"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"hpcbench-node-a": 1, "GPU": 4}},
           {"Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {"hpcbench-node-b": 1, "GPU": 4}},
           {"Alive": True, "NodeManagerAddress": "10.0.0.3", "Resources": {"hpcbench-node-c": 1, "GPU": 2}}]
    st = status(raw, ["a", "b", "c"], gpus_per_node=4)
    assert not st.ready
    assert st.missing == ["b"]
    assert st.short_gpus == {"c": 2.0}
    assert "missing: b" in st.summary() and "c (2/4)" in st.summary()
    assert status(raw[:1], ["a"], 4).ready


def test_two_node_cluster(ray_daemons: RayDaemons) -> None:
    ray_daemons.start("node-a", head=True)
    lines: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as err:
        wait_for_cluster(ray_daemons.address, ["node-a", "node-b"], 0, timeout_s=25, progress=lines.append,
                         every_s=2)
    assert "missing: node-b" in str(err.value)
    assert "node-a" not in str(err.value).split("missing:")[1]
    assert time.monotonic() - t0 < 90  # bounded by the timeout, not a hang
    assert any("1 of 2" in ln for ln in lines), lines

    ray_daemons.start("node-b", head=False)
    ips = wait_for_cluster(ray_daemons.address, ["node-a", "node-b"], 0, timeout_s=90, progress=lines.append)
    assert sorted(ips) == ["node-a", "node-b"]
    assert all(ips.values())
    # The planned count is exact: a node the plan does not know is not "ready".
    with pytest.raises(ClusterError, match="unexpected node"):
        wait_for_cluster(ray_daemons.address, ["node-a"], 0, timeout_s=3, progress=None)
    # GPUs are checked too: these daemons registered none.
    with pytest.raises(ClusterError, match="too few GPUs"):
        wait_for_cluster(ray_daemons.address, ["node-a", "node-b"], 1, timeout_s=3, progress=None)


def test_head_unreachable_names_every_node() -> None:
    port = free_port()
    with pytest.raises(ClusterError, match=r"missing: x, y"):
        wait_for_cluster(f"127.0.0.1:{port}", ["x", "y"], 0, timeout_s=2, progress=None)
