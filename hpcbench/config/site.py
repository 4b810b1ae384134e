"""Site profiles: a cluster's scheduler, launcher, node hardware, software environment and engine.

A profile is YAML (built-in under sites/, or the user's own). Lookup order for `--site NAME`:
a path to a .yaml file; ./sites/NAME.yaml; $XDG_CONFIG_HOME/hpcbench/sites/NAME.yaml
(~/.config/...); the built-in profiles. `extends: OTHER` merges this profile over OTHER's
(mappings key by key, lists replaced whole).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from hpcbench.config.errors import ConfigError, UserError
from hpcbench.config.loading import (FieldError, NonNegativeInt, Port, PositiveInt, Strict, check,
                                     deep_merge, is_yaml_path, name_from_file, package_files,
                                     read_yaml, validate)
from hpcbench.config.values import (WALLTIME_FORMS, env_name, format_walltime, non_empty, one_line,  # noqa: F401
                                    parse_walltime, safe_name, scheduler_word)

Accelerator = Literal["cuda", "xpu", "rocm", "cpu"]


# Upper bounds well above any machine built, so a typo (an extra digit, a value in bytes) is refused
# instead of sending the planner through billions of layouts.
PerNodeAccelerators = Annotated[int, msgspec.Meta(ge=1, le=64)]
AcceleratorGiB = Annotated[float, msgspec.Meta(gt=0, le=4096)]
NodeCPUs = Annotated[int, msgspec.Meta(ge=1, le=8192)]
JobNodes = Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class QueueRule(Strict, kw_only=True):
    """One row of a site's queue table: jobs of min_nodes..max_nodes nodes (and at most max_walltime) go here."""

    name: str
    min_nodes: PositiveInt = 1
    max_nodes: PositiveInt | None = None
    max_walltime: str | None = None  # longest walltime the queue takes

    def __post_init__(self) -> None:
        check("name", scheduler_word, self.name, "a queue name")
        if self.max_walltime is not None:
            check("max_walltime", parse_walltime, self.max_walltime)

    def takes(self, nodes: int, walltime_s: int) -> bool:
        return (self.min_nodes <= nodes and (self.max_nodes is None or nodes <= self.max_nodes)
                and (self.max_walltime is None or walltime_s <= parse_walltime(self.max_walltime)))

    def describe(self) -> str:
        nodes = f"{self.min_nodes}-{self.max_nodes}" if self.max_nodes else f"{self.min_nodes}+"
        return f"{self.name} ({nodes} nodes" + (f", up to {self.max_walltime})" if self.max_walltime else ")")


class SchedulerSettings(Strict, kw_only=True):
    kind: Literal["pbs", "slurm", "local"]
    account: str | None = None
    queue: str | None = None  # PBS queue or Slurm partition, whatever the job's size
    # The queue table: the first row that takes the job's nodes and walltime (when `queue` is not set).
    queues: list[QueueRule] = []
    walltime: str = "01:00:00"
    filesystems: str | None = None  # PBS -l filesystems=, e.g. home:flare
    place: str | None = None  # PBS -l place=, e.g. scatter
    select_suffix: str = ""  # appended to PBS select=N, e.g. ':system=aurora'
    exclusive: bool = False
    gpus_per_node_directive: bool = True  # Slurm: request --gpus-per-node
    # Slurm --cpus-per-task for the job (default: node.cpus, or nothing with exclusive); each step gets
    # what the job holds on its node.
    cpus_per_task: NodeCPUs | None = None
    directives: list[str] = []  # extra header options, verbatim
    max_nodes: JobNodes = 1  # most nodes one job may use
    accounting: Literal["auto", "yes", "no"] = "auto"
    # Slurm: USR1 this long before the time limit (0: none; the driver stops in time by itself).
    timeout_signal_s: NonNegativeInt = 0

    def __post_init__(self) -> None:
        # These reach #SBATCH/#PBS header lines, which the shell never sees and so cannot be quoted.
        for key in ("account", "queue"):
            if getattr(self, key) is not None:
                check(key, scheduler_word, getattr(self, key), key)
        for key in ("filesystems", "place"):
            if getattr(self, key) is not None:
                check(key, non_empty, getattr(self, key), key)
        check("select_suffix", one_line, self.select_suffix, "select_suffix")
        for i, directive in enumerate(self.directives):
            check(f"directives.{i}", non_empty, directive, "a directive")
        check("walltime", parse_walltime, self.walltime)

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


class NodeSettings(Strict, kw_only=True):
    accelerator: Accelerator
    accelerators: PerNodeAccelerators  # accelerators (GPUs or GPU tiles) per node
    memory_gib: AcceleratorGiB  # memory per accelerator in GiB
    cpus: NodeCPUs
    # The variable naming visible devices; default from the accelerator (CUDA_VISIBLE_DEVICES,
    # HIP_VISIBLE_DEVICES, ZE_AFFINITY_MASK).
    visible_devices_var: str | None = None

    def __post_init__(self) -> None:
        # Replicas sharing a node must each see only their own devices: never leave this unset on a GPU.
        if self.visible_devices_var is None:
            self.visible_devices_var = DEVICE_VARS[self.accelerator]
        else:
            check("visible_devices_var", env_name, self.visible_devices_var)


class NetworkSettings(Strict, kw_only=True):
    """How every node of a job finds the address Ray, the engine (VLLM_HOST_IP) and the client use.

    Nodes of HPC systems have several networks (Aurora: a management network holding the default route,
    and the high-speed network named <host>.hsn.cm.aurora.alcf.anl.gov); the rule is applied on each
    node by hpcbench.runtime.node."""

    address: Literal["hostname-i", "dns", "interface", "subnet", "loopback"] = "hostname-i"
    dns_suffix: str = ""  # address=dns: appended to the node's short host name
    interface: str | None = None  # address=interface: e.g. hsn0, ib0
    subnet: str | None = None  # address=subnet: the node's address inside this CIDR

    def __post_init__(self) -> None:
        needs = {"dns": "dns_suffix", "interface": "interface", "subnet": "subnet"}.get(self.address)
        if needs and not getattr(self, needs):
            raise FieldError("address", f"{self.address} needs {needs}")
        if self.subnet:
            import ipaddress

            try:
                ipaddress.IPv4Network(self.subnet, strict=False)
            except ValueError as exc:
                raise FieldError("subnet", f"not an IPv4 network: {exc}") from None


class RaySettings(Strict, kw_only=True):
    enabled: bool = True
    port: Port = 6379  # base port; the job adds an offset
    temp_dir: str = "/tmp"  # node-local folder for Ray's sessions and sockets (keep it short)
    num_cpus: PositiveInt | None = None
    ready_timeout_s: PositiveInt = 300

    def __post_init__(self) -> None:
        from hpcbench.runtime.ray_paths import check_ray_temp_dir

        check("temp_dir", non_empty, self.temp_dir, "temp_dir")
        check("temp_dir", check_ray_temp_dir, self.temp_dir)


class EngineSettings(Strict, kw_only=True):
    name: Literal["vllm"] = "vllm"
    dtype: str = "bfloat16"  # vLLM's --dtype: auto (the checkpoint's), bfloat16, float16, float32
    kv_cache_dtype: str = "auto"  # vLLM's --kv-cache-dtype: auto (as dtype), fp8, ...
    backend: Literal["ray", "mp", "uni"] = "ray"  # distributed executor for TP/PP
    gpu_memory_utilization: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9
    # Activations, CUDA graphs, runtime: GiB per accelerator.
    overhead_gib: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    extra_args: list[str] = []  # more vLLM server flags
    env: dict[str, str] = {}  # set only for the engine
    port: Port = 8000
    ready_timeout_s: PositiveInt | None = None  # default: from model size
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        from hpcbench.engine_config import engine_dtype, kv_cache_dtype

        check("dtype", engine_dtype, self.dtype, "dtype")
        check("kv_cache_dtype", kv_cache_dtype, self.kv_cache_dtype, "kv_cache_dtype")
        for name in self.env:
            check("env", env_name, name)


class ModulesSettings(Strict, kw_only=True):
    use: list[str] = []
    unload: list[str] = []
    load: list[str] = []


class Site(Strict, kw_only=True):
    name: str
    description: str = ""
    extends: str | None = None
    scheduler: SchedulerSettings
    launcher: Literal["mpiexec", "srun", "local"]
    node: NodeSettings
    modules: ModulesSettings = msgspec.field(default_factory=ModulesSettings)
    env: dict[str, str] = {}
    setup: list[str] = []  # shell lines run after modules and env
    # The interpreter inside the job; default: python3 (local site: the submitting one).
    python: str | None = None
    network: NetworkSettings = msgspec.field(default_factory=NetworkSettings)
    ray: RaySettings = msgspec.field(default_factory=RaySettings)
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    hf_home: str | None = None  # HF_HOME: the folder that holds hub/, not hub/ itself
    models_dir: str | None = None  # folder of local model directories
    # Variables passed by name from the submitting environment.
    secrets: list[str] = msgspec.field(default_factory=lambda: ["HF_TOKEN"])

    def __post_init__(self) -> None:
        # The name is a folder under the experiments root and reaches #SBATCH --output.
        check("name", safe_name, self.name, "site name")
        for name in self.env:
            check("env", env_name, name)
        for i, name in enumerate(self.secrets):
            check(f"secrets.{i}", env_name, name)
        for key in ("python", "hf_home", "models_dir"):
            if getattr(self, key) is not None:
                check(key, non_empty, getattr(self, key), key)
        # A seed mistake: HF_HOME pointed at .../hub makes Hugging Face look in .../hub/hub.
        if self.hf_home and self.hf_home.rstrip("/").endswith("/hub"):
            raise FieldError("hf_home", "HF_HOME must be the folder that contains hub/, not hub/ itself "
                                        f"(got {self.hf_home!r})")
        allowed = {"pbs": ["mpiexec"], "slurm": ["mpiexec", "srun"], "local": ["local"]}[self.scheduler.kind]
        if self.launcher not in allowed:
            raise FieldError("launcher", f"{self.launcher!r} does not work with scheduler {self.scheduler.kind!r} "
                                         f"(use {' or '.join(allowed)})")

    @property
    def header_cpus(self) -> int | None:
        """Slurm --cpus-per-task for the job: scheduler.cpus_per_task, else node.cpus unless the job has
        the whole node anyway (--exclusive; a node.cpus above what a job may use would be refused)."""
        if self.scheduler.kind != "slurm":
            return None
        return self.scheduler.cpus_per_task or (None if self.scheduler.exclusive else self.node.cpus)


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
    if is_yaml_path(name_or_path):
        candidate = Path(name_or_path).expanduser()
        if not candidate.is_file():
            raise ConfigError(candidate, "", "no such site file")
        return candidate
    files = site_files()
    if name_or_path not in files:
        raise ConfigError(None, "--site", f"unknown site {name_or_path!r}; known sites: {', '.join(sorted(files))}")
    return files[name_or_path]


def _parent_file(parent: Any, child: Path) -> Path:
    """The file `extends: parent` of child names: a site name, or a path relative to child's folder."""
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(child, "extends", f"expected a site name or path (got {parent!r})")
    if is_yaml_path(parent):
        path = child.parent / Path(parent).expanduser()
        if not path.is_file():
            raise ConfigError(child, "extends", f"no such site file: {path}")
        return path
    try:
        return _locate(parent)
    except ConfigError as exc:
        raise ConfigError(child, "extends", exc.problem) from None


def _chain(name_or_path: str) -> list[tuple[Path, dict[str, Any]]]:
    """The site's file and its parents (`extends`), child first, each read on its own."""
    path = _locate(name_or_path)
    chain: list[tuple[Path, dict[str, Any]]] = []
    while True:
        data = read_yaml(path)
        chain.append((path, data))
        if data.get("extends") is None:
            return chain
        parent = _parent_file(data["extends"], path)
        seen = [p.resolve() for p, _ in chain]
        if parent.resolve() in seen:
            names = " -> ".join(p.stem for p in [*seen, parent.resolve()])
            raise ConfigError(path, "extends", f"extends chain has a cycle: {names}")
        path = parent


def _has(data: Any, keys: list[str]) -> bool:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def _origin(chain: list[tuple[Path, dict[str, Any]]], keys: list[str]) -> Path:
    """The file a key path of the merged site came from: the child-most one that sets it, else the
    child-most one that sets the longest part of it (a list comes whole from one file)."""
    for n in range(len(keys), 0, -1):
        for path, data in chain:
            if _has(data, keys[:n]):
                return path
    return chain[0][0]


def load_site(name_or_path: str) -> Site:
    chain = _chain(name_or_path)
    path, data = chain[0]
    if "name" not in data:  # named after its file
        name_from_file(path, "site name")
    merged: dict[str, Any] = {}
    for _, parent in reversed(chain[1:]):
        merged = deep_merge(merged, parent)
    merged.pop("description", None)  # a parent's description describes the parent
    merged = deep_merge(merged, {**data, "name": data.get("name", path.stem)})
    return validate(Site, merged, path, origin=lambda keys: _origin(chain, keys))


def list_sites() -> tuple[list[tuple[str, Path, Site]], list[UserError]]:
    """Every site site_files() finds, loaded one by one: (name, file, site) of those that load, and
    the error of each that does not (one broken file must not hide the others)."""
    good: list[tuple[str, Path, Site]] = []
    broken: list[UserError] = []
    for name, path in sorted(site_files().items()):
        try:
            good.append((name, path, load_site(str(path))))
        except UserError as exc:  # ConfigError mostly; anything a user's file can cause
            broken.append(exc)
    return good, broken
