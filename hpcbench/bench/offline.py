"""Offline throughput (ALCF benchmark_fom.py): vllm.LLM in-process, batches of exact-length prompts.

throughput = (input + output tokens) x batch / elapsed. The caller must be a `__main__`-guarded script
or `python -m` module: vLLM spawns worker processes.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from hpcbench.bench import prompts
from hpcbench.bench.metrics import Sample, point_metrics
from hpcbench.bench.rows import (Deadline, SweepResult, append_requests, append_row, check_point, pending_points,
                                 provenance, run_points)
from hpcbench.config.job import Job
from hpcbench.config.sweep import SweepPoint
from hpcbench.engine_config import offline_kwargs
from hpcbench.experiment import Experiment, utc_now


def make_llm(job: Job) -> Any:
    """vllm.LLM with the job's engine settings: its engine command line read by vLLM's own parser
    (hpcbench.engine_config), so offline and served runs of one plan are configured alike."""
    from vllm import LLM

    return LLM(**offline_kwargs(job.engine_args))


def _generate(llm: Any, batch: list[list[int]], output_len: int) -> tuple[list[Any], float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    sp = SamplingParams(max_tokens=output_len, min_tokens=output_len, ignore_eos=True, temperature=0.0)
    inputs = [TokensPrompt(prompt_token_ids=ids) for ids in batch]
    t0 = time.perf_counter()
    outs = llm.generate(inputs, sp, use_tqdm=False)
    return outs, time.perf_counter() - t0


def run_offline_point(job: Job, exp: Experiment, llm: Any, point: SweepPoint, ids: list[int],
                      stop: threading.Event | None = None) -> dict[str, Any] | None:
    """Batches of `concurrency` prompts until num_requests are done; one row. None when stopped between
    batches (nothing written); PointFailed when no batch succeeded (nothing written)."""
    started = utc_now()
    batch = point.concurrency or 1
    seed = prompts.point_seed(exp.path.name, started, job.sweep.name, point.point_id, "measured")
    all_prompts = prompts.token_prompts(point.num_requests, point.input_len, ids, seed)
    if point.scenario.warmup:
        warm = prompts.token_prompts(min(batch, point.scenario.warmup), point.input_len, ids,
                                     prompts.point_seed(exp.path.name, started, job.sweep.name, point.point_id,
                                                        "warmup"))
        _generate(llm, warm, point.output_len)
    records, ok, elapsed = [], [], 0.0
    for start in range(0, len(all_prompts), batch):
        if stop is not None and stop.is_set():
            return None
        chunk = all_prompts[start:start + batch]
        t_sent = time.time()
        try:
            outs, dt = _generate(llm, chunk, point.output_len)
            error = None
        except Exception as e:  # counted as failed requests in the row, not a crashed sweep
            outs, dt, error = [None] * len(chunk), 0.0, f"{type(e).__name__}: {e}"
            print(f"[{point.point_id}] generate failed: {error}", file=sys.stderr, flush=True)
        elapsed += dt
        for k, o in enumerate(outs):
            pt = len(o.prompt_token_ids) if o is not None else None
            ot = len(o.outputs[0].token_ids) if o is not None else 0
            ok.append(Sample(ok=o is not None, prompt_tokens=pt, output_tokens=ot))
            records.append({"point_id": point.point_id, "index": start + k, "endpoint": "offline",
                            "sent_at": round(t_sent, 6), "ttft_ms": None, "latency_ms": None, "itl_ms": None,
                            "batch_elapsed_ms": round(dt * 1000, 3), "prompt_tokens": pt,
                            "output_tokens": ot if o is not None else None, "error": error})
    check_point(point, [r["error"] for r in records if r["error"]], len(records))
    row = provenance(job, exp, point, "offline")
    row.update(started_at=started, finished_at=utc_now())
    row.update(point_metrics(ok, elapsed, job.plan.accelerators_held, input_len=point.input_len,
                             output_len=point.output_len, slo=None))
    append_requests(exp.requests_jsonl, records)
    append_row(exp.points_csv, row)
    print(f"[{point.point_id}] {row['completed']}/{len(ok)} done in {elapsed:.3f} s, "
          f"{row['total_throughput']:.0f} tok/s", file=sys.stderr, flush=True)
    return row


def run_offline_sweep(job: Job, exp: Experiment, stop: threading.Event | None = None,
                      llm: Any | None = None, deadline: Deadline | None = None) -> SweepResult:
    """Every offline point of job.sweep not yet done in results/points.csv; the stop event and the
    deadline are checked before each point and between a point's batches."""
    result, todo = pending_points(job, exp)
    if todo and llm is None:
        exp.set_phase("sweeping", "loading the model in-process", done=result.done, total=result.total)
        llm = make_llm(job)
    ids = prompts.usable_token_ids(job.model_path, job.model.vocab) if todo else []
    return run_points(exp, todo, result, lambda point: run_offline_point(job, exp, llm, point, ids, stop),
                      stop, deadline)
