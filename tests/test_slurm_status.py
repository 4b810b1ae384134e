"""Job status on Slurm: parsing sacct and squeue output recorded from Slurm 22.05, then held,
requeued, signalled and multi-cluster jobs and lagging accounting on the real test clusters
(small `sbatch` script jobs that keep the exit-record contract; no vLLM)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from hpcbench.experiment import SUBMIT, Experiment, utc_now, write_json
from hpcbench.schedulers.base import JobState, JobStatus, run_command
from hpcbench.schedulers.slurm import SlurmScheduler, parse_sacct, parse_squeue, split_id
from hpcbench.status import exit_record, follow, job_states
from test_status import RECORD_SCRIPT

T = TypeVar("T")

# --- parsing, from output recorded on the test cluster ---------------------------------------------

# squeue -h -t all -j ... -O JobID:|,State:|,Reason:|,RestartCnt:|,StartTime:|,exit_code:|
SQUEUE = """\
11754000|PENDING|JobHeldUser|0|N/A|0|
11754001|COMPLETED|None|0|2026-11-29T15:03:49|0|
11754002|FAILED|JobLaunchFailure|0|2026-11-29T15:03:57|9|
11754003|FAILED|NonZeroExitCode|0|2026-11-29T15:03:57|768|
11754004|PENDING|BeginTime|1|2026-11-29T15:06:09|0|
11754005|PENDING|job requeued in held state|1|2026-11-29T15:06:34|0|
11754010|CANCELLED|None|0|2026-11-29T15:11:54|15|
11754012|RUNNING|None|1|2026-11-29T15:12:21|0|
"""
# sacct -X --parsable2 -o JobID,State,ExitCode,Start,Reason -j ...
SACCT = """\
JobID|State|ExitCode|Start|Reason
11754001|COMPLETED|0:0|2026-11-29T15:03:49|None
11754002|FAILED|0:9|2026-11-29T15:03:57|None
11754003|FAILED|3:0|2026-11-29T15:03:57|None
11754004|REQUEUED|0:0|2026-11-29T15:04:05|None
11754005|PENDING|0:0|Unknown|JobHeldUser
11754010|CANCELLED by 0|0:0|2026-11-29T15:11:54|None
"""


def local(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


@pytest.mark.parametrize("number, state, exit_code, sig, attempt, in_detail", [
    ("11754000", JobState.HELD, None, None, 0, "PENDING (JobHeldUser); release it with `scontrol release 11754000`"),
    ("11754001", JobState.COMPLETED, 0, None, 0, "COMPLETED"),
    ("11754002", JobState.FAILED, 0, 9, 0, "killed by signal 9 (SIGKILL)"),   # raw wait status 9
    ("11754003", JobState.FAILED, 3, None, 0, "exit code 3"),                 # raw wait status 3 << 8
    ("11754004", JobState.QUEUED, None, None, 1, "PENDING (BeginTime)"),      # requeued, waiting to restart
    ("11754005", JobState.HELD, None, None, 1, "job requeued in held state"),
    ("11754010", JobState.CANCELLED, 0, 15, 0, "SIGTERM"),
    ("11754012", JobState.RUNNING, None, None, 1, "RUNNING"),
])
def test_squeue_output(number, state, exit_code, sig, attempt, in_detail) -> None:
    got = parse_squeue(SQUEUE)[number].status(number)
    assert (got.state, got.exit_code, got.signal, got.attempt, got.source) == (state, exit_code, sig, attempt, "squeue")
    assert in_detail in got.detail


@pytest.mark.parametrize("number, state, exit_code, sig, in_detail", [
    ("11754001", JobState.COMPLETED, 0, None, "COMPLETED"),
    ("11754002", JobState.FAILED, 0, 9, "killed by signal 9 (SIGKILL)"),      # ExitCode 0:9
    ("11754003", JobState.FAILED, 3, None, "exit code 3"),
    ("11754004", JobState.QUEUED, None, None, "REQUEUED"),
    ("11754005", JobState.HELD, None, None, "scontrol release 11754005"),
    ("11754010", JobState.CANCELLED, 0, None, "CANCELLED by 0"),
])
def test_sacct_output(number, state, exit_code, sig, in_detail) -> None:
    got = parse_sacct(SACCT)[number].status(number)
    assert (got.state, got.exit_code, got.signal, got.source) == (state, exit_code, sig, "sacct")
    assert in_detail in got.detail


def test_start_times_are_read_in_local_time() -> None:
    assert parse_sacct(SACCT)["11754001"].started == local("2026-11-29T15:03:49")
    assert parse_sacct(SACCT)["11754005"].started is None   # Unknown
    assert parse_squeue(SQUEUE)["11754000"].started is None  # N/A


def test_multi_cluster_ids_keep_their_cluster() -> None:
    assert split_id("123;cl2") == ("123", "cl2") and split_id("123") == ("123", "")
    # `scontrol release` must name the cluster too.
    got = parse_squeue(SQUEUE)["11754000"].status("11754000;cl2")
    assert "scontrol --clusters=cl2 release 11754000" in got.detail and got.job_id == "11754000;cl2"


# --- the real clusters ------------------------------------------------------------------------------

def until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout}s")


@pytest.fixture(params=["plain", "accounting"])
def cluster(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Each real cluster in turn, with this process's environment pointing at it (hpcbench calls the
    Slurm commands with its own environment)."""
    found = request.getfixturevalue("slurm_cluster" if request.param == "plain" else "slurm_cluster_accounting")
    use(found, monkeypatch)
    return found


def use(cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SACCT_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setenv("PATH", cluster.env["PATH"])


def submit(tmp_path: Path, body: str, *directives: str, sched: SlurmScheduler | None = None) -> tuple[Experiment, str]:
    """A one-node job in a fresh experiment directory that writes its exit record as the batch
    script does (provisional at its start, final from its EXIT trap), tracked in submit.json."""
    exp = Experiment(tmp_path / "exp").create()
    head = ["#!/bin/bash", "#SBATCH --nodes=1", "#SBATCH --time=5", "#SBATCH --output=logs/job.out",
            "#SBATCH --open-mode=append", *(f"#SBATCH {d}" for d in directives),
            "JOB=$SLURM_JOB_ID", "ATTEMPT=${SLURM_RESTART_COUNT:-0}"]
    script = exp.file("job.sh")
    script.write_text("\n".join(head) + RECORD_SCRIPT + body + "\n")
    job = (sched or SlurmScheduler()).submit(script, workdir=exp.path, pass_env=[])
    write_json(exp.file(SUBMIT), {"scheduler": "slurm", "job_id": job.job_id, "accounting": "auto",
                                  "submitted": utc_now()})
    return exp, job.job_id


def state(exp: Experiment) -> JobStatus:
    return job_states([exp])[exp.path]


@pytest.mark.slurm
def test_held_job_reads_held_until_released(cluster, tmp_path: Path) -> None:
    exp, job_id = submit(tmp_path, "sleep 2", "--hold")
    held = state(exp)
    assert held.state == JobState.HELD, held
    assert "JobHeldUser" in held.detail and f"scontrol release {job_id}" in held.detail
    out = io.StringIO()
    assert follow(exp, poll_s=0.2, out=out) == 1  # --wait does not wait for someone to release it
    assert f"job {job_id} is held" in out.getvalue()
    cluster.run(["scontrol", "release", job_id])
    assert state(exp).state in (JobState.QUEUED, JobState.RUNNING)
    out = io.StringIO()
    assert follow(exp, poll_s=0.2, out=out) == 0, out.getvalue()
    assert f"job {job_id} completed" in out.getvalue()


@pytest.mark.slurm
def test_requeued_job_is_live_not_its_previous_attempts_record(cluster, tmp_path: Path) -> None:
    exp, job_id = submit(tmp_path, "sleep 300 & wait", "--requeue")
    until(lambda: (r := exit_record(exp)) and r.attempt == 0, 60, "attempt 0 started")
    assert state(exp).state == JobState.RUNNING
    cluster.run(["scontrol", "requeue", job_id])
    first = until(lambda: (r := exit_record(exp)) and r.final and r, 60, "attempt 0 wrote its final record")
    assert (first.attempt, first.reason) == (0, "cancelled")
    # Slurm holds the job back (BeginTime) before its next attempt: it is queued, whatever the record says.
    waiting = until(lambda: (s := state(exp)).state == JobState.QUEUED and s, 30, "requeued job queued")
    assert "BeginTime" in waiting.detail or "REQUEUED" in waiting.detail, waiting
    assert not waiting.state.terminal  # so `submit --resume` refuses a second job on this directory
    cluster.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
    until(lambda: (r := exit_record(exp)) and r.attempt == 1, 60, "attempt 1 started")
    assert state(exp).state == JobState.RUNNING
    cluster.run(["scancel", job_id])
    ended = until(lambda: (s := state(exp)).state.terminal and s, 60, "cancelled")
    assert ended.state == JobState.CANCELLED, ended
    assert exit_record(exp).attempt == 1


@pytest.mark.slurm
def test_job_killed_by_a_signal_says_which(cluster, tmp_path: Path) -> None:
    exp, job_id = submit(tmp_path, "sleep 1\nkill -9 $$")
    ended = until(lambda: (s := state(exp)).state.terminal and s, 60, "job ended")
    assert (ended.state, ended.signal) == (JobState.FAILED, 9), ended
    assert "killed by signal 9 (SIGKILL)" in ended.detail
    assert not exit_record(exp).final  # SIGKILL: no trap ran, the record stayed provisional


@pytest.mark.slurm
def test_multi_cluster_id_names_its_cluster_everywhere(slurm_cluster_accounting, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = slurm_cluster_accounting  # known to its slurmdbd, as -M needs
    use(cluster, monkeypatch)
    calls: list[list[str]] = []

    def recording(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return run_command(cmd, cwd)

    sched = SlurmScheduler(run=recording)
    exp, job_id = submit(tmp_path, "sleep 300 & wait", f"--clusters={cluster.name}", sched=sched)
    number, on = split_id(job_id)
    assert on == cluster.name and number.isdigit()
    until(lambda: sched.query([job_id])[job_id].state == JobState.RUNNING, 60, "running")
    assert state(exp).state == JobState.RUNNING  # the record's $SLURM_JOB_ID matches `number;cluster`
    sched.cancel(job_id)
    ended = until(lambda: (s := sched.query([job_id])[job_id]).state.terminal and s, 60, "cancelled")
    assert ended.state == JobState.CANCELLED and ended.job_id == job_id
    asked = [c for c in calls if c[0] in ("sacct", "squeue", "scancel")]
    assert asked and all(f"--clusters={cluster.name}" in c for c in asked), asked


def _dbd_pid_file(cluster) -> Path:
    conf = Path(cluster.env["SLURM_CONF"]).with_name("slurmdbd.conf")
    line = next(x for x in conf.read_text().splitlines() if x.startswith("PidFile="))
    return Path(line.split("=", 1)[1])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slurm
def test_status_while_accounting_lags(slurm_cluster_accounting, tmp_path: Path, monkeypatch) -> None:
    """slurmdbd down (sacct fails), then just back (sacct does not know the job yet): squeue -t all
    answers, even for a site profile that says accounting: yes."""
    cluster = slurm_cluster_accounting
    use(cluster, monkeypatch)
    sched = SlurmScheduler(accounting="yes")
    pid = int(_dbd_pid_file(cluster).read_text().strip())
    os.kill(pid, signal.SIGTERM)
    try:
        until(lambda: not _alive(pid), 30, "slurmdbd stopped")
        exp, job_id = submit(tmp_path, "sleep 5")
        live = sched.query([job_id])[job_id]
        assert live.state in (JobState.QUEUED, JobState.RUNNING) and live.source == "squeue", live
        assert state(exp).state in (JobState.QUEUED, JobState.RUNNING)  # the resume guard refuses it
        done = until(lambda: (s := sched.query([job_id])[job_id]).state.terminal and s, 60, "job ended")
        assert (done.state, done.source) == (JobState.COMPLETED, "squeue"), done
        assert state(exp).state == JobState.COMPLETED
    finally:
        subprocess.run(["slurmdbd"], env=cluster.env, check=True, timeout=60)
    # Back, and catching up: whichever of sacct and squeue answers, the job is completed.
    assert sched.query([job_id])[job_id].state == JobState.COMPLETED
    until(lambda: "COMPLETED" in cluster.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id],
                                             check=False).stdout, 120, "sacct caught up")
    assert sched.query([job_id])[job_id].source == "sacct"
