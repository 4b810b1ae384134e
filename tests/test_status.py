"""How hpcbench status merges the scheduler's word with the job's own exit record, how `--wait`
paces its scheduler queries, and the local scheduler and `follow` on real processes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcbench.experiment import SUBMIT, Experiment, utc_now, write_json
from hpcbench.schedulers.base import JobState, JobStatus
from hpcbench.schedulers.local import LocalScheduler
from hpcbench.status import NO_ANSWER, ExitRecord, QuerySchedule, exit_record, follow, job_states, merge

T0 = 1_790_000_000.0  # when the scheduler says the current attempt started


def stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def sched(state: JobState, job_id: str = "7", **kw) -> JobStatus:
    return JobStatus(job_id, state, detail=state.value, source=kw.pop("source", "test"), **kw)


def final(reason: str, code: int | None, **kw) -> dict:
    return {"exit_code": code, "reason": reason, "final": True, "job_id": "7", **kw}


def provisional(**kw) -> dict:
    return {"exit_code": None, "reason": "running", "final": False, "job_id": "7", "attempt": 0,
            "attempt_started": stamp(T0 + 2), "deadline": stamp(T0 + 3600), **kw}


def merged(said: JobStatus, record: dict | None, **kw) -> JobStatus:
    return merge(said, ExitRecord.parse(record) if record is not None else None, **kw)


@pytest.mark.parametrize("said, record, expected", [
    (sched(JobState.RUNNING), None, JobState.RUNNING),
    (sched(JobState.UNKNOWN), None, JobState.UNKNOWN),                         # gone and no record: say so
    # Records from before attempts were recorded (no final, attempt, attempt_started): final.
    (sched(JobState.UNKNOWN), {"exit_code": 0, "reason": "completed", "job_id": "7"}, JobState.COMPLETED),
    (sched(JobState.UNKNOWN), {"exit_code": 143, "reason": "timeout", "job_id": "7"}, JobState.TIMEOUT),
    (sched(JobState.FAILED), final("timeout", 138), JobState.TIMEOUT),         # the job knows why
    (sched(JobState.FAILED), final("cancelled", 143), JobState.CANCELLED),
    (sched(JobState.CANCELLED), final("timeout", 143), JobState.CANCELLED),    # the scheduler's end stands
    (sched(JobState.TIMEOUT), final("completed", 0), JobState.TIMEOUT),
    (sched(JobState.COMPLETED), final("failed", 1), JobState.COMPLETED),
    # A live state is never overridden: still tearing down, requeued, or held after a requeue.
    (sched(JobState.RUNNING), final("failed", 1), JobState.RUNNING),
    (sched(JobState.QUEUED, attempt=1), final("cancelled", 143, attempt=0), JobState.QUEUED),
    (sched(JobState.RUNNING, attempt=1, started=T0), final("cancelled", 143, attempt=0), JobState.RUNNING),
    (sched(JobState.HELD, attempt=1), final("failed", 1, attempt=0), JobState.HELD),
    # A record left by the previous submission of a resumed experiment is not this job's.
    (sched(JobState.RUNNING), final("cancelled", 143, job_id="6"), JobState.RUNNING),
    (sched(JobState.UNKNOWN), final("cancelled", 143, job_id="6"), JobState.UNKNOWN),
    # A record speaks only for its own attempt: by restart count (Slurm) ...
    (sched(JobState.FAILED, attempt=1), final("timeout", 138, attempt=0), JobState.FAILED),
    (sched(JobState.FAILED, attempt=1), final("timeout", 138, attempt=1), JobState.TIMEOUT),
    # ... or by start time (sacct, PBS stime; PBS jobs cannot know their run count: attempt null).
    (sched(JobState.FAILED, attempt=14, started=T0),
     final("timeout", 138, attempt=None, attempt_started=stamp(T0 - 3600)), JobState.FAILED),
    (sched(JobState.FAILED, attempt=14, started=T0),
     final("timeout", 138, attempt=None, attempt_started=stamp(T0 + 1)), JobState.TIMEOUT),
    (sched(JobState.FAILED, started=T0), final("timeout", 138, attempt_started=stamp(T0 - 5)), JobState.TIMEOUT),
    # Killed before its final record: the scheduler's end, with its signal, stands.
    (sched(JobState.FAILED, signal=9, attempt=0, started=T0), provisional(), JobState.FAILED),
    (sched(JobState.CANCELLED, started=T0), provisional(), JobState.CANCELLED),
])
def test_merge(said: JobStatus, record: dict | None, expected: JobState) -> None:
    got = merged(said, record)
    assert got.state == expected
    if expected == said.state != JobState.UNKNOWN:
        assert got == said  # the scheduler's word, untouched


def test_merge_keeps_the_record_signal_and_exit_code() -> None:
    got = merged(sched(JobState.UNKNOWN), final("cancelled", 143, signal="TERM"))
    assert (got.state, got.exit_code, got.signal, got.source) == (JobState.CANCELLED, 143, signal.SIGTERM, "record")
    assert "SIGTERM" in got.detail


@pytest.mark.parametrize("last_seen, now, expected, in_detail", [
    # Killed well before its walltime (a node failure, the OOM killer, SIGKILL).
    (T0 + 600, T0 + 900, JobState.FAILED, "killed before it could write its final exit record"),
    # Last output at its walltime deadline: the walltime ended it.
    (T0 + 3590, T0 + 7200, JobState.TIMEOUT, "reached its walltime"),
    # Deadline long past when asked, but the job fell silent early: it did not reach its walltime.
    (T0 + 600, T0 + 86400, JobState.FAILED, "last output"),
    # Nothing written at all: judged by the time of asking.
    (None, T0 + 7200, JobState.TIMEOUT, "reached its walltime"),
])
def test_provisional_record_of_a_job_the_scheduler_forgot(last_seen, now, expected, in_detail) -> None:
    got = merged(sched(JobState.UNKNOWN, source="squeue"), provisional(), last_seen=last_seen, now=now)
    assert got.state == expected and in_detail in got.detail and got.source == "record"


def test_provisional_record_while_the_scheduler_does_not_answer() -> None:
    down = sched(JobState.UNKNOWN, source=NO_ANSWER)
    got = merged(down, provisional(), last_seen=T0 + 10, now=T0 + 20)
    assert got.state == JobState.UNKNOWN and "has not ended" in got.detail
    assert merged(down, None) == down  # no guess that it was killed


def test_exit_record_reading(tmp_path: Path) -> None:
    exp = Experiment(tmp_path)
    assert exit_record(exp) is None
    (tmp_path / "finished").write_text('{"exit_code": 0, "reason": "completed", "time": "2025-01-01T13:02:11Z"}')
    old = exit_record(exp)
    assert old is not None and old.final and old.attempt is None and old.state == JobState.COMPLETED
    write_json(tmp_path / "finished", provisional(attempt=None))
    new = exit_record(exp)
    assert new is not None and not new.final and new.attempt is None
    assert (new.attempt_started, new.deadline) == (T0 + 2, T0 + 3600)
    (tmp_path / "finished").write_text('{"exit_code": 0, "rea')  # being replaced: not a record yet
    assert exit_record(exp) is None


def test_merge_matches_the_local_pid_and_full_pbs_names():
    record = {"exit_code": 0, "reason": "completed", "job_id": "4242"}
    assert merged(sched(JobState.UNKNOWN, "4242.998877"), record).state == JobState.COMPLETED
    pbs = {"exit_code": 0, "reason": "completed", "job_id": "123.aurora-pbs-0001.hostmgmt.cm.aurora.alcf.anl.gov"}
    assert merged(sched(JobState.UNKNOWN, "123.aurora-pbs-0001"), pbs).state == JobState.COMPLETED
    assert merged(sched(JobState.UNKNOWN, "124.aurora-pbs-0001"), pbs).state == JobState.UNKNOWN
    # Slurm multi-cluster ids keep their cluster; the job itself knows only the number.
    slurm = {"exit_code": 1, "reason": "failed", "job_id": "123"}
    assert merged(sched(JobState.UNKNOWN, "123;cl2"), slurm).state == JobState.FAILED


# --- pacing of the scheduler queries of `submit --wait` ---------------------------------------------

def test_query_schedule_backs_off_with_age_and_answers_news_at_once() -> None:
    plan = QuerySchedule(born=0.0, poll_s=2.0, max_s=30.0)
    asked = []
    for tick in range(0, 3600, 2):  # one hour of follow() wake-ups, every 2 s
        if plan.due(float(tick)):
            plan.last = float(tick)
            asked.append(tick)
    assert asked[:3] == [0, 2, 4]                                   # a young job: every poll
    gaps = [b - a for a, b in zip(asked, asked[1:]) if a >= 60]
    assert gaps and min(gaps) >= 30 and max(gaps) <= 32             # an old one: once per 30 s
    assert len(asked) <= 3600 / 30 + 15
    assert not plan.due(3600.0) and plan.due(3600.0, news=True)    # a final record: ask now


def test_query_schedule_of_an_old_job_starts_at_its_age() -> None:
    plan = QuerySchedule(born=-7200.0, poll_s=2.0, max_s=30.0)
    assert plan.due(0.0)
    plan.last = 0.0
    assert not plan.due(28.0) and plan.due(30.0)


# --- real processes: the local scheduler and follow() ----------------------------------------------

# A job script that keeps the exit-record contract: a provisional record at its start, the final one
# from its EXIT trap. $1: what to do in between.
RECORD_SCRIPT = r"""
JOB=${JOB:-$$}
ATTEMPT=${ATTEMPT:-0}
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
STARTED=$(now)
DEADLINE=$(date -u -d "@$(( $(date +%s) + 3600 ))" +%Y-%m-%dT%H:%M:%SZ)
SIGNAL=null
record() {
  printf '{"exit_code": %s, "reason": "%s", "final": %s, "job_id": "%s", "attempt": %s, "attempt_started": "%s", "deadline": "%s", "signal": %s, "time": "%s"}\n' \
    "$2" "$1" "$3" "$JOB" "$ATTEMPT" "$STARTED" "$DEADLINE" "$SIGNAL" "$(now)" >finished.tmp && mv -f finished.tmp finished
}
ended() {
  local code=$?
  if [ "$code" -eq 0 ]; then record completed 0 true
  elif [ "$SIGNAL" != null ]; then record cancelled "$code" true
  else record failed "$code" true; fi
}
trap ended EXIT
trap 'SIGNAL="\"TERM\""; exit 143' TERM
record running null false
echo "attempt $ATTEMPT started"
"""


def local_job(tmp_path: Path, body: str) -> tuple[Experiment, str]:
    exp = Experiment(tmp_path / "exp").create()
    script = exp.path / "job.sh"
    script.write_text(RECORD_SCRIPT + body + "\n")
    job = LocalScheduler().submit(script, workdir=exp.path, pass_env=[])
    write_json(exp.file(SUBMIT), {"scheduler": "local", "job_id": job.job_id, "submitted": utc_now()})
    return exp, job.job_id


def wait_for_record(exp: Experiment, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while exit_record(exp) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exit_record(exp) is not None, (exp.logs / "job.out").read_text()


def test_follow_ends_when_the_job_completes(tmp_path: Path) -> None:
    exp, job_id = local_job(tmp_path, "sleep 3")
    out = io.StringIO()
    assert follow(exp, poll_s=0.2, out=out) == 0
    assert "attempt 0 started" in out.getvalue() and f"job {job_id} completed" in out.getvalue()


def test_follow_reports_a_job_killed_before_its_final_record(tmp_path: Path) -> None:
    exp, job_id = local_job(tmp_path, "sleep 60")
    wait_for_record(exp)
    assert job_states([exp])[exp.path].state == JobState.RUNNING
    os.killpg(int(job_id.split(".")[0]), signal.SIGKILL)  # no trap runs: the record stays provisional
    out = io.StringIO()
    assert follow(exp, poll_s=0.2, out=out) == 1
    assert "failed" in out.getvalue() and "killed before it could write its final exit record" in out.getvalue()
    assert not exit_record(exp).final


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
