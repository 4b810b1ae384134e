"""Local: the job script runs as a background process in its own session on this machine.

The job id is "<pid>.<start time>" so a recycled pid is never mistaken for the job. `hpcbench bench`
records its own process the same way, so status and cancel treat it as a local job.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from hpcbench.schedulers.base import JobState, JobStatus, Scheduler, SchedulerError, Submitted


def _proc_start(pid: int) -> tuple[str, str] | None:
    """(start time in clock ticks, state letter) of a live pid, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    return fields[19], fields[0]


class LocalScheduler(Scheduler):
    kind = "local"
    poll_max_s = 2.0  # a look at /proc costs nothing

    def submit(self, script: Path, *, workdir: Path, pass_env: list[str]) -> Submitted:
        cmd = ["bash", str(script)]
        log = workdir / "logs" / "job.out"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        started = _proc_start(proc.pid)
        if started is None:
            raise SchedulerError(f"the job process {proc.pid} ended at once; see {log}")
        return Submitted(f"{proc.pid}.{started[0]}", cmd)

    @staticmethod
    def this_process() -> str:
        """The id of the calling process, for work it does itself (`hpcbench bench`)."""
        started = _proc_start(os.getpid())
        return f"{os.getpid()}.{started[0] if started else 0}"

    def query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        out = {}
        for job_id in job_ids:
            pid, _, ticks = job_id.partition(".")
            now = _proc_start(int(pid)) if pid.isdigit() else None
            alive = now is not None and now[0] == ticks and now[1] not in ("Z", "X")
            out[job_id] = (JobStatus(job_id, JobState.RUNNING, detail="process alive", source="pid") if alive
                           else JobStatus(job_id, JobState.UNKNOWN, detail="process ended", source="pid"))
        return out

    def cancel(self, job_id: str) -> None:
        pid = job_id.partition(".")[0]
        if self.query([job_id])[job_id].state != JobState.RUNNING:
            return
        try:
            if os.getpgid(int(pid)) == int(pid):
                os.killpg(int(pid), signal.SIGTERM)  # a job's whole session: script, driver, servers
            else:
                os.kill(int(pid), signal.SIGTERM)  # a `hpcbench bench` in someone's shell: that process only
        except ProcessLookupError:
            pass
