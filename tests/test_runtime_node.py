"""The per-node address rule (hpcbench.runtime.node) on this machine's real interfaces, and device
pinning for replicas from the accelerator kind. The rule across separate network hosts is tested on
the namespaced Slurm cluster (tests/test_slurm_jobs.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpcbench.config import load_site, load_sweep, resolve_model
from hpcbench.config.job import resolve_job
from hpcbench.config.site import NetworkSettings
from hpcbench.runtime import node
from hpcbench.runtime.engine import server_env


def test_rules_on_this_machines_interfaces():
    local = node.interface_addresses()
    assert local.get("lo") == "127.0.0.1"
    assert node.node_address(NetworkSettings(address="interface", interface="lo"), local) == "127.0.0.1"
    assert node.node_address(NetworkSettings(address="subnet", subnet="127.0.0.0/8"), local) == "127.0.0.1"
    assert node.node_address(NetworkSettings(address="loopback"), local) == "127.0.0.1"
    with pytest.raises(node.NodeError, match="no IPv4 address on interface hsn9"):
        node.node_address(NetworkSettings(address="interface", interface="hsn9"), local)
    with pytest.raises(node.NodeError, match="no address of this node is in 10.254.0.0/16"):
        node.node_address(NetworkSettings(address="subnet", subnet="10.254.0.0/16"), local)


def test_dns_rule_prefers_an_address_the_node_holds(monkeypatch):
    monkeypatch.setattr(node, "short_hostname", lambda: "x1")
    monkeypatch.setattr(node, "resolve", lambda name: ["10.0.0.5", "10.1.0.5"] if name == "x1.hsn.test" else [])
    net = NetworkSettings(address="dns", dns_suffix=".hsn.test")
    assert node.node_address(net, {"lo": "127.0.0.1", "hsn0": "10.1.0.5"}) == "10.1.0.5"
    assert node.node_address(net, {"lo": "127.0.0.1"}) == "10.0.0.5"  # else the first, as `sort | head -n1`


def test_a_rule_missing_its_value_is_refused():
    with pytest.raises(ValueError, match="address: dns needs dns_suffix"):
        NetworkSettings(address="dns")
    with pytest.raises(ValueError, match="not an IPv4 network"):
        NetworkSettings(address="subnet", subnet="10.0.0.0/99")


def test_node_env_names_the_interface_for_gloo():
    env = node.node_env("10.1.0.5", {"mgmt0": "10.0.0.5", "hsn0": "10.1.0.5"}, environ={})
    assert env == {"VLLM_HOST_IP": "10.1.0.5", "GLOO_SOCKET_IFNAME": "hsn0"}
    assert "GLOO_SOCKET_IFNAME" not in node.node_env("10.1.0.5", {"hsn0": "10.1.0.5"},
                                                     environ={"GLOO_SOCKET_IFNAME": "ib0"})


def test_exec_records_the_node_and_runs_the_command_with_its_address(tmp_path):
    exp = tmp_path / "exp"
    job = resolve_job(site=load_site("local"), model=resolve_model("tiny"), sweep=load_sweep("smoke"),
                      experiment=exp)
    exp.mkdir()
    job.save(exp / "config.yaml")
    show = "import os, sys; print(sys.argv[1], os.environ['VLLM_HOST_IP'])"
    out = subprocess.run([sys.executable, "-m", "hpcbench.runtime.node", "exec", str(exp), "n1", "ray", "--",
                          sys.executable, "-c", show, "--ip={node_ip}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["--ip=127.0.0.1", "127.0.0.1"]
    record = json.loads((exp / "logs" / "node-n1-ray.json").read_text())
    assert record["address"] == "127.0.0.1" and record["rule"] == "loopback" and record["cpus_allowed"]
    bad = subprocess.run([sys.executable, "-m", "hpcbench.runtime.node", "exec", str(exp), "n1", "x", "--",
                          "no-such-program-here"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot run no-such-program-here" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("site, var", [("polaris", "CUDA_VISIBLE_DEVICES"), ("aurora", "ZE_AFFINITY_MASK"),
                                       ("slurm-rocm", "HIP_VISIBLE_DEVICES")])
def test_replicas_sharing_a_node_each_see_their_own_devices(site, var, tmp_path):
    """No site sets visible_devices_var: it comes from the accelerator kind, so replicas never share GPUs."""
    job = resolve_job(site=load_site(site), model=resolve_model("8b"), sweep=load_sweep("meta-concurrency"),
                      experiment=tmp_path, mode="replicas", account="P")
    per_node = job.plan.replicas_per_node
    assert per_node > 1
    seen = [server_env(job, k)[var] for k in range(per_node)]
    devices = [d for group in seen for d in group.split(",")]
    assert len(devices) == len(set(devices)) == per_node * job.plan.accelerators_per_replica
