"""The experiment directory: its layout, its records and markers, and safe writes.

Layout (one directory per submitted job)::

    <root>/<site>/<model>/<UTC timestamp>-<id>/
        job.sh              the rendered batch script, exactly as submitted
        config.yaml         everything resolved (site, model, plan, sweep, ports, timeouts)
        submit.json         scheduler, job id, the exact submit command, submit time
        phase.json          where the job is: ray, loading, ready, sweeping (k of n), done, failed
        started             marker: the job began (UTC time inside)
        finished            marker: JSON {"exit_code", "reason", "time"}; written by the job's trap
        provenance.json     nodes, accelerators, versions, engine command, environment (allow-listed)
        logs/               one file per node daemon, per server, the driver and the client
        results/points.csv  one row per sweep point (see hpcbench.results)
        results/requests.jsonl  one JSON line per request

Files are written atomically (temp file + rename) or appended as whole, flushed lines, so a job killed
at any moment never leaves a half-written record.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
JOB_SCRIPT = "job.sh"
SUBMIT = "submit.json"
PHASE = "phase.json"
STARTED = "started"
FINISHED = "finished"
PROVENANCE = "provenance.json"
LOGS = "logs"
RESULTS = "results"
POINTS_CSV = "results/points.csv"
REQUESTS_JSONL = "results/requests.jsonl"

# Phases in the order a healthy job passes them; "failed" can follow any of them.
PHASES = ("submitted", "starting", "ray", "loading", "ready", "sweeping", "done", "failed")


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_root() -> Path:
    """Where experiments go when no --root is given: $HPCBENCH_ROOT, else ./hpcbench-runs (an empty
    HPCBENCH_ROOT counts as unset: it must not make the current folder the root)."""
    return Path(os.environ.get("HPCBENCH_ROOT") or "hpcbench-runs")


def atomic_write(path: Path, text: str) -> None:
    """Write text to path so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; colleagues on the project should read results
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any | None:
    """The JSON in path, or None when the file is missing or not (yet) valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _mapping(data: Any) -> dict[str, Any] | None:
    # A record edited by hand or cut short may hold any JSON; readers index it as a mapping.
    return data if isinstance(data, dict) else None


def append_line(path: Path, line: str) -> None:
    """Append one whole line and flush it to disk (one write call, so no half rows)."""
    if "\n" in line:
        raise ValueError("append_line takes a single line")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@dataclass(frozen=True)
class Experiment:
    """A handle on one experiment directory; every path in it is named here and nowhere else."""

    path: Path

    @classmethod
    def allocate(cls, root: Path, site: str, model: str) -> "Experiment":
        """A new, not yet created directory name; create() makes it once the job is known to be valid."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return cls((Path(root) / site / model / f"{stamp}-{secrets.token_hex(3)}").absolute())

    def create(self) -> "Experiment":
        (self.path / LOGS).mkdir(parents=True)
        (self.path / RESULTS).mkdir()
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    @property
    def points_csv(self) -> Path:
        return self.path / POINTS_CSV

    @property
    def requests_jsonl(self) -> Path:
        return self.path / REQUESTS_JSONL

    def set_phase(self, phase: str, detail: str = "", **extra: Any) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        write_json(self.path / PHASE, {"phase": phase, "detail": detail, "time": utc_now(), **extra})

    def phase(self) -> dict[str, Any]:
        return _mapping(read_json(self.path / PHASE)) or {}

    def submit_record(self) -> dict[str, Any] | None:
        """What submit recorded (None when missing or damaged: a record is a JSON mapping)."""
        record = _mapping(read_json(self.path / SUBMIT))
        return record if record is not None and isinstance(record.get("job_id", ""), str) else None

    def finished(self) -> dict[str, Any] | None:
        """The job's own exit record, written by the batch script's trap (None while it runs)."""
        return _mapping(read_json(self.path / FINISHED))

    def mark_started(self) -> None:
        atomic_write(self.path / STARTED, utc_now() + "\n")


def find_experiments(roots: list[Path]) -> list[Experiment]:
    """Every experiment directory (one holding config.yaml) under the roots, oldest first."""
    found: dict[Path, Experiment] = {}
    for root in roots:
        root = Path(root)
        if (root / CONFIG).is_file():
            found[root.resolve()] = Experiment(root.resolve())
            continue
        for cfg in root.glob(f"**/{CONFIG}"):
            found[cfg.parent.resolve()] = Experiment(cfg.parent.resolve())
    return sorted(found.values(), key=lambda e: (e.path.name, str(e.path)))


def elapsed_since(stamp: str | None) -> float | None:
    """Seconds since a utc_now() stamp, or None."""
    if not stamp:
        return None
    try:
        then = datetime.strptime(stamp.strip(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return time.time() - then.timestamp()
