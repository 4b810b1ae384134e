"""How to run one process on one node of the job: the single source for the batch script (its
`on_node` function) and the in-job driver (replica servers on other nodes).

`--overlap` lets a Slurm step share the node with the long-running Ray step. PALS (Aurora, Polaris)
documents `--ppn`/`--hosts`; MPICH's hydra accepts the same spellings.
"""

from __future__ import annotations

PREFIXES: dict[str, list[str]] = {
    "srun": ["srun", "--nodes=1", "--ntasks=1", "--overlap", "--nodelist"],
    "mpiexec": ["mpiexec", "-n", "1", "--ppn", "1", "--hosts"],
    "local": [],
}


def node_prefix(launcher: str) -> list[str]:
    """The words before the node name (empty for local: everything runs right here)."""
    return list(PREFIXES[launcher])


def node_command(launcher: str, node: str, argv: list[str]) -> list[str]:
    """argv, run on node through the launcher."""
    prefix = node_prefix(launcher)
    return [*prefix, node, *argv] if prefix else list(argv)
