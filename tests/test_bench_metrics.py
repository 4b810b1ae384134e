"""Metric functions on small inputs computed by hand (vLLM `bench serve` definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpcbench.bench.metrics import Sample, goodput_count, percentile, point_metrics, summary_ms, tpot
from hpcbench.results import METRIC_COLUMNS


def test_percentile_matches_numpy_linear() -> None:
    values = [0.3, 0.1, 0.4, 0.15, 0.9, 0.26]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)


def test_tpot_excludes_first_token() -> None:
    # 10 tokens: first at 0.1 s, last at 1.0 s -> 0.9 s over 9 gaps.
    assert tpot(Sample(True, 5, 10, ttft=0.1, latency=1.0)) == pytest.approx(0.1)
    assert tpot(Sample(True, 5, 1, ttft=0.1, latency=0.1)) is None
    assert tpot(Sample(True, 5, 10, ttft=None, latency=1.0)) is None


def test_point_metrics_by_hand() -> None:
    samples = [
        Sample(True, 100, 10, ttft=0.10, latency=1.00, itl=[0.1] * 9),
        Sample(True, 100, 10, ttft=0.20, latency=2.00, itl=[0.2] * 9),
        Sample(True, 100, 9, ttft=0.30, latency=1.90, itl=[0.2] * 8),  # one token short
        Sample(False, 0, 0),  # failed: counted, in no throughput
    ]
    row = point_metrics(samples, 4.0, 2, input_len=100, output_len=10,
                        slo={"ttft_ms": 250.0, "tpot_ms": 150.0, "e2el_ms": None})
    assert row["completed"] == 3 and row["failed"] == 1
    assert row["total_input_tokens"] == 300 and row["total_output_tokens"] == 29
    assert row["request_throughput"] == pytest.approx(0.75)
    assert row["input_throughput"] == pytest.approx(75.0)
    assert row["output_throughput"] == pytest.approx(7.25)
    assert row["total_throughput"] == pytest.approx(82.25)
    assert row["output_throughput_per_gpu"] == pytest.approx(3.625)
    assert row["ttft_ms_mean"] == pytest.approx(200.0)
    assert row["ttft_ms_median"] == pytest.approx(200.0)
    assert row["ttft_ms_p90"] == pytest.approx(280.0)
    # TPOTs: 0.9/9 = 0.1, 1.8/9 = 0.2, 1.6/8 = 0.2
    assert row["tpot_ms_mean"] == pytest.approx(500.0 / 3)
    assert row["tpot_ms_median"] == pytest.approx(200.0)
    assert row["per_user_output_speed"] == pytest.approx(6.0)
    assert row["itl_ms_mean"] == pytest.approx((0.9 + 1.8 + 1.6) / 26 * 1000)
    assert row["e2el_ms_median"] == pytest.approx(1900.0)
    assert row["e2el_ms_p99"] == pytest.approx((1.9 + 0.98 * 0.1) * 1000)
    # Only the first request has TTFT <= 250 ms and TPOT <= 150 ms.
    assert row["goodput"] == pytest.approx(0.25)
    assert row["slo"] == "ttft_ms<=250;tpot_ms<=150"
    assert row["prompt_len_mismatches"] == 0 and row["output_len_mismatches"] == 1
    assert row["achieved_request_rate"] is None
    assert set(row) == set(METRIC_COLUMNS)


def test_missing_usage_counts_as_mismatch_and_empty_latencies_stay_empty() -> None:
    samples = [Sample(True, None, 4, latency=0.5), Sample(True, 7, 4, latency=0.7)]
    row = point_metrics(samples, 1.0, 4, input_len=8, output_len=4, slo=None)
    assert row["total_input_tokens"] == 8 + 7
    assert row["prompt_len_mismatches"] == 2
    assert row["ttft_ms_mean"] is None and row["tpot_ms_p99"] is None and row["itl_ms_median"] is None
    assert row["per_user_output_speed"] is None
    assert row["e2el_ms_mean"] == pytest.approx(600.0)
    assert row["goodput"] is None and row["slo"] == ""


def test_goodput_tpot_slo_cannot_pass_without_streaming() -> None:
    streamed = Sample(True, 1, 1, ttft=0.05, latency=0.05)  # one token: TPOT counts as 0
    unstreamed = Sample(True, 1, 4, latency=0.05)
    assert goodput_count([streamed], None, 10.0, None) == 1
    assert goodput_count([unstreamed], None, 10.0, None) == 0
    assert goodput_count([unstreamed], None, None, 60.0) == 1


def test_all_failed_point_has_zero_throughput() -> None:
    row = point_metrics([Sample(False, None, 0)] * 3, 2.0, 1, input_len=8, output_len=4)
    assert row["completed"] == 0 and row["failed"] == 3
    assert row["output_throughput"] == 0 and row["ttft_ms_mean"] is None
    assert summary_ms([]) == {"mean": None, "median": None, "p90": None, "p99": None}
    assert not math.isnan(row["request_throughput"])


def test_an_output_that_came_at_once_has_no_tpot_and_merged_streams_are_counted() -> None:
    # 1: eight tokens, eight events (ITL per token). 2: eight tokens in three events (merged).
    # 3: eight tokens in one event: latency == TTFT, nothing after the first token was timed.
    timed = Sample(True, 16, 8, ttft=0.1, latency=0.8, itl=[0.1] * 7, token_events=8)
    merged = Sample(True, 16, 8, ttft=0.1, latency=0.5, itl=[0.2, 0.2], token_events=3)
    at_once = Sample(True, 16, 8, ttft=0.3, latency=0.3, itl=[], token_events=1)
    not_streamed = Sample(True, 16, 8, latency=0.9)
    assert tpot(at_once) is None and tpot(merged) == pytest.approx(0.4 / 7)
    row = point_metrics([timed, merged, at_once, not_streamed], 1.0, 1, input_len=16, output_len=8,
                        slo={"tpot_ms": 1000.0})
    assert row["merged_stream_requests"] == 2
    assert row["tpot_ms_mean"] == pytest.approx((100 + 400 / 7) / 2)  # the two timed ones, no 0 among them
    assert row["goodput"] == 2.0  # an untimed TPOT cannot meet the target
    alone = point_metrics([at_once], 1.0, 1, input_len=16, output_len=8)
    assert alone["tpot_ms_mean"] is None and alone["per_user_output_speed"] is None
    assert alone["merged_stream_requests"] == 1
    one_token = Sample(True, 16, 1, ttft=0.1, latency=0.1, token_events=1)
    assert goodput_count([one_token], None, 50.0, None) == 1  # one-token outputs count as TPOT 0 (vLLM)
