"""Synthetic experiment directories in the real layout, for tests, the scale benchmark and demos.

Rows follow hpcbench.results.POINT_COLUMNS and are written with the csv module, like the sweep does.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

from hpcbench.experiment import CONFIG, POINTS_CSV
from hpcbench.results import POINT_COLUMNS

# (scenario, fom tag, input_len, output_len)
SCENARIOS: tuple[tuple[str, str, int, int], ...] = (
    ("fom1", "FOM1", 2048, 128),
    ("fom2", "FOM2", 128, 2048),
    ("fom3", "FOM3", 1024, 1024),
    ("chat", "", 128, 128),
)


def point_row(experiment: str, site: str, model: str, scenario: str, fom: str, concurrency: int,
              total_throughput: float, *, nodes: int = 1, gpus: int = 4, input_len: int = 1024,
              output_len: int = 128, **overrides: Any) -> dict[str, Any]:
    """One plausible points.csv row; overrides set any other column."""
    out_share = output_len / (input_len + output_len)
    output_tp = total_throughput * out_share
    row: dict[str, Any] = {c: "" for c in POINT_COLUMNS}
    row.update(
        experiment=experiment, job_id="1234", site=site, model=model, hf_id=f"org/{model}", mode="serve",
        nodes=nodes, gpus=gpus, accelerator="cuda", tp=gpus, pp=1, replicas=1, engine="vllm",
        engine_version="0.0.0", dtype="bfloat16", max_model_len=8192, sweep="aurora-fom",
        point_id=f"{scenario}-c{concurrency}", scenario=scenario, fom=fom, api="completions", stream="true",
        input_len=input_len, output_len=output_len, concurrency=concurrency, request_rate="inf",
        burstiness=1.0, num_requests=concurrency * 4, started_at="2025-01-01T00:00:00Z",
        finished_at="2025-01-01T00:01:00Z", completed=concurrency * 4, failed=0, duration_s=60.0,
        request_throughput=round(concurrency * 4 / 60.0, 4), input_throughput=round(total_throughput - output_tp, 4),
        output_throughput=round(output_tp, 4), total_throughput=total_throughput,
        output_throughput_per_gpu=round(output_tp / gpus, 4), per_user_output_speed=50.0,
        total_input_tokens=concurrency * 4 * input_len, total_output_tokens=concurrency * 4 * output_len,
        ttft_ms_mean=20.0 * concurrency, ttft_ms_median=19.0 * concurrency, ttft_ms_p90=30.0 * concurrency,
        ttft_ms_p99=40.0 * concurrency, tpot_ms_mean=10.0 + concurrency, tpot_ms_median=9.0 + concurrency,
        tpot_ms_p90=12.0 + concurrency, tpot_ms_p99=15.0 + concurrency, itl_ms_mean=10.0, itl_ms_median=9.0,
        itl_ms_p90=12.0, itl_ms_p99=15.0, e2el_ms_mean=1000.0, e2el_ms_median=900.0, e2el_ms_p90=1200.0,
        e2el_ms_p99=1500.0, goodput=1.0, slo="ttft_ms<=200;tpot_ms<=50", prompt_len_mismatches=0,
        output_len_mismatches=0, achieved_request_rate="",
    )
    row.update(overrides)
    return row


def csv_text(rows: Iterable[dict[str, Any]], columns: Iterable[str] = POINT_COLUMNS) -> str:
    cols = list(columns)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([r.get(c, "") for c in cols])
    return buf.getvalue()


def write_experiment(root: Path, site: str, model: str, name: str, rows: list[dict[str, Any]],
                     columns: Iterable[str] = POINT_COLUMNS) -> Path:
    """<root>/<site>/<model>/<name>/ with config.yaml and results/points.csv holding rows."""
    exp = Path(root) / site / model / name
    (exp / "results").mkdir(parents=True, exist_ok=True)
    (exp / "logs").mkdir(exist_ok=True)
    (exp / CONFIG).write_text(f"site: {site}\nmodel: {model}\n")
    (exp / POINTS_CSV).write_text(csv_text(rows, columns))
    return exp


def sweep_rows(experiment: str, site: str, model: str, points: int = 20, *, nodes: int = 1, gpus: int = 4,
               scale: float = 1.0) -> list[dict[str, Any]]:
    """`points` rows cycling over SCENARIOS with rising concurrency; throughput grows with concurrency."""
    rows = []
    for i in range(points):
        scenario, fom, isl, osl = SCENARIOS[i % len(SCENARIOS)]
        conc = 2 ** (i // len(SCENARIOS))
        tp = round(scale * 1000.0 * conc ** 0.7 * (1 + i % len(SCENARIOS)), 4)
        rows.append(point_row(experiment, site, model, scenario, fom, conc, tp, nodes=nodes, gpus=gpus,
                              input_len=isl, output_len=osl))
    return rows
