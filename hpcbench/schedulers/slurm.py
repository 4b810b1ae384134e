"""Slurm: sbatch, sacct where accounting exists, `squeue -t all` for what sacct does not know, scancel.

Facts this relies on (Slurm 22.05, seen on a real cluster):
- `sbatch --parsable` prints `jobid`, or `jobid;cluster` when the job went to another cluster of a
  multi-cluster site. The id keeps its cluster (`123;cl2`) and every later command names it
  (`--clusters=cl2`): without it sacct, squeue and scancel look at the local cluster.
- sacct lags behind slurmctld: it may not know a job submitted a moment ago, may still say PENDING
  for a job that has started, and fails outright while slurmdbd is down. squeue always knows queued
  and running jobs and, with `-t all`, ended ones for MinJobAge seconds after their end: for every job
  that sacct does not show ended, squeue's word wins. Many clusters have no accounting at all (`sacct` answers
  "accounting storage is disabled"): there, once a job has left squeue, its outcome comes from the
  exit record the batch script writes itself (hpcbench.status merges it in).
- sacct's ExitCode is `code:signal`; squeue's exit_code is the raw wait status (the signal in its low
  seven bits, the code in the next byte).
- A requeued job waits PENDING (reason BeginTime) about two minutes with its restart count raised.
  Held jobs are PENDING with reason JobHeldUser or JobHeldAdmin (squeue says "job requeued in held
  state" after `scontrol requeuehold`), or in state REQUEUE_HOLD or SPECIAL_EXIT.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hpcbench.schedulers.base import (JobState, JobStatus, Runner, Scheduler, SchedulerError, Submitted,
                                      local_time, run_command, signal_name)

# sacct and squeue state names (long forms) -> ours.
STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED, "REQUEUED": JobState.QUEUED, "REQUEUE_FED": JobState.QUEUED,
    "SUSPENDED": JobState.QUEUED,
    "REQUEUE_HOLD": JobState.HELD, "SPECIAL_EXIT": JobState.HELD, "RESV_DEL_HOLD": JobState.HELD,
    "CONFIGURING": JobState.RUNNING, "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING, "SIGNALING": JobState.RUNNING, "RESIZING": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED, "NODE_FAIL": JobState.FAILED, "BOOT_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED, "PREEMPTED": JobState.CANCELLED, "REVOKED": JobState.CANCELLED,
    "CANCELLED": JobState.CANCELLED, "DEADLINE": JobState.TIMEOUT, "TIMEOUT": JobState.TIMEOUT,
}
_HELD_REASONS = {"JobHeldUser", "JobHeldAdmin"}
_TIME = "%Y-%m-%dT%H:%M:%S"
SACCT_FIELDS = "JobID,State,ExitCode,Start,Reason"
SQUEUE_FIELDS = ("JobID", "State", "Reason", "RestartCnt", "StartTime", "exit_code")


def split_id(job_id: str) -> tuple[str, str]:
    """`123;cl2` -> ("123", "cl2"); a plain id has no cluster ("")."""
    number, _, cluster = str(job_id).partition(";")
    return number.strip(), cluster.strip()


def _on(cluster: str) -> list[str]:
    return [f"--clusters={cluster}"] if cluster else []


@dataclass(frozen=True)
class Seen:
    """One job as sacct or squeue printed it, in Slurm's own words."""

    state: str
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    attempt: int | None = None
    started: float | None = None
    source: str = ""

    @property
    def ours(self) -> JobState:
        words = self.state.split()
        state = STATES.get(words[0].rstrip("+") if words else "", JobState.UNKNOWN)  # "CANCELLED by 0"
        return JobState.HELD if state == JobState.QUEUED and _held(self.reason) else state

    def status(self, job_id: str) -> JobStatus:
        state = self.ours
        detail = self.state + (f" ({self.reason})" if self.reason not in ("", "None") else "")
        if state == JobState.HELD:
            number, cluster = split_id(job_id)
            detail += f"; release it with `scontrol {' '.join(_on(cluster) + ['release', number])}`"
        ended = state.terminal
        if ended and self.signal:
            detail += f", killed by signal {signal_name(self.signal)}"
        elif ended and self.exit_code:
            detail += f", exit code {self.exit_code}"
        return JobStatus(job_id, state, self.exit_code if ended else None, detail, self.source,
                         self.signal if ended else None, self.attempt, self.started)


def _held(reason: str) -> bool:
    return reason in _HELD_REASONS or "held" in reason.lower()


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def parse_sacct(text: str) -> dict[str, Seen]:
    """`sacct -X --parsable2 -o JobID,State,ExitCode,Start,Reason` (with its header) -> per job number."""
    from submitit.slurm.slurm import SlurmInfoWatcher  # keeps every field as printed, arrays expanded

    out = {}
    for number, row in SlurmInfoWatcher().read_info(text).items():
        code, _, sig = row.get("ExitCode", "").partition(":")
        out[number] = Seen(row.get("State", ""), row.get("Reason", ""), _int(code), _int(sig) or None,
                           None, local_time(row.get("Start"), _TIME), "sacct")
    return out


def parse_squeue(text: str) -> dict[str, Seen]:
    """`squeue -h -O JobID:|,State:|,Reason:|,RestartCnt:|,StartTime:|,exit_code:|` -> per job number."""
    out = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < len(SQUEUE_FIELDS) or not parts[0]:
            continue  # `CLUSTER: name` lines of multi-cluster output
        number, state, reason, restarts, start, status = parts[:len(SQUEUE_FIELDS)]
        wait = _int(status) or 0  # the raw wait status
        out[number] = Seen(state, reason, wait >> 8 & 0xFF, wait & 0x7F or None, _int(restarts),
                           local_time(start, _TIME), "squeue")
    return out


class SlurmScheduler(Scheduler):
    kind = "slurm"

    def __init__(self, run: Runner = run_command, accounting: str = "auto") -> None:
        super().__init__(run)
        self.accounting = accounting  # auto | yes | no (a site profile's scheduler.accounting)

    def submit(self, script: Path, *, workdir: Path, pass_env: list[str]) -> Submitted:
        # --export=ALL hands the submitting environment (secrets included, by name) to the job;
        # values never reach the command line or the script.
        cmd = ["sbatch", "--parsable", "--export=ALL", f"--chdir={workdir}", str(script)]
        out = self._check(self.run(cmd), "sbatch")
        lines = out.strip().splitlines()
        number, cluster = split_id(lines[-1]) if lines else ("", "")
        if not number:
            raise SchedulerError(f"sbatch printed no job id: {out!r}")
        return Submitted(f"{number};{cluster}" if cluster else number, cmd)

    def query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        by_cluster: dict[str, list[str]] = defaultdict(list)
        for job_id in dict.fromkeys(job_ids):
            by_cluster[split_id(job_id)[1]].append(job_id)
        out: dict[str, JobStatus] = {}
        for cluster, ids in by_cluster.items():
            out.update(self._query_cluster(cluster, ids))
        return out

    def _query_cluster(self, cluster: str, job_ids: list[str]) -> dict[str, JobStatus]:
        """sacct for all ids, then one `squeue -t all` for those it does not show ended (yet)."""
        numbers = sorted({split_id(j)[0] for j in job_ids})
        seen, sacct_said = self._sacct(cluster, numbers) if self.accounting != "no" else ({}, "")
        unsure = [n for n in numbers if n not in seen or not seen[n].ours.terminal]
        if unsure:
            seen.update(self._squeue(cluster, unsure))
        out = {}
        for job_id in job_ids:
            found = seen.get(split_id(job_id)[0])
            out[job_id] = found.status(job_id) if found else JobStatus(
                job_id, JobState.UNKNOWN, detail=f"not in squeue -t all{sacct_said}", source="squeue")
        return out

    def _sacct(self, cluster: str, numbers: list[str]) -> tuple[dict[str, Seen], str]:
        """What accounting knows, and how to say sacct's part when a job is in neither place."""
        proc = self.run(["sacct", *_on(cluster), "-X", "--parsable2", "-o", SACCT_FIELDS, "-j", ",".join(numbers)])
        said = " ".join(f"{proc.stderr or ''} {proc.stdout or ''}".split())
        if "accounting storage is disabled" in said.lower():
            if self.accounting == "yes":
                raise SchedulerError(f"sacct: {said} (the site profile says scheduler.accounting: yes; set it "
                                     "to auto or no)")
            return {}, ""
        if proc.returncode != 0:
            # slurmdbd down or unreachable: squeue still knows every live job.
            return {}, f"; sacct failed: {said or f'exit status {proc.returncode}'}"
        return parse_sacct(proc.stdout), " nor in sacct"

    def _squeue(self, cluster: str, numbers: list[str]) -> dict[str, Seen]:
        fmt = ",".join(f"{field}:|" for field in SQUEUE_FIELDS)
        proc = self.run(["squeue", *_on(cluster), "-h", "-t", "all", "-j", ",".join(numbers), "-O", fmt])
        if proc.returncode != 0 and "Invalid job id" in (proc.stderr or ""):
            return {}  # `-j` with a single id slurmctld has already forgotten
        return parse_squeue(self._check(proc, "squeue"))

    def cancel(self, job_id: str) -> None:
        number, cluster = split_id(job_id)
        self._check(self.run(["scancel", *_on(cluster), number]), "scancel")
