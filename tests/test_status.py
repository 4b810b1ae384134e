"""How hpcbench status merges the scheduler's word with the job's own exit record, and the local
scheduler on real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from hpcbench.schedulers.base import JobState, JobStatus
from hpcbench.schedulers.local import LocalScheduler
from hpcbench.status import merge


def sched(state: JobState, job_id: str = "7") -> JobStatus:
    return JobStatus(job_id, state, detail=state.value, source="test")


@pytest.mark.parametrize("said, record, expected", [
    (JobState.RUNNING, None, JobState.RUNNING),
    (JobState.UNKNOWN, None, JobState.UNKNOWN),                           # gone and no record: say so
    (JobState.UNKNOWN, {"exit_code": 0, "reason": "completed", "job_id": "7"}, JobState.COMPLETED),
    (JobState.UNKNOWN, {"exit_code": 143, "reason": "timeout", "job_id": "7"}, JobState.TIMEOUT),
    (JobState.FAILED, {"exit_code": 138, "reason": "timeout", "job_id": "7"}, JobState.TIMEOUT),
    (JobState.FAILED, {"exit_code": 143, "reason": "cancelled", "job_id": "7"}, JobState.CANCELLED),
    (JobState.CANCELLED, {"exit_code": 143, "reason": "timeout", "job_id": "7"}, JobState.CANCELLED),
    (JobState.TIMEOUT, {"exit_code": 0, "reason": "completed", "job_id": "7"}, JobState.TIMEOUT),
    (JobState.RUNNING, {"exit_code": 1, "reason": "failed", "job_id": "7"}, JobState.FAILED),
    # A record left by the previous submission of a resumed experiment is not this job's.
    (JobState.RUNNING, {"exit_code": 143, "reason": "cancelled", "job_id": "6"}, JobState.RUNNING),
    (JobState.UNKNOWN, {"exit_code": 143, "reason": "cancelled", "job_id": "6"}, JobState.UNKNOWN),
])
def test_merge(said, record, expected):
    assert merge(sched(said), record).state == expected


def test_merge_matches_the_local_pid_and_full_pbs_names():
    record = {"exit_code": 0, "reason": "completed", "job_id": "4242"}
    assert merge(sched(JobState.UNKNOWN, "4242.998877"), record).state == JobState.COMPLETED
    pbs = {"exit_code": 0, "reason": "completed", "job_id": "123.aurora-pbs-0001.hostmgmt.cm.aurora.alcf.anl.gov"}
    assert merge(sched(JobState.UNKNOWN, "123.aurora-pbs-0001"), pbs).state == JobState.COMPLETED
    assert merge(sched(JobState.UNKNOWN, "124.aurora-pbs-0001"), pbs).state == JobState.UNKNOWN


def test_local_scheduler_runs_tracks_and_cancels_a_real_process(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("trap 'echo stopped; exit 143' TERM\necho $$ > pid\nsleep 60 & wait\n")
    (tmp_path / "logs").mkdir()
    local = LocalScheduler()
    job = local.submit(script, workdir=tmp_path, pass_env=[])
    assert local.query([job.job_id])[job.job_id].state == JobState.RUNNING
    deadline = time.monotonic() + 10
    while not (tmp_path / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.job_id.startswith((tmp_path / "pid").read_text().strip() + ".")
    local.cancel(job.job_id)
    deadline = time.monotonic() + 10
    while local.query([job.job_id])[job.job_id].state == JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)
    assert local.query([job.job_id])[job.job_id].state == JobState.UNKNOWN  # gone: the record decides
    assert "stopped" in (tmp_path / "logs" / "job.out").read_text()
    # A recycled pid is not the job: same pid, another start time.
    pid = job.job_id.split(".")[0]
    assert local.query([f"{pid}.1"])[f"{pid}.1"].state == JobState.UNKNOWN


def test_status_on_an_empty_root_and_unknown_cancel_target(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hpcbench", "status", "--root", str(tmp_path), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout) == []
    out = subprocess.run([sys.executable, "-m", "hpcbench", "cancel", "12345", "--root", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no tracked experiment is '12345'" in out.stderr
