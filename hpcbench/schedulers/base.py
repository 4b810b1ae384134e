"""What every scheduler module provides: submit, query (many jobs in one call), cancel.

A scheduler module knows its scheduler and nothing else: no sites, no plans, no experiment layout.
Commands run through `self.run`, so tests can replay recorded output where the real program
cannot run here (PBS Pro).
"""

from __future__ import annotations

import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

from hpcbench.config.errors import UserError

# run(argv, cwd=None): tests pass a replaying runner with the same signature.
Runner = Callable[..., subprocess.CompletedProcess]


class JobState(str, Enum):
    QUEUED = "queued"        # waiting to start (again, after a requeue)
    HELD = "held"            # will not start until someone releases it
    RUNNING = "running"
    COMPLETED = "completed"  # ended with exit code 0
    FAILED = "failed"        # ended non-zero, or could not start
    CANCELLED = "cancelled"  # deleted by a user, queued or running
    TIMEOUT = "timeout"      # killed at its walltime
    UNKNOWN = "unknown"      # the scheduler no longer knows it (see the job's own exit record)

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT)

    @property
    def live(self) -> bool:
        """The scheduler still holds the job: nothing the job wrote earlier can say how it ended."""
        return self in (JobState.QUEUED, JobState.HELD, JobState.RUNNING)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    exit_code: int | None = None
    detail: str = ""         # the scheduler's own words: state name, comment, reason
    source: str = ""         # which command said so: squeue, sacct, qstat, pid, record
    signal: int | None = None  # the signal that ended the job, where the scheduler says so
    # Which attempt the scheduler reports (0 = first run; Slurm's restart count, PBS run_count - 1)
    # and when that attempt started (epoch seconds): an exit record speaks only for its own attempt.
    attempt: int | None = None
    started: float | None = None


def signal_name(number: int) -> str:
    """`9 (SIGKILL)`; just the number where this system has no name for it."""
    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


def local_time(text: str | None, fmt: str) -> float | None:
    """Epoch seconds of a time the scheduler's client printed in this machine's time zone, or None
    for its words for no time (`Unknown`, `N/A`, `None`)."""
    try:
        return time.mktime(time.strptime(" ".join(str(text).split()), fmt))
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class Submitted:
    job_id: str
    command: list[str]


class SchedulerError(UserError):
    """The scheduler refused or failed; carries its own message."""


def run_command(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
    except FileNotFoundError:
        raise SchedulerError(f"{cmd[0]}: command not found (is this a login node of the right cluster?)") from None
    except NotADirectoryError:
        raise SchedulerError(f"cannot submit from {cwd}: not a directory") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{' '.join(cmd[:2])} did not answer within 120 s") from None


class Scheduler(ABC):
    kind: str = ""
    # The longest pause between two queries while following a job: scheduler daemons serve a whole
    # cluster, so a waiting client asks rarely (reading the job's own files costs them nothing).
    poll_max_s: float = 30.0

    def __init__(self, run: Runner = run_command) -> None:
        self.run = run

    @abstractmethod
    def submit(self, script: Path, *, workdir: Path, pass_env: list[str]) -> Submitted:
        """Submit script (run in workdir); pass_env: variable names handed over from the submitting
        environment by name (secrets), never written anywhere."""

    @abstractmethod
    def query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """States of many jobs with one scheduler call; ids the scheduler forgot map to UNKNOWN."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Ask the scheduler to end the job."""

    def _check(self, proc: subprocess.CompletedProcess, what: str) -> str:
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
            raise SchedulerError(f"{what} failed: {msg}")
        return proc.stdout


def get_scheduler(kind: str, run: Runner = run_command, accounting: str = "auto") -> Scheduler:
    """The scheduler module for kind; accounting (auto|yes|no) matters to Slurm only."""
    if kind == "slurm":
        from hpcbench.schedulers.slurm import SlurmScheduler

        return SlurmScheduler(run, accounting)
    if kind == "pbs":
        from hpcbench.schedulers.pbs import PBSScheduler

        return PBSScheduler(run)
    if kind == "local":
        from hpcbench.schedulers.local import LocalScheduler

        return LocalScheduler(run)
    raise UserError(f"unknown scheduler {kind!r} (expected pbs, slurm or local)")
