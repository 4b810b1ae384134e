"""Slurm: sbatch, sacct where accounting exists, squeue where it does not, scancel.

Many clusters run without accounting (`sacct` answers "accounting storage is disabled"); there,
finished jobs vanish from squeue and their outcome comes from the exit record the batch script
writes itself (hpcbench.status merges it in).
"""

from __future__ import annotations

import getpass
from pathlib import Path

from hpcbench.schedulers.base import JobState, JobStatus, Runner, Scheduler, Submitted, run_command

# sacct and squeue state names (long forms) -> ours.
STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED, "REQUEUED": JobState.QUEUED, "REQUEUE_HOLD": JobState.QUEUED,
    "REQUEUE_FED": JobState.QUEUED, "RESV_DEL_HOLD": JobState.QUEUED, "SUSPENDED": JobState.QUEUED,
    "CONFIGURING": JobState.RUNNING, "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING, "SIGNALING": JobState.RUNNING, "RESIZING": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED, "NODE_FAIL": JobState.FAILED, "BOOT_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED, "PREEMPTED": JobState.CANCELLED, "REVOKED": JobState.CANCELLED,
    "CANCELLED": JobState.CANCELLED, "DEADLINE": JobState.TIMEOUT, "TIMEOUT": JobState.TIMEOUT,
}


def _state(name: str) -> JobState:
    # sacct says "CANCELLED by 0"; squeue may add a "+" for requeued states.
    return STATES.get(name.split()[0].rstrip("+") if name else "", JobState.UNKNOWN)


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
        job_id = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
        if not job_id:
            from hpcbench.schedulers.base import SchedulerError

            raise SchedulerError(f"sbatch printed no job id: {out!r}")
        return Submitted(job_id, cmd)

    def query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        if not job_ids:
            return {}
        if self.accounting != "no":
            found = self._sacct(job_ids)
            if found is not None:
                return found
        return self._squeue(job_ids)

    def _sacct(self, job_ids: list[str]) -> dict[str, JobStatus] | None:
        """States from accounting (live and finished jobs alike), or None where accounting is off."""
        from submitit.slurm.slurm import SlurmInfoWatcher

        cmd = ["sacct", "-X", "--parsable2", "-o", "JobID,State,ExitCode", *(f"-j{j}" for j in job_ids)]
        proc = self.run(cmd)
        if proc.returncode != 0 or "accounting storage is disabled" in (proc.stderr + proc.stdout).lower():
            if self.accounting == "yes":
                self._check(proc, "sacct")
            return None
        info = SlurmInfoWatcher().read_info(proc.stdout)
        out = {}
        for job_id in job_ids:
            stats = info.get(job_id)
            if not stats:
                out[job_id] = JobStatus(job_id, JobState.UNKNOWN, detail="not in sacct", source="sacct")
                continue
            code = stats.get("ExitCode", "")
            exit_code = int(code.split(":")[0]) if code.split(":")[0].isdigit() else None
            out[job_id] = JobStatus(job_id, _state(stats.get("State", "")), exit_code, stats.get("State", ""),
                                    "sacct")
        return out

    def _squeue(self, job_ids: list[str]) -> dict[str, JobStatus]:
        # All of this user's live jobs in one call, filtered here: `squeue -j` fails outright when
        # one of the ids has already left the queue.
        cmd = ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T|%r"]
        live = {}
        for line in self._check(self.run(cmd), "squeue").splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                live[parts[0]] = (parts[1], parts[2])
        out = {}
        for job_id in job_ids:
            if job_id in live:
                state, reason = live[job_id]
                detail = state if reason in ("", "None") else f"{state} ({reason})"
                out[job_id] = JobStatus(job_id, _state(state), None, detail, "squeue")
            else:
                out[job_id] = JobStatus(job_id, JobState.UNKNOWN, detail="left the queue", source="squeue")
        return out

    def cancel(self, job_id: str) -> None:
        self._check(self.run(["scancel", job_id]), "scancel")
