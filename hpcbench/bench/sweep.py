"""Run a job's sweep against ready vLLM endpoints: one row per point, one JSON line per request."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Sequence

import msgspec

from hpcbench.bench import client, prompts
from hpcbench.bench.metrics import Sample, point_metrics, summary_ms
from hpcbench.bench.progress import PointProgress
from hpcbench.bench.rows import (Deadline, PointFailed, SweepResult, append_requests, append_row, check_point,
                                 pending_points, provenance, run_points)
from hpcbench.config.job import Job
from hpcbench.config.sweep import SweepPoint
from hpcbench.experiment import Experiment, utc_now
from hpcbench.runtime.engine import POLL_S, http_get, probe

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
SETTLE_S = 2 * POLL_S  # after failed requests: time for a dying engine's process to end


def served_model(endpoint: str, fallback: str) -> str:
    """The name the server answers to (its first /v1/models entry), else the catalog name."""
    try:
        status, body = http_get(endpoint.rstrip("/") + "/v1/models", timeout=10)
        return json.loads(body)["data"][0]["id"] if status == 200 else fallback
    except Exception:
        return fallback


def build_requests(job: Job, exp: Experiment, point: SweepPoint, started: str, model: str, kind: str,
                   n: int) -> list[client.Request]:
    """n requests of the point's run that started at `started`, unique prompts; `kind` (measured,
    warmup) keeps the two sets apart."""
    s = point.scenario
    seed = prompts.point_seed(exp.path.name, started, job.sweep.name, point.point_id, kind)
    if s.api == "chat":
        chats = prompts.chat_prompts(n, point.input_len, prompts.load_tokenizer(job.model_path), seed)
        bodies = [client.chat_body(model, m, point.output_len, s.stream) for m in chats]
    else:
        ids = prompts.usable_token_ids(job.model_path, job.model.vocab)
        bodies = [client.completions_body(model, p, point.output_len, s.stream)
                  for p in prompts.token_prompts(n, point.input_len, ids, seed)]
    return [client.Request(i, b, point.input_len, point.output_len) for i, b in enumerate(bodies)]


def request_record(point_id: str, r: client.Result) -> dict[str, Any]:
    ms = (lambda v: None if v is None else round(v * 1000, 3))
    itl = summary_ms(r.itl)
    return {"point_id": point_id, "index": r.index, "endpoint": r.endpoint, "sent_at": round(r.sent_at, 6),
            "ttft_ms": ms(r.ttft), "latency_ms": ms(r.latency),
            "itl_ms": {"n": len(r.itl), **{k: None if v is None else round(v, 3) for k, v in itl.items()},
                       "max": ms(max(r.itl)) if r.itl else None},
            "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens, "token_events": r.token_events,
            "error": r.error}


def run_point(job: Job, exp: Experiment, point: SweepPoint, endpoints: Sequence[str], model: str,
              stop: threading.Event | None, balancer: client.Balancer,
              alive: Callable[[], bool] | None = None) -> dict[str, Any] | None:
    """Run one point and write it; returns its row, or None when stopped (a stopped point writes
    nothing). Raises PointFailed, writing nothing, when its engine died or no request completed."""
    s = point.scenario
    started = utc_now()
    reqs = build_requests(job, exp, point, started, model, "measured", point.num_requests)
    warm = build_requests(job, exp, point, started, model, "warmup", s.warmup) if s.warmup else []
    bar = PointProgress(point.point_id, len(reqs))
    outcome = client.run(client.run_requests(
        endpoints, PATHS[s.api], reqs, concurrency=point.concurrency, rate=point.request_rate,
        burstiness=s.burstiness, seed=prompts.seed_for(point.point_id, "arrivals"), stream=s.stream,
        timeout_s=s.request_timeout_s, warmup=warm, stop=stop, balancer=balancer,
        on_done=lambda r: bar.update(r.output_tokens, r.ok)))
    bar.close()
    if outcome.stopped:
        return None
    errors = [r.error or "no answer" for r in outcome.results if not r.ok]
    if errors:
        # Requests fail the moment an engine dies; its process may exit seconds later (a launcher
        # wrapping a remote replica later still, and vLLM's API server answers 500 for a while after its
        # engine died): give it that time, then ask the process and every endpoint itself.
        time.sleep(SETTLE_S)
    check_point(point, errors, len(outcome.results), alive)
    down = [e for e in endpoints if not probe(e)] if errors else []
    if down:
        raise PointFailed(f"{len(errors)} request(s) of point {point.point_id} failed and {', '.join(down)} "
                          f"no longer answers; first error: {errors[0]}")
    samples = [Sample(ok=r.ok, prompt_tokens=r.prompt_tokens, output_tokens=r.output_tokens or 0,
                      ttft=r.ttft, latency=r.latency, itl=r.itl,
                      token_events=r.token_events if s.stream else None)
               for r in outcome.results]
    row = provenance(job, exp, point, s.api)
    row.update(started_at=started, finished_at=utc_now())
    row.update(point_metrics(samples, outcome.duration, job.plan.accelerators_held,
                             input_len=point.input_len, output_len=point.output_len,
                             slo=msgspec.structs.asdict(s.slo),
                             achieved_rate=outcome.achieved_rate() if point.request_rate is not None else None))
    if errors:
        print(f"[{point.point_id}] {len(errors)} failed requests; first: {errors[0]}", file=sys.stderr, flush=True)
    append_requests(exp.requests_jsonl, [request_record(point.point_id, r) for r in outcome.results])
    append_row(exp.points_csv, row)
    return row


def run_sweep(job: Job, exp: Experiment, endpoints: list[str], stop: threading.Event | None = None,
              deadline: Deadline | None = None, alive: Callable[[], bool] | None = None) -> SweepResult:
    """Every point of job.sweep not yet done in results/points.csv, against the endpoints (base URLs).
    deadline: no point starts that the previous one says cannot finish by then (the caller's alarm
    sets stop at the deadline itself). alive: whether the engines still run, asked before each write."""
    result, todo = pending_points(job, exp)
    model = job.endpoints.served_model if job.endpoints else served_model(endpoints[0], job.model.name)
    if todo:  # the tokenizer's one-time load must not count in the first point's time (the deadline's estimate)
        prompts.usable_token_ids(job.model_path, job.model.vocab)
    balancer = client.Balancer(endpoints)  # one for the sweep: its per-endpoint counts cover every point
    return run_points(exp, todo, result,
                      lambda point: run_point(job, exp, point, endpoints, model, stop, balancer, alive),
                      stop, deadline)
