"""Per-point metrics, with vLLM `bench serve` definitions (see docs/metrics.md).

Pure functions of per-request records, so they can be checked against hand-computed numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

STATS = ("mean", "median", "p90", "p99")


@dataclass(frozen=True)
class Sample:
    """The numbers metrics need from one request (seconds; None when not applicable)."""

    ok: bool
    prompt_tokens: int | None       # None: the server reported no usage
    output_tokens: int
    ttft: float | None = None
    latency: float | None = None
    itl: Sequence[float] = field(default_factory=tuple)
    token_events: int | None = None  # stream events that carried text (None: not streamed)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, which vLLM uses)."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary_ms(values: Sequence[float]) -> dict[str, float | None]:
    """mean, median, p90, p99 of values in seconds, reported in ms; all None when empty."""
    if not values:
        return {k: None for k in STATS}
    return {"mean": sum(values) / len(values) * 1000, "median": percentile(values, 50) * 1000,
            "p90": percentile(values, 90) * 1000, "p99": percentile(values, 99) * 1000}


def tpot(s: Sample) -> float | None:
    """Time per output token after the first: (latency - TTFT) / (output - 1), for output > 1.

    None, not 0, when the whole output reached the client at once (a server that merges tokens into
    one event, or one network read): nothing after the first token was timed."""
    if s.ttft is None or s.latency is None or s.output_tokens <= 1 or s.latency <= s.ttft:
        return None
    return (s.latency - s.ttft) / (s.output_tokens - 1)


def merged_stream(s: Sample) -> bool:
    """A streamed request whose stream had fewer token events than output tokens: its ITL values are
    per event, not per token, and its TPOT leans on when the merged events came."""
    return s.ok and s.token_events is not None and s.token_events < s.output_tokens


def goodput_count(samples: Iterable[Sample], ttft_ms: float | None, tpot_ms: float | None,
                  e2el_ms: float | None) -> int:
    """Completed requests meeting every SLO given (TPOT counts as 0 for one-token outputs, as in vLLM)."""
    good = 0
    for s in samples:
        if not s.ok:
            continue
        if ttft_ms is not None and (s.ttft is None or s.ttft * 1000 > ttft_ms):
            continue
        if tpot_ms is not None:
            t = tpot(s)
            if t is None:  # one-token output counts as 0 (vLLM); not streamed or not timed: cannot be judged
                t = 0.0 if s.ttft is not None and s.output_tokens <= 1 else math.inf
            if t * 1000 > tpot_ms:
                continue
        if e2el_ms is not None and (s.latency is None or s.latency * 1000 > e2el_ms):
            continue
        good += 1
    return good


def point_metrics(samples: Sequence[Sample], duration_s: float, gpus: int, *, input_len: int,
                  output_len: int, slo: dict[str, float | None] | None = None,
                  achieved_rate: float | None = None) -> dict[str, float | int | str | None]:
    """All METRIC_COLUMNS of one point. Failed requests count in `failed` and in no throughput."""
    ok = [s for s in samples if s.ok]
    # Without usage the requested length is counted (as vLLM does), and reported as a mismatch.
    total_in = sum(input_len if s.prompt_tokens is None else s.prompt_tokens for s in ok)
    total_out = sum(s.output_tokens for s in ok)
    ttfts = [s.ttft for s in ok if s.ttft is not None]
    tpots = [t for t in (tpot(s) for s in ok) if t is not None]
    itls = [x for s in ok for x in s.itl]
    e2els = [s.latency for s in ok if s.latency is not None]
    d = duration_s if duration_s > 0 else math.nan
    out_tp = total_out / d
    row: dict[str, float | int | str | None] = {
        "completed": len(ok),
        "failed": len(samples) - len(ok),
        "duration_s": duration_s,
        "request_throughput": len(ok) / d,
        "input_throughput": total_in / d,
        "output_throughput": out_tp,
        "total_throughput": (total_in + total_out) / d,
        "output_throughput_per_gpu": out_tp / gpus if gpus else None,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        for stat, v in summary_ms(values).items():
            row[f"{name}_ms_{stat}"] = v
    mean_tpot = row["tpot_ms_mean"]
    row["per_user_output_speed"] = 1000.0 / mean_tpot if mean_tpot else None
    slo = {k: v for k, v in (slo or {}).items() if v is not None}
    if slo:
        row["goodput"] = goodput_count(ok, slo.get("ttft_ms"), slo.get("tpot_ms"), slo.get("e2el_ms")) / d
        row["slo"] = ";".join(f"{k}<={v:g}" for k, v in slo.items())
    else:
        row["goodput"] = None
        row["slo"] = ""
    row["prompt_len_mismatches"] = sum(1 for s in ok if s.prompt_tokens != input_len)
    row["output_len_mismatches"] = sum(1 for s in ok if s.output_tokens != output_len)
    row["achieved_request_rate"] = achieved_rate
    row["merged_stream_requests"] = sum(1 for s in ok if merged_stream(s))
    return row
