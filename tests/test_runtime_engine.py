"""Engine launch: what is started where (plan_servers, server_env) and readiness against real servers."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from fixtures.vllm import free_port, make_job, server_command
from hpcbench.runtime.engine import (EngineError, ServerSpec, launch, plan_servers, server_env, stop_servers,
                                     wait_ready)

SITES = Path(__file__).parent / "sites"


def test_serve_tp2_cpu_binds_one_core_per_worker(tmp_path: Path, tiny_model: Path) -> None:
    job = make_job(tmp_path / "exp", tiny_model, site=str(SITES / "local-tp2.yaml"))
    assert (job.plan.tp, job.plan.pp) == (2, 1)
    env = server_env(job)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    [spec] = plan_servers(job, ["n1"], {}, port_offset=100)
    assert spec.port == job.ports.engine + 100
    assert spec.argv[-2:] == ["--port", str(spec.port)]
    assert "--tensor-parallel-size" in spec.argv and spec.argv[spec.argv.index("--tensor-parallel-size") + 1] == "2"
    # The site's own binding wins.
    job.site.env["VLLM_CPU_OMP_THREADS_BIND"] = "1|0"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in server_env(job)


def test_replicas_on_every_node_through_the_launcher(tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    monkeypatch.setenv("HPCBENCH_STEP_CPUS", "2")  # what the batch script found the job holds per node
    job = make_job(tmp_path / "exp", tiny_model, site=str(SITES / "slurm-local.yaml"), nodes=2, mode="replicas")
    specs = plan_servers(job, ["node1", "node2"], {"node1": "10.0.0.1", "node2": "10.0.0.2"}, port_offset=50,
                         head_ip="10.0.0.1")
    assert [s.node for s in specs] == ["node1", "node2"]
    assert [s.port for s in specs] == [job.ports.engine + 50, job.ports.engine + 51]
    assert [s.url for s in specs] == [f"http://10.0.0.1:{job.ports.engine + 50}",
                                      f"http://10.0.0.2:{job.ports.engine + 51}"]
    # Every server starts through the node module (its node's own address in VLLM_HOST_IP); the head's
    # right here, the others through the launcher with the CPUs the job holds on their node.
    here = specs[0].argv
    assert here[:5] == [job.python, "-m", "hpcbench.runtime.node", "exec", job.experiment]
    assert here[5:8] == ["node1", "engine-0", "--"] and here[-len(specs[0].engine_argv):] == specs[0].engine_argv
    remote = specs[1].argv
    assert remote[:6] == ["srun", "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--overlap", "--nodelist"]
    assert remote[6] == "node2" and remote[7:10] == [job.python, "-m", "hpcbench.runtime.node"]
    assert "VLLM_CPU_KVCACHE_SPACE=2" in remote
    assert remote[-len(specs[1].engine_argv):] == specs[1].engine_argv


def test_gpu_replicas_sharing_a_node_get_their_own_devices(tmp_path: Path, tiny_model: Path) -> None:
    job = make_job(tmp_path / "exp", tiny_model, site=str(SITES / "local-tp2.yaml"), mode="replicas")
    job.site.node.accelerator = "cuda"
    job.site.node.visible_devices_var = "CUDA_VISIBLE_DEVICES"
    job.plan.replicas_per_node, job.plan.accelerators_per_replica = 2, 1
    assert server_env(job, 0)["CUDA_VISIBLE_DEVICES"] == "0"
    assert server_env(job, 1)["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.vllm
def test_crash_while_loading_is_reported_at_once_with_the_log(tmp_path: Path) -> None:
    port = free_port()
    argv = server_command(tmp_path / "no-such-model", port)
    spec = ServerSpec("engine-0", "local", "127.0.0.1", port, argv, argv,
                      {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"})
    servers = launch([spec], tmp_path / "logs")
    exited: list[float] = []
    watcher = threading.Thread(target=lambda: (servers[0].proc.wait(), exited.append(time.monotonic())))
    watcher.start()
    try:
        with pytest.raises(EngineError) as err:
            wait_ready(servers, timeout_s=600, progress=None)
        raised = time.monotonic()
    finally:
        stop_servers(servers)
    watcher.join(10)
    assert exited and raised - exited[0] < 30, "a crashed server is reported at once, not at the 600 s timeout"
    text = str(err.value)
    assert "exited with code" in text and "last lines of" in text
    assert "no-such-model" in text  # the tail of the log names the cause


def test_timeout_names_the_server(tmp_path: Path) -> None:
    """A process that never answers HTTP: the timeout (not a hang) names it."""
    port = free_port()
    argv = [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(600)"]
    servers = launch([ServerSpec("engine-7", "local", "127.0.0.1", port, argv, argv, {})], tmp_path / "logs")
    t0 = time.monotonic()
    try:
        with pytest.raises(EngineError, match=r"not ready after 3 s: engine-7") as err:
            wait_ready(servers, timeout_s=3, progress=None)
    finally:
        stop_servers(servers)
    assert time.monotonic() - t0 < 120  # bounded by the timeout, not the process's 600 s
    assert "still loading" in str(err.value)
    assert servers[0].proc.returncode == -signal.SIGTERM  # stopped, not waited for


def test_stop_returns_once_the_whole_group_is_gone(tmp_path: Path) -> None:
    """Workers that ignore TERM and outlive their leader still hold devices: stop ends only when none is left."""
    code = ("import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "for _ in range(3):\n"
            "    subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
            "print('workers up', flush=True)\n"
            "time.sleep(60)\n")
    argv = [sys.executable, "-c", code]
    servers = launch([ServerSpec("engine-0", "local", "127.0.0.1", free_port(), argv, argv, {})], tmp_path / "logs")
    log = tmp_path / "logs" / "engine-0.log"
    deadline = time.monotonic() + 20
    while "workers up" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    pgid = servers[0].proc.pid
    stop_servers(servers, grace_s=0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
