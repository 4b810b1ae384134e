"""Per-node set-up, run on every node of a job: the node's address by the site's network rule, and the
environment every process started there needs to use it.

HPC nodes have several networks. On Aurora the short host name and the default route belong to the
management network, while Ray, the engine's workers and the benchmark client must use the high-speed
one. vLLM's Ray executor places its workers on `VLLM_HOST_IP` (else the default route's address): if
that is not the address the node's Ray daemon registered with, placement waits 30 minutes and fails.
So one rule (site `network`) decides the address on each node, head and workers alike, and both Ray's
`--node-ip-address` and `VLLM_HOST_IP` come from it.

    python -m hpcbench.runtime.node address EXP              # print this node's address
    python -m hpcbench.runtime.node exec EXP NODE ROLE -- ARGV...
        # record this node (logs/node-NODE-ROLE.json), set VLLM_HOST_IP and GLOO_SOCKET_IFNAME, and
        # exec ARGV with "{node_ip}" in any argument replaced by the address
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcbench.config.site import NetworkSettings

PLACEHOLDER = "{node_ip}"
_SIOCGIFADDR = 0x8915


class NodeError(RuntimeError):
    """This node has no address the site's network rule accepts; the message says what was tried."""


def interface_addresses() -> dict[str, str]:
    """IPv4 address of every interface that has one (the primary address), by interface name."""
    out: dict[str, str] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            out[name] = socket.inet_ntoa(packed[20:24])
    return out


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def resolve(name: str) -> list[str]:
    """IPv4 addresses of a host name, sorted (ALCF's guide takes the first of `getent hosts | sort`)."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NodeError(f"cannot resolve {name}: {exc.strerror}") from None
    return sorted({str(info[4][0]) for info in infos}, key=lambda a: ipaddress.IPv4Address(a))


def node_address(net: NetworkSettings, local: dict[str, str] | None = None) -> str:
    """This node's address by the rule."""
    local = interface_addresses() if local is None else local
    rule = net.address
    if rule == "loopback":
        return "127.0.0.1"
    if rule == "dns":
        name = short_hostname() + net.dns_suffix
        found = resolve(name)
        mine = [a for a in found if a in local.values()]
        if not found:
            raise NodeError(f"{name} has no IPv4 address")
        # Prefer an address this node really holds; a name may list several.
        return (mine or found)[0]
    if rule == "interface":
        if net.interface not in local:
            raise NodeError(f"no IPv4 address on interface {net.interface} (interfaces with one: "
                            f"{', '.join(f'{k} {v}' for k, v in sorted(local.items())) or 'none'})")
        return local[str(net.interface)]
    if rule == "subnet":
        cidr = ipaddress.IPv4Network(str(net.subnet), strict=False)
        inside = [a for a in local.values() if ipaddress.IPv4Address(a) in cidr]
        if not inside:
            raise NodeError(f"no address of this node is in {cidr} (addresses: "
                            f"{', '.join(sorted(local.values())) or 'none'})")
        return sorted(inside, key=ipaddress.IPv4Address)[0]
    # hostname-i: the first address `hostname -I` lists (not loopback)
    try:
        words = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        words = []
    candidates = [w for w in words if "." in w] or [a for a in local.values() if not a.startswith("127.")]
    if not candidates:
        raise NodeError("`hostname -I` lists no IPv4 address")
    return candidates[0]


def interface_of(address: str, local: dict[str, str]) -> str | None:
    return next((name for name, a in local.items() if a == address), None)


def node_env(address: str, local: dict[str, str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """What processes on this node need so that they use the address: vLLM's VLLM_HOST_IP, and the
    interface torch.distributed's gloo uses (else it takes the host name's address, the wrong network)."""
    environ = os.environ if environ is None else environ
    env = {"VLLM_HOST_IP": address}
    iface = interface_of(address, local)
    if iface and "GLOO_SOCKET_IFNAME" not in environ:
        env["GLOO_SOCKET_IFNAME"] = iface
    return env


def describe(node: str, role: str, address: str, local: dict[str, str], rule: str) -> dict[str, Any]:
    """What logs/node-NODE-ROLE.json holds: where this process landed and what it may use."""
    return {"node": node, "role": role, "hostname": socket.gethostname(), "address": address, "rule": rule,
            "interfaces": local, "cpus_allowed": sorted(os.sched_getaffinity(0)), "pid": os.getpid()}


def _network(exp: Path) -> NetworkSettings:
    from hpcbench.config.job import Job
    from hpcbench.experiment import CONFIG

    return Job.load(exp / CONFIG).site.network


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if len(args) == 2 and args[0] == "address":
        local = interface_addresses()
        print(node_address(_network(Path(args[1])), local))
        return 0
    if len(args) >= 6 and args[0] == "exec" and args[4] == "--":
        exp, node, role, command = Path(args[1]), args[2], args[3], args[5:]
        net = _network(exp)
        local = interface_addresses()
        address = node_address(net, local)
        env = node_env(address, local)
        from hpcbench.experiment import write_json

        write_json(exp / "logs" / f"node-{node}-{role}.json", describe(node, role, address, local, net.address))
        os.environ.update(env)
        command = [a.replace(PLACEHOLDER, address) for a in command]
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            raise NodeError(f"cannot run {command[0]}: {exc.strerror}") from None
    print("usage: python -m hpcbench.runtime.node address EXP | exec EXP NODE ROLE -- ARGV...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except NodeError as exc:
        print(f"hpcbench: {short_hostname()}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
