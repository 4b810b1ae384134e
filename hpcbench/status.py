"""`hpcbench status`, `hpcbench cancel` and `submit --wait`: what every tracked job is doing.

One scheduler call per site (per Slurm cluster) however many jobs are tracked; the scheduler's word
is merged with the job's own exit record (`finished`, written by the batch script), which is all
there is on a Slurm cluster without accounting once a job has left the queue. Light imports only:
this runs on login nodes.
"""

from __future__ import annotations

import argparse
import calendar
import json
import re
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from hpcbench.config.errors import UserError
from hpcbench.experiment import PHASE, STARTED, Experiment, default_root, elapsed_since, find_experiments
from hpcbench.schedulers.base import JobState, JobStatus, get_scheduler

REASONS = {"completed": JobState.COMPLETED, "failed": JobState.FAILED, "cancelled": JobState.CANCELLED,
           "timeout": JobState.TIMEOUT}
NO_ANSWER = "no answer"  # JobStatus.source when the scheduler could not be asked at all
# A record may start this much before the scheduler's start of the same attempt: the clocks of the
# compute nodes and of the scheduler's server differ a little. Attempts are minutes apart.
CLOCK_SLACK_S = 10.0
# A job last seen alive this close to its walltime deadline was ended by the walltime (the batch
# script's own rule for its exit record).
WALLTIME_MARGIN_S = 60.0


def _utc(stamp: Any) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(str(stamp).strip(), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ExitRecord:
    """The job's own exit record (`finished`, see docs/experiments.md): one per attempt, provisional
    (final false, reason running) from the attempt's start until the job ends. Records written before
    attempts were recorded lack final, attempt, attempt_started and deadline: they are final."""

    reason: str
    exit_code: int | None
    final: bool = True
    job_id: str = ""
    attempt: int | None = None
    attempt_started: float | None = None
    deadline: float | None = None
    time: float | None = None
    signal: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ExitRecord:
        return cls(str(data.get("reason") or ""), _int(data.get("exit_code")), data.get("final", True) is not False,
                   str(data.get("job_id") or ""), _int(data.get("attempt")), _utc(data.get("attempt_started")),
                   _utc(data.get("deadline")), _utc(data.get("time")), data.get("signal") or None)

    @property
    def state(self) -> JobState:
        return REASONS.get(self.reason, JobState.COMPLETED if self.exit_code == 0 else JobState.FAILED)

    @property
    def signal_number(self) -> int | None:
        try:
            return int(signal.Signals[f"SIG{self.signal}"]) if self.signal else None
        except KeyError:
            return None

    def describe(self) -> str:
        said = f"exit record: {self.reason}, exit {self.exit_code}"
        return said + (f" after SIG{self.signal}" if self.signal else "")


def exit_record(exp: Experiment) -> ExitRecord | None:
    """The experiment's exit record, or None while there is none (not started yet, or resubmitted)."""
    data = exp.finished()
    return ExitRecord.parse(data) if isinstance(data, dict) else None


def last_sign_of_life(exp: Experiment) -> float | None:
    """When the job last wrote anything we know of (its logs, its phase): a bound on when it died."""
    paths = [exp.file(PHASE), *(exp.logs.iterdir() if exp.logs.is_dir() else [])]
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times, default=None)


def _sequence(job_id: str) -> str:
    # `123.aurora-pbs-0001...` (PBS, may be cut), `4242.998877` (local: pid.ticks), `123;cl2` (Slurm).
    return re.split(r"[.;]", str(job_id), maxsplit=1)[0]


def _same_attempt(sched: JobStatus, record: ExitRecord) -> bool:
    """Whether the record was written by the attempt the scheduler reports; any agreeing evidence
    suffices (PBS jobs cannot know their run count, so their records carry no attempt)."""
    checks = []
    if sched.attempt is not None and record.attempt is not None:
        checks.append(sched.attempt == record.attempt)
    if sched.started is not None and record.attempt_started is not None:
        checks.append(record.attempt_started >= sched.started - CLOCK_SLACK_S)
    return not checks or any(checks)


def merge(sched: JobStatus, record: ExitRecord | None, last_seen: float | None = None,
          now: float | None = None) -> JobStatus:
    """The scheduler's state, completed by the job's own exit record where that knows more.

    A live state (queued, held, running) always stands: a requeued job runs again in the same
    directory, where its previous attempt's record lies. A record speaks only for its own job and
    attempt. last_seen: when the job last wrote a file (see last_sign_of_life)."""
    if sched.state.live:
        return sched
    if record is not None and (record.job_id and _sequence(record.job_id) != _sequence(sched.job_id)
                               or not _same_attempt(sched, record)):
        record = None  # left by an earlier submission (a resume) or an earlier attempt (a requeue)
    if record is None:
        if sched.state == JobState.UNKNOWN and sched.source != NO_ANSWER:
            return replace(sched, detail=f"{sched.detail}; no exit record (killed before it could write one?)")
        return sched
    if not record.final:
        return _provisional(sched, record, last_seen, time.time() if now is None else now)
    said = record.state
    if sched.state in (JobState.TIMEOUT, JobState.CANCELLED):
        return sched
    if sched.state.terminal and said not in (JobState.TIMEOUT, JobState.CANCELLED):
        return sched
    # Scheduler forgot the job, or only saw a non-zero exit: the job knows why.
    return replace(sched, state=said, exit_code=record.exit_code, detail=record.describe(), source="record",
                   signal=record.signal_number)


def _provisional(sched: JobStatus, record: ExitRecord, last_seen: float | None, now: float) -> JobStatus:
    """The attempt started and wrote no final record: it still runs, or it was killed outright."""
    if sched.state.terminal:
        return sched  # the scheduler knows how it ended (a signal, a node failure)
    started = _stamp(record.attempt_started) if record.attempt_started else "?"
    if sched.source == NO_ANSWER:
        return replace(sched, detail=f"{sched.detail}; its exit record says it started at {started} "
                                     "and has not ended")
    died = min(last_seen, now) if last_seen is not None else now
    if record.deadline is not None and died >= record.deadline - WALLTIME_MARGIN_S:
        return replace(sched, state=JobState.TIMEOUT, source="record",
                       detail=f"{sched.detail}; reached its walltime ({_stamp(record.deadline)}) and was "
                              "killed before it could write its final exit record")
    return replace(sched, state=JobState.FAILED, source="record",
                   detail=f"{sched.detail}; killed before it could write its final exit record (attempt started "
                          f"{started}, last output {_stamp(died)}): node failure, out of memory or SIGKILL?")


def job_states(exps: list[Experiment]) -> dict[Path, JobStatus]:
    """Merged states of submitted experiments, one scheduler query per (scheduler, accounting)."""
    groups: dict[tuple[str, str], list[tuple[Experiment, str]]] = defaultdict(list)
    for exp in exps:
        record = exp.submit_record() or {}
        if record.get("job_id"):
            groups[(record.get("scheduler", ""), record.get("accounting", "auto"))].append((exp, record["job_id"]))
    out: dict[Path, JobStatus] = {}
    for (kind, accounting), members in groups.items():
        ids = [job_id for _, job_id in members]
        try:
            answer = get_scheduler(kind, accounting=accounting).query(ids)
        except UserError as exc:  # scheduler down or absent: still show what the records say
            answer = {i: JobStatus(i, JobState.UNKNOWN, detail=str(exc), source=NO_ANSWER) for i in ids}
        for exp, job_id in members:
            out[exp.path] = merge(answer.get(job_id, JobStatus(job_id, JobState.UNKNOWN)), exit_record(exp),
                                  last_sign_of_life(exp))
    return out


@dataclass
class Row:
    experiment: str
    site: str
    model: str
    nodes: int | str
    job_id: str
    state: str
    elapsed: str
    progress: str
    detail: str

    @property
    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _elapsed(exp: Experiment) -> str:
    try:
        started = exp.file(STARTED).read_text().strip()
    except OSError:
        return "-"
    record = exit_record(exp)
    total = elapsed_since(started)
    if total is None:
        return "-"
    if record and record.final and record.time:  # a provisional record's time is its attempt's start
        total -= max(time.time() - record.time, 0)
    minutes, seconds = divmod(int(max(total, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def progress(phase: dict) -> str:
    """A phase record (Experiment.phase()) as the PROGRESS column shows it."""
    if not phase:
        return "-"
    text = phase.get("phase", "?")
    if phase.get("total"):
        text += f" {phase.get('done', 0)}/{phase['total']} points"
    return text


def _detail(st: JobStatus | None, phase: dict) -> str:
    """The job's own words while it runs, or when its driver said why it failed; else the scheduler's
    (why it waits or is held, how it ended): a phase left behind by a killed job is stale."""
    if st is None:
        return ""
    said = phase.get("detail") or ""
    if st.state == JobState.RUNNING or (st.state.terminal and st.state != JobState.COMPLETED
                                        and phase.get("phase") == "failed"):
        return said or st.detail
    return st.detail


def rows(exps: list[Experiment], root: Path | None) -> list[Row]:
    states = job_states(exps)
    out = []
    for exp in exps:
        record = exp.submit_record()
        if not record:
            continue
        st = states.get(exp.path)
        name = str(exp.path.relative_to(root.absolute())) if root and exp.path.is_relative_to(root.absolute()) \
            else str(exp.path)
        phase = exp.phase()
        out.append(Row(name, record.get("site", "?"), record.get("model", "?"), record.get("nodes") or "?",
                       record.get("job_id", "?"), st.state.value if st else "?", _elapsed(exp), progress(phase),
                       _detail(st, phase)))
    return out


def _roots(args: argparse.Namespace) -> list[Path]:
    return list(args.root) if getattr(args, "root", None) else [default_root()]


def status(args: argparse.Namespace) -> int:
    roots = _roots(args)
    table = rows(find_experiments(roots), roots[0] if len(roots) == 1 else None)
    if args.json:
        print(json.dumps([r.as_dict for r in table], indent=2))
        return 0
    if not table:
        print(f"no submitted experiments under {', '.join(map(str, roots))}")
        return 0
    cols = ["experiment", "site", "model", "nodes", "job_id", "state", "elapsed", "progress", "detail"]
    widths = {c: max(len(c), *(len(str(getattr(r, c))) for r in table)) for c in cols[:-1]}
    print("  ".join(c.upper().ljust(widths.get(c, 0)) for c in cols).rstrip())
    for r in table:
        print("  ".join(str(getattr(r, c)).ljust(widths.get(c, 0)) for c in cols).rstrip())
    return 0


def _find(target: str, roots: list[Path]) -> Experiment:
    path = Path(target)
    if (path / "submit.json").is_file():
        return Experiment(path.absolute())
    for exp in find_experiments(roots):
        if (exp.submit_record() or {}).get("job_id") == target:
            return exp
    raise UserError(f"no tracked experiment is {target!r} (an experiment directory or a job id under "
                    f"{', '.join(map(str, roots))})")


def cancel(args: argparse.Namespace) -> int:
    exp = _find(args.target, _roots(args))
    record = exp.submit_record() or {}
    if not isinstance(record.get("scheduler"), str) or not isinstance(record.get("job_id"), str):
        raise UserError(f"{exp.file('submit.json')} names no scheduler and job id (damaged or edited by hand); "
                        "cancel the job with the scheduler's own command")
    get_scheduler(record["scheduler"], accounting=record.get("accounting", "auto")).cancel(record["job_id"])
    print(f"cancel requested for job {record['job_id']} ({exp.path})")
    return 0


@dataclass
class QuerySchedule:
    """When a follower asks the scheduler: at once, then after a pause that grows with the job's age
    (half of it, between poll_s and max_s, as submitit's watcher does), and at once on news (the job's
    final exit record appeared: the scheduler is asked to confirm the end)."""

    born: float  # when the job was submitted (or last gave news), on the follower's clock
    poll_s: float
    max_s: float
    last: float | None = None

    def pause(self, now: float) -> float:
        return min(self.max_s, max(self.poll_s, (now - self.born) / 2))

    def due(self, now: float, news: bool = False) -> bool:
        return self.last is None or news or now - self.last >= self.pause(now)


class _Tail:
    """Prints what the job's stdout logs and its phase record add, as they grow."""

    def __init__(self, exp: Experiment, out: TextIO) -> None:
        self.exp, self.out = exp, out
        self.pos: dict[Path, int] = {}
        self.phase: str | None = None

    def show(self) -> None:
        for log in sorted(self.exp.logs.glob("job*.out")):  # the job's stdout: the driver's progress
            with open(log, errors="replace") as fh:
                fh.seek(self.pos.get(log, 0))
                chunk = fh.read()
                self.pos[log] = fh.tell()
            if chunk:
                self.out.write(chunk)
                self.out.flush()
        phase = self.exp.phase()
        shown = progress(phase)
        if shown != self.phase:
            self.say(f"{shown} {phase.get('detail', '')}".rstrip())
            self.phase = shown

    def say(self, text: str) -> None:
        print(f"[hpcbench] {text}", file=self.out, flush=True)


def _may_still_run(st: JobStatus, record: ExitRecord | None) -> bool:
    """While the scheduler cannot be asked, the job may run on until its walltime is over."""
    if st.source != NO_ANSWER:
        return False
    if record is None or record.deadline is None:
        return True
    return time.time() < record.deadline + WALLTIME_MARGIN_S


def _ending(st: JobStatus, tail: _Tail) -> int | None:
    """The exit status of the wait if this state ends it: the job ended, or it is held."""
    if st.state.terminal:
        tail.say(f"job {st.job_id} {st.state.value}" + (f" ({st.detail})" if st.detail else ""))
        return 0 if st.state == JobState.COMPLETED else 1
    if st.state == JobState.HELD:
        tail.say(f"job {st.job_id} is held: {st.detail}. It stays tracked (hpcbench status).")
        return 1
    return None


def follow(exp: Experiment, poll_s: float = 2.0, out: TextIO = sys.stdout, poll_max_s: float | None = None) -> int:
    """Print the job's log and phase changes until it ends; 0 if it completed, 1 otherwise.

    The job's files are read every poll_s; the scheduler is asked on a QuerySchedule (at most once
    per its poll_max_s once the job is old), which starts afresh when the job's final exit record
    appears (the scheduler says the job ended a few seconds after the job does). A held job ends the wait (it needs someone to release it).
    A job the scheduler does not know and that wrote no exit record is given up after
    max(60 s, 20 pauses); while the scheduler cannot be asked, the wait goes on as long as the job
    may still run."""
    submitted = exp.submit_record() or {}
    max_s = poll_max_s if poll_max_s is not None else get_scheduler(submitted.get("scheduler", "")).poll_max_s
    schedule = QuerySchedule(time.monotonic() - (elapsed_since(submitted.get("submitted")) or 0.0), poll_s, max_s)
    give_up_s = max(60.0, 20 * max_s)
    tail = _Tail(exp, out)
    confirmed: ExitRecord | None = None
    unknown_since: float | None = None
    said = ""
    while True:
        tail.show()
        record = exit_record(exp)
        final = record if record and record.final else None
        now = time.monotonic()
        news = final is not None and final != confirmed
        if news:
            schedule.born = now
        if schedule.due(now, news):
            schedule.last, confirmed = now, final
            st = job_states([exp]).get(exp.path) or JobStatus("?", JobState.UNKNOWN, detail="no job id")
            code = _ending(st, tail)
            if code is not None:
                return code
            if st.state != JobState.UNKNOWN or _may_still_run(st, record):
                unknown_since = None
            else:
                unknown_since = now if unknown_since is None else unknown_since
                if st.source == NO_ANSWER or now - unknown_since >= give_up_s:
                    tail.say(f"job {st.job_id}: {st.detail}; giving up the wait (hpcbench status still tracks it)")
                    return 1
            if st.state == JobState.UNKNOWN and st.detail != said:
                tail.say(f"job {st.job_id}: {st.detail}")
            said = st.detail
        time.sleep(poll_s)
