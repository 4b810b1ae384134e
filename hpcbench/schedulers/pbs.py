"""PBS Pro / OpenPBS: qsub, one `qstat -f -F json -x` for all ids, qdel.

Facts this relies on (PBS Pro 2022 on ALCF systems, OpenPBS 23):
- `qsub` prints one line, the job id (`6617175.aurora-pbs-0001.hostmgmt.cm.aurora.alcf.anl.gov`, `1.pbs`).
- `qstat -x` includes finished jobs (state F) while the server keeps their history; ids already
  purged give `qstat: Unknown Job Id <id>` on stderr (exit 153) while the others still come on stdout.
- Finished jobs: substate 91 deleted, 92 finished, 93 failed; Exit_status -29 is walltime, >= 256 is
  256 + signal, other negatives are PBS's own JOB_EXEC_* codes.
- A held job (H) says who holds it in Hold_Types (u user, o operator, s system, p password); `qrls`
  releases a user hold, the others need a PBS operator or manager.
- A job that is run again (node failure, `qrerun`, failed starts) keeps its id: `run_count` counts its
  starts and `stime` is when the latest one began, printed by qstat in this machine's time zone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from hpcbench.schedulers.base import (JobState, JobStatus, Scheduler, SchedulerError, Submitted, local_time,
                                      signal_name)

_STATE_NAMES = {
    "Q": "queued", "H": "held", "W": "waiting for its start time", "T": "in transit",
    "S": "suspended", "U": "suspended (workstation busy)", "B": "array begun", "R": "running",
    "E": "exiting", "F": "finished", "X": "subjob finished", "M": "moved to another server",
}
_WAITING = {"Q", "W", "T", "S", "U"}
_HELD = "H"
# An array is "B" as soon as one subjob started: it is running, not waiting.
_ACTIVE = {"R", "E", "B"}
_DONE = {"F", "X"}

_SUBSTATE_DELETED, _SUBSTATE_FINISHED = 91, 92
_EXIT_WALLTIME = -29
_EXIT_MEANINGS = {
    -1: "could not start", -2: "could not start", -3: "start failed, retry", -11: "rerun",
    -24: "ncpus burst limit exceeded", -25: "ncpus limit exceeded", -26: "vmem limit exceeded",
    -27: "mem limit exceeded", -28: "cput limit exceeded", -29: "walltime exceeded",
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIME = "%a %b %d %H:%M:%S %Y"  # stime as qstat prints it: "Thu Nov  9 13:05:50 2023"


def parse_qstat_json(text: str) -> dict[str, JobStatus]:
    """`qstat -f -F json [-x]` stdout -> status per job, keyed by the full id qstat printed."""
    return {job_id: _status(job_id, attrs) for job_id, attrs in _load_jobs(text).items()}


class PBSScheduler(Scheduler):
    kind = "pbs"

    def submit(self, script: Path, *, workdir: Path, pass_env: list[str]) -> Submitted:
        # Relative to where the caller stands, not to workdir.
        script = Path(script).absolute()
        cmd = ["qsub"]
        names = _names_to_pass(pass_env)
        if names:
            # Names only: qsub copies the values from its own environment, so no secret
            # reaches an argv (visible in ps) or a file.
            cmd += ["-v", ",".join(names)]
        cmd.append(str(script))
        # PBS Pro has no option for the submit directory: PBS_O_WORKDIR and relative -o/-e paths
        # come from qsub's cwd.
        if not Path(workdir).is_dir():
            raise SchedulerError(f"cannot submit from {workdir}: no such directory")
        proc = self.run(cmd, cwd=Path(workdir))
        if proc.returncode != 0:
            raise SchedulerError(_message("qsub", proc.stderr or proc.stdout, proc.returncode))
        lines = [line.strip() for line in (proc.stdout or "").splitlines() if line.strip()]
        if not lines:
            raise SchedulerError(f"qsub printed no job id for {script}")
        # The id is the last line; site hooks may print notices before it.
        return Submitted(job_id=lines[-1], command=cmd)

    def query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return {}
        proc = self.run(["qstat", "-f", "-F", "json", "-x", *wanted])
        stderr_lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
        try:
            found = parse_qstat_json(proc.stdout or "")
        except SchedulerError:
            if proc.returncode != 0:
                raise SchedulerError(_message("qstat", proc.stderr, proc.returncode)) from None
            raise
        if not found and proc.returncode != 0 and not all("Unknown Job Id" in line for line in stderr_lines):
            # Nothing parsed and not merely forgotten ids: the server did not answer; saying UNKNOWN
            # here would make live jobs look lost.
            raise SchedulerError(_message("qstat", proc.stderr or proc.stdout, proc.returncode))
        out: dict[str, JobStatus] = {}
        for wanted_id in wanted:
            key = _match(wanted_id, found)
            if key is None:
                said = next((line for line in stderr_lines if wanted_id in line), "")
                out[wanted_id] = JobStatus(wanted_id, JobState.UNKNOWN,
                                           detail=said or "not in qstat -x output", source="qstat")
            else:
                out[wanted_id] = dataclasses.replace(found[key], job_id=wanted_id)
        return out

    def cancel(self, job_id: str) -> None:
        proc = self.run(["qdel", job_id])
        if proc.returncode == 0:
            return
        text = f"{proc.stderr or ''}\n{proc.stdout or ''}"
        if "Job has finished" in text:
            return  # already over: nothing left to end
        raise SchedulerError(_message("qdel", text, proc.returncode))


def _names_to_pass(pass_env: list[str]) -> list[str]:
    names: list[str] = []
    for name in pass_env:
        # "A=b" or "A,B" would turn the name list into value assignments on the command line.
        if not _NAME.fullmatch(name):
            raise SchedulerError(f"cannot pass environment variable {name!r}: not a variable name")
        if name in os.environ and name not in names:
            names.append(name)
    return names



def _message(command: str, text: str | None, returncode: int) -> str:
    msg = (text or "").strip() or f"exit status {returncode}"
    # qsub/qstat/qdel already start their messages with their own name.
    return msg if msg.startswith(f"{command}:") else f"{command}: {msg}"


# --- parsing ---------------------------------------------------------------------------------------

def _load_jobs(text: str) -> dict[str, dict[str, Any]]:
    if not text.strip():
        return {}
    for candidate in (text, _repair(text)):
        try:
            return _decode_all(candidate)
        except ValueError:
            continue
    jobs = _scan_lines(text)
    if not jobs:
        raise SchedulerError(f"qstat printed something that is not job JSON: {text.strip()[:200]!r}")
    return jobs


def _decode_all(text: str) -> dict[str, dict[str, Any]]:
    # strict=False: older qstat versions leave raw tabs/newlines inside strings. Several documents
    # can follow each other when ids belong to several servers.
    decoder = json.JSONDecoder(strict=False)
    jobs: dict[str, dict[str, Any]] = {}
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return jobs
        doc, pos = decoder.raw_decode(text, pos)
        if not isinstance(doc, dict):
            raise ValueError("not a qstat JSON document")
        jobs.update(doc.get("Jobs") or {})


_ESCAPE = re.compile(r'\\(["\\/bfnrt]|u[0-9a-fA-F]{4})?')
_BAD_NUMBER = re.compile(r'^(\s*"[^"\n]*":\s*)(\d[^,\n]*?)(,?)\s*$', re.M)


def _repair(text: str) -> str:
    """Undo the known qstat JSON bugs: `\\'` and `\\,` copied from Variable_List (openpbs PR 2049,
    seen on Polaris), and values like `005` printed as bare numbers (openpbs issue 1255)."""
    text = _ESCAPE.sub(lambda m: m.group(0) if m.group(1) else r"\\", text)

    def quote(m: re.Match[str]) -> str:
        try:
            json.loads(m.group(2))
            return m.group(0)
        except ValueError:
            return f"{m.group(1)}{json.dumps(m.group(2))}{m.group(3)}"

    return _BAD_NUMBER.sub(quote, text)


_JOB_HEADER = re.compile(r'^\s*"(\d+(?:\[\d*\])?(?:\.[^"]*)?)"\s*:\s*\{\s*$')
_FIELD = re.compile(r'^\s*"(job_state|substate|Exit_status|comment)"\s*:\s*(.*?)\s*,?\s*$')


def _scan_lines(text: str) -> dict[str, dict[str, Any]]:
    """Last resort for JSON that even _repair cannot mend: qstat writes one attribute per line, and
    only job ids open objects with a key starting with a digit."""
    jobs: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        header = _JOB_HEADER.match(line)
        if header:
            current = jobs.setdefault(header.group(1), {})
            continue
        field = _FIELD.match(line)
        if field and current is not None and field.group(1) not in current:
            raw = field.group(2)
            try:
                current[field.group(1)] = json.loads(raw, strict=False)
            except ValueError:
                current[field.group(1)] = raw.strip('"')
    return jobs


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _status(job_id: str, attrs: dict[str, Any]) -> JobStatus:
    code = str(attrs.get("job_state", "")).strip()
    substate = _int(attrs.get("substate"))
    exit_status = _int(attrs.get("Exit_status"))
    comment = str(attrs.get("comment") or "").strip()
    head = f"{code} {_STATE_NAMES.get(code, 'unknown state')}"
    runs = _int(attrs.get("run_count"))
    attempt = runs - 1 if runs else None
    started = local_time(attrs.get("stime"), _TIME)

    def status(state: JobState, exit_code: int | None = None, extra: str = "", tail: str = "") -> JobStatus:
        detail = head + (f", {extra}" if extra else "") + (f": {comment}" if comment else "") + tail
        sig = exit_code - 256 if exit_code is not None and exit_code > 256 else None  # 256 + signal
        return JobStatus(job_id, state, exit_code, detail, "qstat", sig, attempt, started)

    if code in _WAITING or code == _HELD:
        # A held job may carry the Exit_status of its failed starts (-3): it explains the hold.
        extra = f"Exit_status {exit_status} ({_meaning(exit_status)})" if exit_status is not None else ""
        if code == _HELD:
            return status(JobState.HELD, extra=extra, tail=_release(job_id, str(attrs.get("Hold_Types") or "")))
        return status(JobState.QUEUED, extra=extra)
    if code in _ACTIVE:
        return status(JobState.RUNNING)
    if code not in _DONE:
        return status(JobState.UNKNOWN)

    extra = f"Exit_status {exit_status} ({_meaning(exit_status)})" if exit_status is not None else "no Exit_status"
    if substate == _SUBSTATE_DELETED or comment.endswith("and terminated"):
        # qdel: while queued there is no Exit_status at all; while running 271 (SIGTERM) or 265 (SIGKILL).
        return status(JobState.CANCELLED, exit_status, extra)
    if exit_status == _EXIT_WALLTIME or "exceeded resource walltime" in comment:
        # Older PBS versions reported a walltime kill as 271; the comment still says so.
        return status(JobState.TIMEOUT, exit_status, extra)
    if exit_status == 0 or (exit_status is None and substate == _SUBSTATE_FINISHED):
        return status(JobState.COMPLETED, exit_status, extra)
    return status(JobState.FAILED, exit_status, extra)


def _release(job_id: str, hold_types: str) -> str:
    """How to release a held job: `qrls` for a user hold; other holds are the site's to lift."""
    others = sorted(set(hold_types) - {"u", "n"})
    hint = f"; release it with `qrls {job_id}`"
    return hint + (f" (Hold_Types {hold_types}: only a PBS operator or manager can)" if others else "")


def _meaning(exit_status: int) -> str:
    if exit_status == 0:
        return "success"
    if exit_status >= 256:
        return f"killed by signal {signal_name(exit_status - 256)}"
    if exit_status < 0:
        return _EXIT_MEANINGS.get(exit_status, "PBS could not run or finish the job")
    return "job script exit code"


def _match(wanted: str, found: dict[str, JobStatus]) -> str | None:
    """qstat's keys are full names; the caller may hold `123`, `123.aurora-pbs-0001` or the table's
    truncated `123.aurora-*`. Same sequence number and a server part that is a prefix of the other
    (by dot-separated labels) is the same job."""
    if wanted in found:
        return wanted
    seq, _, server = wanted.partition(".")
    hits = []
    for key in found:
        key_seq, _, key_server = key.partition(".")
        if key_seq == seq and _same_server(server, key_server):
            hits.append(key)
    return hits[0] if len(hits) == 1 else None  # two servers with the same number: do not guess


def _same_server(a: str, b: str) -> bool:
    if not a or not b:
        return True
    if a.endswith("*"):
        return b.startswith(a[:-1])
    if b.endswith("*"):
        return a.startswith(b[:-1])
    la, lb = a.split("."), b.split(".")
    n = min(len(la), len(lb))
    return la[:n] == lb[:n]
