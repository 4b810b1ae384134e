"""Offline mode for real: vllm.LLM in a subprocess script (vLLM needs the __main__ guard)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SITE = Path(__file__).parent / "sites" / "slurm-local.yaml"

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from hpcbench.bench import run_offline_sweep
    from hpcbench.config import load_site, resolve_model
    from hpcbench.config.job import resolve_job
    from hpcbench.config.sweep import Scenario, Sweep
    from hpcbench.experiment import Experiment

    if __name__ == "__main__":
        site, model_dir, root = sys.argv[1:4]
        sweep = Sweep(name="off", mode="offline", scenarios=[Scenario(
            name="grid", api="offline", input_len=32, output_len=8, concurrency=[1, 4], warmup=1)])
        exp = Experiment.allocate(Path(root), "slurm-local", "tiny").create()
        job = resolve_job(site=load_site(site), model=resolve_model("tiny"), sweep=sweep, experiment=exp.path,
                          model_path=model_dir, mode="offline")
        first = run_offline_sweep(job, exp)
        again = run_offline_sweep(job, exp)
        print("RESULT " + json.dumps({"exp": str(exp.path), "ran": first.ran, "again": again.ran,
                                      "skipped": again.skipped, "gpus": job.plan.accelerators_held}))
''')


def test_offline_sweep_rows(tiny_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "offline_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(SITE), str(tiny_model), str(tmp_path / "runs")],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[0][7:])
    ids = ["grid_in32_out8_c1_n1", "grid_in32_out8_c4_n4"]
    assert out["ran"] == ids and out["again"] == [] and out["skipped"] == ids
    with open(Path(out["exp"]) / "results" / "points.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["point_id"] for r in rows] == ids
    for r, batch in zip(rows, (1, 4)):
        assert r["api"] == "offline" and r["stream"] == "false" and r["concurrency"] == str(batch)
        assert int(r["completed"]) == batch and r["failed"] == "0"
        assert int(r["total_input_tokens"]) == 32 * batch and int(r["total_output_tokens"]) == 8 * batch
        assert r["prompt_len_mismatches"] == "0" and r["output_len_mismatches"] == "0"
        d = float(r["duration_s"])
        assert float(r["total_throughput"]) == pytest.approx(40 * batch / d, rel=1e-3)
        assert float(r["output_throughput_per_gpu"]) == pytest.approx(
            8 * batch / d / out["gpus"], rel=1e-3)
        assert r["ttft_ms_mean"] == "" and r["e2el_ms_median"] == "" and r["engine_version"] != ""
    lines = (Path(out["exp"]) / "results" / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(x)["output_tokens"] == 8 for x in lines)
