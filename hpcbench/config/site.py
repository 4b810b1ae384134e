"""Site profiles: a cluster's scheduler, launcher, node hardware, software environment and engine.

A profile is YAML (built-in under sites/, or the user's own). Lookup order for `--site NAME`:
a path to a .yaml file; ./sites/NAME.yaml; $XDG_CONFIG_HOME/hpcbench/sites/NAME.yaml
(~/.config/...); the built-in profiles. `extends: OTHER` merges this profile over OTHER's
(mappings key by key, lists replaced whole).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpcbench.config.errors import ConfigError, UserError
from hpcbench.config.loading import deep_merge, package_files, read_yaml, validate

Accelerator = Literal["cuda", "xpu", "rocm", "cpu"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueueRule(Strict):
    """One row of a site's queue table: jobs of min_nodes..max_nodes nodes (and at most max_walltime) go here."""

    name: str
    min_nodes: int = Field(1, ge=1)
    max_nodes: int | None = Field(None, ge=1)
    max_walltime: str | None = Field(None, description="longest walltime the queue takes")

    @field_validator("max_walltime")
    @classmethod
    def _walltime(cls, v: str | None) -> str | None:
        if v is not None:
            parse_walltime(v)
        return v

    def takes(self, nodes: int, walltime_s: int) -> bool:
        return (self.min_nodes <= nodes and (self.max_nodes is None or nodes <= self.max_nodes)
                and (self.max_walltime is None or walltime_s <= parse_walltime(self.max_walltime)))

    def describe(self) -> str:
        nodes = f"{self.min_nodes}-{self.max_nodes}" if self.max_nodes else f"{self.min_nodes}+"
        return f"{self.name} ({nodes} nodes" + (f", up to {self.max_walltime})" if self.max_walltime else ")")


class SchedulerSettings(Strict):
    kind: Literal["pbs", "slurm", "local"]
    account: str | None = None
    queue: str | None = Field(None, description="PBS queue or Slurm partition, whatever the job's size")
    queues: list[QueueRule] = Field(
        default_factory=list, description="queue table: the first row that takes the job's nodes and walltime")
    walltime: str = "01:00:00"
    filesystems: str | None = Field(None, description="PBS -l filesystems=, e.g. home:flare")
    place: str | None = Field(None, description="PBS -l place=, e.g. scatter")
    select_suffix: str = Field("", description="appended to PBS select=N, e.g. ':system=aurora'")
    exclusive: bool = False
    gpus_per_node_directive: bool = Field(True, description="Slurm: request --gpus-per-node")
    cpus_per_task: int | None = Field(
        None, ge=1, description="Slurm --cpus-per-task for the job (default: node.cpus, or nothing with "
                                "exclusive); each step gets what the job holds on its node")
    directives: list[str] = Field(default_factory=list, description="extra header options, verbatim")
    max_nodes: int = Field(1, ge=1, description="most nodes one job may use")
    accounting: Literal["auto", "yes", "no"] = "auto"
    timeout_signal_s: int = Field(
        0, ge=0, description="Slurm: USR1 this long before the time limit (0: none; the driver stops in time by itself)")

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str) -> str:
        parse_walltime(v)
        return v

    def pick_queue(self, nodes: int, walltime: str) -> str | None:
        """The queue for a job of this size: `queue` if set, else the first table row that takes it."""
        if self.queue or not self.queues:
            return self.queue
        wall = parse_walltime(walltime)
        for rule in self.queues:
            if rule.takes(nodes, wall):
                return rule.name
        table = "; ".join(r.describe() for r in self.queues)
        raise UserError(f"no queue of this site takes a job of {nodes} node(s) for {walltime} "
                        f"(queues: {table}); pass --queue NAME, or change --walltime or --nodes")


# The variable each accelerator's runtime reads to see only some devices (vLLM's platforms use the same).
DEVICE_VARS: dict[str, str | None] = {
    "cuda": "CUDA_VISIBLE_DEVICES", "rocm": "HIP_VISIBLE_DEVICES", "xpu": "ZE_AFFINITY_MASK", "cpu": None}


class NodeSettings(Strict):
    accelerator: Accelerator
    accelerators: int = Field(..., ge=1, description="accelerators (GPUs or GPU tiles) per node")
    memory_gib: float = Field(..., gt=0, description="memory per accelerator in GiB")
    cpus: int = Field(..., ge=1)
    visible_devices_var: str | None = Field(
        None, description="variable naming visible devices; default from the accelerator "
                          "(CUDA_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES, ZE_AFFINITY_MASK)")

    @model_validator(mode="after")
    def _device_var(self) -> "NodeSettings":
        # Replicas sharing a node must each see only their own devices: never leave this unset on a GPU.
        if self.visible_devices_var is None:
            self.visible_devices_var = DEVICE_VARS[self.accelerator]
        return self


class NetworkSettings(Strict):
    """How every node of a job finds the address Ray, the engine (VLLM_HOST_IP) and the client use.

    Nodes of HPC systems have several networks (Aurora: a management network holding the default route,
    and the high-speed network named <host>.hsn.cm.aurora.alcf.anl.gov); the rule is applied on each
    node by hpcbench.runtime.node."""

    address: Literal["hostname-i", "dns", "interface", "subnet", "loopback"] = "hostname-i"
    dns_suffix: str = Field("", description="address=dns: appended to the node's short host name")
    interface: str | None = Field(None, description="address=interface: e.g. hsn0, ib0")
    subnet: str | None = Field(None, description="address=subnet: the node's address inside this CIDR")

    @model_validator(mode="after")
    def _complete(self) -> "NetworkSettings":
        needs = {"dns": "dns_suffix", "interface": "interface", "subnet": "subnet"}.get(self.address)
        if needs and not getattr(self, needs):
            raise ValueError(f"address: {self.address} needs {needs}")
        if self.subnet:
            import ipaddress

            try:
                ipaddress.IPv4Network(self.subnet, strict=False)
            except ValueError as exc:
                raise ValueError(f"subnet: not an IPv4 network: {exc}") from None
        return self


class RaySettings(Strict):
    enabled: bool = True
    port: int = Field(6379, ge=1024, le=65000, description="base port; the job adds an offset")
    temp_dir: str = Field("/tmp", description="node-local folder for Ray's sessions and sockets (keep it short)")
    num_cpus: int | None = None
    ready_timeout_s: int = Field(300, ge=1)


class EngineSettings(Strict):
    name: Literal["vllm"] = "vllm"
    dtype: str = "bfloat16"
    backend: Literal["ray", "mp", "uni"] = Field("ray", description="distributed executor for TP/PP")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    overhead_gib: float = Field(2.0, ge=0, description="activations, CUDA graphs, runtime per accelerator")
    extra_args: list[str] = Field(default_factory=list, description="more vLLM server flags")
    env: dict[str, str] = Field(default_factory=dict, description="set only for the engine")
    port: int = Field(8000, ge=1024, le=65000)
    ready_timeout_s: int | None = Field(None, ge=1, description="default: from model size")
    trust_remote_code: bool = False


class ModulesSettings(Strict):
    use: list[str] = Field(default_factory=list)
    unload: list[str] = Field(default_factory=list)
    load: list[str] = Field(default_factory=list)


class Site(Strict):
    name: str
    description: str = ""
    extends: str | None = None
    scheduler: SchedulerSettings
    launcher: Literal["mpiexec", "srun", "local"]
    node: NodeSettings
    modules: ModulesSettings = Field(default_factory=ModulesSettings)
    env: dict[str, str] = Field(default_factory=dict)
    setup: list[str] = Field(default_factory=list, description="shell lines run after modules and env")
    python: str | None = Field(None, description="interpreter inside the job; default: python3 (local site: the submitting one)")
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    hf_home: str | None = Field(None, description="HF_HOME: the folder that holds hub/, not hub/ itself")
    models_dir: str | None = Field(None, description="folder of local model directories")
    secrets: list[str] = Field(default_factory=lambda: ["HF_TOKEN"],
                               description="variables passed by name from the submitting environment")

    @property
    def header_cpus(self) -> int | None:
        """Slurm --cpus-per-task for the job: scheduler.cpus_per_task, else node.cpus unless the job has
        the whole node anyway (--exclusive; a node.cpus above what a job may use would be refused)."""
        if self.scheduler.kind != "slurm":
            return None
        return self.scheduler.cpus_per_task or (None if self.scheduler.exclusive else self.node.cpus)

    @field_validator("ray")
    @classmethod
    def _ray_temp_dir(cls, v: RaySettings) -> RaySettings:
        from hpcbench.runtime.cluster import check_ray_temp_dir

        check_ray_temp_dir(v.temp_dir)
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"not a valid environment variable name: {name!r}")
        return v

    @field_validator("hf_home")
    @classmethod
    def _hf_home(cls, v: str | None) -> str | None:
        # A seed mistake: HF_HOME pointed at .../hub makes Hugging Face look in .../hub/hub.
        if v and v.rstrip("/").endswith("/hub"):
            raise ValueError("HF_HOME must be the folder that contains hub/, not hub/ itself")
        return v

    @model_validator(mode="after")
    def _launcher_fits(self) -> "Site":
        allowed = {"pbs": {"mpiexec"}, "slurm": {"srun", "mpiexec"}, "local": {"local"}}
        if self.launcher not in allowed[self.scheduler.kind]:
            raise ValueError(f"launcher {self.launcher!r} does not work with scheduler "
                             f"{self.scheduler.kind!r} (use one of {sorted(allowed[self.scheduler.kind])})")
        return self


WALLTIME_FORMS = "HH:MM:SS, MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def parse_walltime(text: str) -> int:
    """A walltime in the forms Slurm's --time and PBS's walltime both read the same way -> seconds.

    A bare number is refused: Slurm reads "30" as 30 minutes, PBS as 30 seconds."""
    body = str(text).strip()
    days, has_days = 0, "-" in body
    if has_days:
        d, body = body.split("-", 1)
        if not d.isdigit():
            raise ValueError(f"walltime must look like {WALLTIME_FORMS} (got {text!r})")
        days = int(d)
    parts = body.split(":")
    if not all(p.isdigit() for p in parts) or len(parts) > 3 or (not has_days and len(parts) == 1):
        hint = (f"; a bare number means minutes to Slurm and seconds to PBS: write 00:{int(body):02d}:00 "
                f"for {body} minutes" if body.isdigit() and not has_days and 0 < int(body) < 60 else "")
        raise ValueError(f"walltime must look like {WALLTIME_FORMS} (got {text!r}){hint}")
    nums = [int(p) for p in parts]
    if has_days:  # D-HH, D-HH:MM, D-HH:MM:SS
        nums += [0] * (3 - len(nums))
    else:     # MM:SS, HH:MM:SS
        nums = [0] * (3 - len(nums)) + nums
    h, m, s = nums
    if m >= 60 or s >= 60 or (has_days and h >= 24):
        raise ValueError(f"walltime {text!r} is out of range (minutes and seconds below 60"
                         + (", hours below 24 after a day count)" if has_days else ")"))
    total = days * 86400 + h * 3600 + m * 60 + s
    if total <= 0:
        raise ValueError(f"walltime must be longer than zero (got {text!r})")
    return total


def format_walltime(seconds: int) -> str:
    """HH:MM:SS (hours may pass 24), which PBS and Slurm read alike."""
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def user_site_dirs() -> list[Path]:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return [Path.cwd() / "sites", config_home / "hpcbench" / "sites"]


def builtin_sites() -> dict[str, Path]:
    return package_files("hpcbench.sites")


def site_files() -> dict[str, Path]:
    """Every site name we can find, user folders first (a user file shadows a built-in one)."""
    found = dict(builtin_sites())
    for folder in reversed(user_site_dirs()):
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found[path.stem] = path
    return found


def site_names() -> list[str]:
    return sorted(site_files())


def _locate(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not candidate.is_file():
            raise ConfigError(candidate, "", "no such site file")
        return candidate
    files = site_files()
    if name_or_path not in files:
        raise ConfigError(None, "site", f"unknown site {name_or_path!r}; known sites: {', '.join(sorted(files))}")
    return files[name_or_path]


def _raw_site(name_or_path: str, chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path]:
    path = _locate(name_or_path)
    key = str(path.resolve())
    if key in chain:
        names = " -> ".join(Path(p).stem for p in chain + (key,))
        raise ConfigError(path, "extends", f"extends chain has a cycle: {names}")
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    parent = data.get("extends")
    if parent is None:
        return data, path
    if not isinstance(parent, str):
        raise ConfigError(path, "extends", f"expected a site name or path, got {parent!r}")
    try:
        base, _ = _raw_site(parent if not parent.endswith((".yaml", ".yml")) else
                            str((path.parent / parent)), chain + (key,))
    except ConfigError as exc:
        if exc.file is None:  # unknown parent name: say which file asked for it
            raise ConfigError(path, "extends", exc.problem) from None
        raise
    base.pop("description", None)
    merged = deep_merge(base, data)
    return merged, path


def load_site(name_or_path: str) -> Site:
    data, path = _raw_site(name_or_path)
    return validate(Site, data, path)
