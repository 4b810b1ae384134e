"""vLLM OpenAI servers: what to start where, starting them, knowing when they are really ready, stopping them.

Readiness is `/health` and then `/v1/models` answering, polled about once a second under one overall
timeout, and on every poll the server process must still be alive: a crashed server is reported at
once with the tail of its log, never after the timeout (the seed scripts' `until grep ...` spun forever).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcbench.api_key import auth_headers
from hpcbench.launchers import node_command

if TYPE_CHECKING:
    from hpcbench.config.job import Job

POLL_S = 1.0
LOG_TAIL_LINES = 25
STOP_GRACE_S = 3.0  # TERM -> KILL: vLLM exits in 1-2 s on TERM; PBS kills 10 s after its own TERM
KILL_WAIT_S = 2.0


class EngineError(RuntimeError):
    """A server crashed, or was not ready in time; the message says which and why (one line first)."""


@dataclass
class ServerSpec:
    """One server to start: where, on which port, with which command and environment."""

    name: str            # e.g. "engine-0"; also the log file's stem
    node: str            # scheduler node name
    host: str            # address the client and the readiness poll use
    port: int
    argv: list[str]      # the engine command, already wrapped by the launcher for other nodes
    engine_argv: list[str]  # the bare engine command (for provenance)
    env: dict[str, str]  # variables added to the server's environment

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Server:
    spec: ServerSpec
    proc: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return self.spec.url


# ---------------------------------------------------------------- what to start


def kv_cache_gib(memory_gib: float) -> int:
    """VLLM_CPU_KVCACHE_SPACE takes whole GiB; never below 1."""
    return max(1, int(memory_gib))


def cpu_bind(workers: int, first_core: int = 0) -> str:
    """VLLM_CPU_OMP_THREADS_BIND with one core per worker, e.g. "0|1" (TP 2 fails on CPU without it)."""
    return "|".join(str(first_core + i) for i in range(workers))


def server_env(job: "Job", replica_on_node: int = 0) -> dict[str, str]:
    """Variables the engine needs on top of the job's environment (site env is already exported)."""
    site, plan = job.site, job.plan
    env: dict[str, str] = {}
    workers = plan.tp * plan.pp
    if site.node.accelerator == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib(site.node.memory_gib))
        if workers > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in site.env and \
                "VLLM_CPU_OMP_THREADS_BIND" not in site.engine.env:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind(workers, replica_on_node * workers)
    elif plan.replicas_per_node > 1 and site.node.visible_devices_var:
        # Several replicas share a node: each sees only its own group of accelerators.
        per = plan.accelerators_per_replica
        first = replica_on_node * per
        env[site.node.visible_devices_var] = ",".join(str(d) for d in range(first, first + per))
    env.update(site.engine.env)
    return env


def on_node(job: "Job", node: str, role: str, argv: list[str], env: Mapping[str, str], here: bool) -> list[str]:
    """argv as started on node: through `hpcbench.runtime.node exec`, which sets that node's own
    address (VLLM_HOST_IP, by the site's network rule) and records it; through the launcher unless it is
    this node. The variables are passed on the command line: a launcher may not forward our environment."""
    inner = [job.python, "-m", "hpcbench.runtime.node", "exec", job.experiment, node, role, "--",
             "env", *(f"{k}={v}" for k, v in env.items()), *argv]
    return inner if here else node_command(job.site.launcher, node, inner, os.environ.get("HPCBENCH_STEP_CPUS"))


def plan_servers(job: "Job", nodes: Sequence[str], node_ips: Mapping[str, str], port_offset: int,
                 head_ip: str = "127.0.0.1") -> list[ServerSpec]:
    """The servers of this job. serve/offline: one on the head spanning all nodes (TP/PP of the plan).
    replicas: plan.replicas_per_node on every node; replica i (counted over the whole job, so nodes
    sharing one host never collide) on port engine + offset + i."""
    base = job.ports.engine + port_offset
    if job.mode != "replicas":
        argv, env = job.engine_command(base), server_env(job)
        return [ServerSpec("engine-0", nodes[0], head_ip, base, on_node(job, nodes[0], "engine-0", argv, env, True),
                           list(argv), env)]
    specs: list[ServerSpec] = []
    i = 0
    for n, node in enumerate(nodes[: job.plan.nodes] if job.plan.nodes else nodes):
        for k in range(job.plan.replicas_per_node):
            if len(specs) >= job.plan.replicas:
                break
            port = base + i
            argv, env = job.engine_command(port), server_env(job, k)
            host = head_ip if n == 0 else node_ips.get(node, node)
            specs.append(ServerSpec(f"engine-{i}", node, host, port, on_node(job, node, f"engine-{i}", argv, env, n == 0),
                                    list(argv), env))
            i += 1
    return specs


# ---------------------------------------------------------------- starting and stopping


def start_server(spec: ServerSpec, logs: Path, extra_env: Mapping[str, str] | None = None) -> Server:
    """Start one server in its own process group (so teardown reaches its workers), output to its log."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{spec.name}.log"
    env = {**os.environ, **(extra_env or {}), **spec.env}
    with open(log, "ab") as fh:
        fh.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(spec.argv)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(spec.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    return Server(spec, proc, log)


def stop_server(server: Server, grace_s: float = STOP_GRACE_S) -> int | None:
    """TERM to the whole process group, a short wait, then KILL; returns the exit code. Bounded by
    grace_s + 2 * KILL_WAIT_S so a stopped job ends well within the scheduler's kill delay."""
    proc = server.proc
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # The leader may be gone while workers of its group linger; make sure none survives, and wait
    # (bounded) until the group is really empty: a killed worker still holds its devices until it is gone.
    deadline = time.monotonic() + KILL_WAIT_S
    while True:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return proc.poll()


def stop_servers(servers: Sequence[Server], grace_s: float = STOP_GRACE_S) -> None:
    """Stop all servers in parallel (each has its own bounded wait)."""
    threads = [threading.Thread(target=stop_server, args=(s, grace_s), daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(grace_s + 2 * KILL_WAIT_S + 1)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log (read from the end: server logs grow large)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def last_error_line(tail: str) -> str:
    """The most telling line of a crash log: the last one naming an error, else the last line."""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error:" in ln or "Exception" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


# ---------------------------------------------------------------- readiness


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; raises OSError when nothing answers."""
    req = urllib.request.Request(url, headers={"Accept": "application/json", **auth_headers()})
    # No proxies: these are node-local addresses, and sites often set http_proxy for the outside world.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def probe(url: str) -> bool:
    """True when the server answers /health with 200 (or has none: not every OpenAI-compatible server
    does) and /v1/models lists at least one model."""
    try:
        status, _ = http_get(f"{url}/health")
        if status not in (200, 404):
            return False
        status, body = http_get(f"{url}/v1/models")
        return status == 200 and bool(json.loads(body).get("data"))
    except (OSError, ValueError):
        return False


def how_it_ended(returncode: int) -> str:
    """How a process ended, from Popen's returncode (-N for signal N): "exited with code 1" or
    "was killed by signal 9 (SIGKILL)"."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        name = ""
    return f"was killed by signal {-returncode}{name}"


def crash_reason(server: Server, when: str) -> str:
    """One line: which server, where, how it ended and (for an exit code) the log's telling line. A
    killed server's last log line says nothing about its end (often an HTTP access line): left out."""
    code = server.proc.poll()
    ended = "stopped" if code is None else how_it_ended(code)
    text = f"{server.spec.name} on {server.spec.node} {ended} {when}"
    if code is not None and code >= 0:
        text += f": {last_error_line(log_tail(server.log))}"
    return text


def crash_error(server: Server) -> EngineError:
    return EngineError(f"{crash_reason(server, 'while loading')}\n--- last lines of {server.log} ---\n"
                       f"{log_tail(server.log)}")


def wait_ready(servers: Sequence[Server], timeout_s: float, stop: threading.Event | None = None,
               progress: Callable[[str], None] | None = print, every_s: float = 10.0) -> float:
    """Block until every server is ready; returns the seconds it took. Raises EngineError when a server
    exits (within a poll) or when timeout_s passes, and InterruptedError when stop is set."""
    t0 = time.monotonic()
    pending = list(servers)
    last_report = t0
    while pending:
        for s in list(pending):
            if s.proc.poll() is not None:
                raise crash_error(s)
            if probe(s.url):
                pending.remove(s)
                if progress:
                    progress(f"{s.spec.name} ready at {s.url} after {time.monotonic() - s.started:.0f} s")
        if not pending:
            break
        now = time.monotonic()
        if now - t0 > timeout_s:
            names = ", ".join(f"{s.spec.name} ({s.url}, log {s.log})" for s in pending)
            tail = log_tail(pending[0].log, 10)
            raise EngineError(f"not ready after {timeout_s:.0f} s: {names}\n--- last lines of "
                              f"{pending[0].log} ---\n{tail}")
        if progress and now - last_report >= every_s:
            progress(f"waiting for {len(pending)} of {len(servers)} server(s), {now - t0:.0f} s "
                     f"of {timeout_s:.0f} s")
            last_report = now
        if stop is not None:
            if stop.wait(POLL_S):
                raise InterruptedError("stopped while waiting for the engine")
        else:
            time.sleep(POLL_S)
    return time.monotonic() - t0


def launch(specs: Sequence[ServerSpec], logs: Path) -> list[Server]:
    """Start every server; on a failure to start one, stop those already started."""
    servers: list[Server] = []
    try:
        for spec in specs:
            servers.append(start_server(spec, logs))
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def dead(servers: Sequence[Server]) -> list[Server]:
    """Servers whose process has exited (checked while the sweep runs)."""
    return [s for s in servers if s.proc.poll() is not None]


def describe(servers: Sequence[Server]) -> list[dict[str, Any]]:
    """For provenance: what was started where."""
    return [{"name": s.spec.name, "node": s.spec.node, "url": s.url, "command": s.spec.engine_argv,
             "launched": s.spec.argv, "env": s.spec.env, "pid": s.proc.pid, "log": s.log.name}
            for s in servers]
