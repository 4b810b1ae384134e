"""Ray cluster readiness: every planned node alive and its accelerators registered, or an error naming
the nodes that never joined.

All nodes of a test cluster (and some real ones) share one IP and hostname, so each node's Ray daemon
carries a custom resource naming its scheduler node (`node_resource`); the batch script and this
module both use that one function, so the names always agree.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

RESOURCE_PREFIX = "hpcbench-node-"
PROGRESS_EVERY_S = 5.0
POLL_S = 1.0


class ClusterError(RuntimeError):
    """The Ray cluster did not come up as planned; the message names what is missing."""


def node_resource(node: str) -> str:
    """The custom Ray resource that names a scheduler node."""
    return f"{RESOURCE_PREFIX}{node}"


def node_resources_json(node: str) -> str:
    """The value of `ray start --resources` for node."""
    return json.dumps({node_resource(node): 1}, separators=(",", ":"))


@dataclass(frozen=True)
class RayNode:
    name: str        # scheduler node name ("" when the daemon carries no name resource)
    ip: str
    gpus: float
    alive: bool


def parse_nodes(raw: Sequence[dict]) -> list[RayNode]:
    """ray.nodes() entries -> RayNode (dead nodes kept, flagged)."""
    out = []
    for entry in raw:
        res = entry.get("Resources") or {}
        names = [k[len(RESOURCE_PREFIX):] for k in res if k.startswith(RESOURCE_PREFIX)]
        out.append(RayNode(names[0] if names else "", entry.get("NodeManagerAddress", ""),
                           float(res.get("GPU", 0)), bool(entry.get("Alive"))))
    return out


@dataclass
class Status:
    """One look at the cluster against the plan."""

    expected: list[str]
    alive: dict[str, RayNode]
    unexpected: list[RayNode]
    gpus_per_node: int

    @property
    def missing(self) -> list[str]:
        return [n for n in self.expected if n not in self.alive]

    @property
    def short_gpus(self) -> dict[str, float]:
        return {n: node.gpus for n, node in self.alive.items() if node.gpus < self.gpus_per_node}

    @property
    def ready(self) -> bool:
        return not self.missing and not self.short_gpus and not self.unexpected

    def summary(self) -> str:
        text = f"{len(self.alive)} of {len(self.expected)} node(s) alive"
        if self.gpus_per_node:
            total = sum(n.gpus for n in self.alive.values())
            text += f", {total:g} of {self.gpus_per_node * len(self.expected)} GPU(s)"
        if self.missing:
            text += f"; missing: {', '.join(self.missing)}"
        if self.short_gpus:
            text += "; too few GPUs on " + ", ".join(f"{n} ({g:g}/{self.gpus_per_node})"
                                                    for n, g in self.short_gpus.items())
        if self.unexpected:
            text += "; unexpected node(s): " + ", ".join(n.name or n.ip for n in self.unexpected)
        return text


def status(raw: Sequence[dict], expected: Sequence[str], gpus_per_node: int) -> Status:
    alive: dict[str, RayNode] = {}
    unexpected: list[RayNode] = []
    for node in parse_nodes(raw):
        if not node.alive:
            continue
        if node.name in expected and node.name not in alive:
            alive[node.name] = node
        else:
            unexpected.append(node)
    return Status(list(expected), alive, unexpected, gpus_per_node)


def _port_open(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def wait_for_cluster(address: str, nodes: Sequence[str], gpus_per_node: int, timeout_s: float,
                     node_ip: str | None = None, stop: threading.Event | None = None,
                     progress: Callable[[str], None] | None = print,
                     every_s: float = PROGRESS_EVERY_S) -> dict[str, str]:
    """Wait until exactly `nodes` are alive in the Ray cluster at address (head_ip:port), each with at
    least gpus_per_node GPUs. Returns {node name: IP}. Raises ClusterError on timeout, naming the
    missing nodes, and InterruptedError when stop is set."""
    deadline = time.monotonic() + timeout_s
    last = [time.monotonic()]

    def pause() -> None:
        if stop is not None and stop.wait(POLL_S):
            raise InterruptedError("stopped while waiting for Ray")
        if stop is None:
            time.sleep(POLL_S)

    def report(text: str) -> None:
        if progress and time.monotonic() - last[0] >= every_s:
            progress(f"ray: {text}")
            last[0] = time.monotonic()

    # The head's GCS first, by a plain TCP connect: ray.init against nothing blocks for long.
    while not _port_open(address):
        if time.monotonic() > deadline:
            raise ClusterError(f"Ray head at {address} not reachable after {timeout_s:.0f} s; "
                               f"missing: {', '.join(nodes)} (see logs/ray-*.log)")
        report(f"waiting for the head at {address}")
        pause()

    import ray  # heavy: only here, inside the job

    init_kw = {"address": address, "log_to_driver": False, "logging_level": "ERROR",
               "configure_logging": False}
    if node_ip:
        init_kw["_node_ip_address"] = node_ip
    # ray.init installs its own SIGTERM/SIGINT handlers; the caller's must stay in charge.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    ray.init(**init_kw)
    _restore(saved)
    try:
        while True:
            st = status(ray.nodes(), nodes, gpus_per_node)
            if st.ready:
                if progress:
                    progress(f"ray: {st.summary()}")
                return {name: node.ip for name, node in st.alive.items()}
            if time.monotonic() > deadline:
                raise ClusterError(f"Ray cluster not complete after {timeout_s:.0f} s: {st.summary()} "
                                   "(see logs/ray-<node>.log)")
            report(st.summary())
            pause()
    finally:
        ray.shutdown()
        _restore(saved)


def _restore(handlers: dict) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str]) -> int:
    """`python -m hpcbench.runtime.cluster NODE...`: one `--resources` value per line, for the batch
    script (so the naming lives only in node_resource)."""
    for node in argv:
        print(node_resources_json(node))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
