"""`hpcbench status`, `hpcbench cancel` and `submit --wait`: what every tracked job is doing.

One scheduler call per site however many jobs are tracked; the scheduler's word is merged with the
job's own exit record (`finished`, written by the batch script's trap), which is all there is on a
Slurm cluster without accounting once a job has left the queue. Light imports only: this runs on
login nodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hpcbench.config.errors import UserError
from hpcbench.experiment import STARTED, Experiment, default_root, elapsed_since, find_experiments
from hpcbench.schedulers.base import JobState, JobStatus, get_scheduler

REASONS = {"completed": JobState.COMPLETED, "failed": JobState.FAILED, "cancelled": JobState.CANCELLED,
           "timeout": JobState.TIMEOUT}


def merge(sched: JobStatus, record: dict | None) -> JobStatus:
    """The scheduler's state, corrected by the job's own exit record where that knows better."""
    if record is None:
        if sched.state == JobState.UNKNOWN:
            return JobStatus(sched.job_id, JobState.UNKNOWN, None,
                             f"{sched.detail}; no exit record (killed before it could write one?)", sched.source)
        return sched
    if record.get("job_id") and str(record["job_id"]).split(".")[0] != sched.job_id.split(".")[0]:
        # Left by an earlier submission of this experiment (a resume), still tearing down: not ours.
        # Ids compare by their sequence number: the local job knows only its pid, PBS ids may be cut.
        return merge(sched, None)
    exit_code = record.get("exit_code")
    said = REASONS.get(str(record.get("reason")), JobState.COMPLETED if exit_code == 0 else JobState.FAILED)
    if sched.state in (JobState.TIMEOUT, JobState.CANCELLED):
        return sched
    if sched.state.terminal and said not in (JobState.TIMEOUT, JobState.CANCELLED):
        return sched
    # Scheduler still finishing the job, forgot it, or only saw a non-zero exit: the job knows why.
    return JobStatus(sched.job_id, said, exit_code, f"exit record: {record.get('reason')}, exit {exit_code}",
                     "record")


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
            answer = {i: JobStatus(i, JobState.UNKNOWN, detail=str(exc), source=kind) for i in ids}
        for exp, job_id in members:
            out[exp.path] = merge(answer.get(job_id, JobStatus(job_id, JobState.UNKNOWN)), exp.finished())
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
    finished = exp.finished() or {}
    total = elapsed_since(started)
    if total is None:
        return "-"
    if finished.get("time"):
        rest = elapsed_since(finished["time"]) or 0
        total -= rest
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
        detail = (phase.get("detail") or "") if st and st.state != JobState.COMPLETED else ""
        out.append(Row(name, record.get("site", "?"), record.get("model", "?"), record.get("nodes", "?"),
                       record.get("job_id", "?"), st.state.value if st else "?", _elapsed(exp), progress(phase),
                       detail or (st.detail if st else "")))
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
    get_scheduler(record["scheduler"], accounting=record.get("accounting", "auto")).cancel(record["job_id"])
    print(f"cancel requested for job {record['job_id']} ({exp.path})")
    return 0


def follow(exp: Experiment, poll_s: float = 2.0, out=sys.stdout) -> int:
    """Print the job's log and phase changes until it ends; 0 if it completed."""
    last_phase = None
    log_pos: dict[Path, int] = {}
    unknown_since: float | None = None
    while True:
        for log in sorted(exp.logs.glob("job*.out")):  # the job's stdout: the driver's progress
            with open(log, errors="replace") as fh:
                fh.seek(log_pos.get(log, 0))
                chunk = fh.read()
                log_pos[log] = fh.tell()
            if chunk:
                out.write(chunk)
                out.flush()
        phase = exp.phase()
        shown = progress(phase)
        if shown != last_phase:
            print(f"[hpcbench] {shown} {phase.get('detail', '')}".rstrip(), file=out, flush=True)
            last_phase = shown
        st = job_states([exp]).get(exp.path)
        if st and st.state.terminal:
            print(f"[hpcbench] job {st.job_id} {st.state.value}" + (f" ({st.detail})" if st.detail else ""),
                  file=out, flush=True)
            return 0 if st.state == JobState.COMPLETED else 1
        if st and st.state == JobState.UNKNOWN:
            unknown_since = unknown_since or time.monotonic()
            if time.monotonic() - unknown_since > 60:
                print(f"[hpcbench] job {st.job_id}: {st.detail}", file=out, flush=True)
                return 1
        else:
            unknown_since = None
        time.sleep(poll_s)
