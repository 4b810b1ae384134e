"""The columns of results/points.csv: the one contract between the sweep (which writes rows) and
`hpcbench collect` (which reads them). Definitions of the metrics are in docs/metrics.md.

Add a column at the end of its group; collect treats a column missing from an older file as empty.
"""

from __future__ import annotations

# Who, where and how: copied into every row so a row means something on its own.
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "experiment",        # experiment directory name (<UTC timestamp>-<id>)
    "job_id",            # scheduler job id
    "site",
    "model",             # catalog name, e.g. llama-3.1-70b-instruct
    "hf_id",
    "mode",              # serve | replicas | offline | endpoint (servers started elsewhere)
    "nodes",
    "gpus",              # accelerators the job holds (per-GPU figures divide by this)
    "accelerator",       # cuda | xpu | rocm | cpu
    "tp",
    "pp",
    "replicas",
    "engine",            # vllm; for endpoints, what the servers say they are
    "engine_version",
    "dtype",
    "max_model_len",
    "sweep",             # sweep name, e.g. smoke, aurora-fom
    "point_id",          # stable id of the sweep point; resume skips ids already present
    "scenario",          # e.g. chat, reasoning, fom1
    "fom",               # FOM1 | FOM2 | FOM3 or empty: which seed figure of merit this point feeds
    "api",               # completions | chat | offline
    "stream",            # true | false
    "input_len",
    "output_len",
    "concurrency",       # closed loop: requests in flight (empty for open loop)
    "request_rate",      # open loop: requests/s (empty or inf for closed loop)
    "burstiness",        # open loop: gamma shape (1.0 = Poisson)
    "num_requests",
    "started_at",        # UTC ISO time the point began
    "finished_at",
)

# What was measured. Latencies in milliseconds, throughputs per second.
METRIC_COLUMNS: tuple[str, ...] = (
    "completed",
    "failed",
    "duration_s",                  # first request sent -> last request done
    "request_throughput",          # completed / duration
    "input_throughput",            # sum(prompt tokens) / duration
    "output_throughput",           # sum(output tokens) / duration
    "total_throughput",            # (input + output tokens) / duration: the seed FOM throughput
    "output_throughput_per_gpu",   # output_throughput / gpus
    "per_user_output_speed",       # 1000 / mean TPOT (tokens/s seen by one user)
    "total_input_tokens",
    "total_output_tokens",
    "ttft_ms_mean", "ttft_ms_median", "ttft_ms_p90", "ttft_ms_p99",
    "tpot_ms_mean", "tpot_ms_median", "tpot_ms_p90", "tpot_ms_p99",
    "itl_ms_mean", "itl_ms_median", "itl_ms_p90", "itl_ms_p99",
    "e2el_ms_mean", "e2el_ms_median", "e2el_ms_p90", "e2el_ms_p99",
    "goodput",                     # requests meeting every SLO of the scenario / duration
    "slo",                         # the SLOs used, e.g. ttft_ms<=200;tpot_ms<=50
    "prompt_len_mismatches",       # requests whose usage.prompt_tokens != input_len
    "output_len_mismatches",       # requests whose output token count != output_len
    "achieved_request_rate",       # open loop: what the client really sent
    "merged_stream_requests",      # streamed requests with fewer token events than tokens: ITL/TPOT unreliable
)

POINT_COLUMNS: tuple[str, ...] = PROVENANCE_COLUMNS + METRIC_COLUMNS
