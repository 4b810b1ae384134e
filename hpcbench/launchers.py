"""How to run one process on one node of the job: the single source for the batch script (its
`on_node` function) and the in-job driver (replica servers on other nodes).

`--overlap` lets a Slurm step share the node with the long-running Ray step, and `--cpus-per-task`
gives each step the job's CPUs on that node (SLURM_CPUS_ON_NODE, passed on as HPCBENCH_STEP_CPUS): where the cluster binds tasks to cores (task/affinity,
task/cgroup), a step without it runs on one core, and so would every Ray worker and vLLM process it
starts. PALS (Aurora, Polaris) documents `--ppn`/`--hosts`; MPICH's hydra accepts the same spellings;
neither binds a single process to cores unless told to.
"""

from __future__ import annotations


# Where the batch script puts its own "$STEP_CPUS" (the CPUs the job holds on a node, known at run time).
STEP_CPUS_TOKEN = "@STEP_CPUS@"


def node_prefix(launcher: str, cpus: int | str | None = None) -> list[str]:
    """The words before the node name (empty for local: everything runs right here)."""
    if launcher == "srun":
        cpus_arg = [f"--cpus-per-task={cpus}"] if cpus else []
        return ["srun", "--nodes=1", "--ntasks=1", *cpus_arg, "--overlap", "--nodelist"]
    if launcher == "mpiexec":
        return ["mpiexec", "-n", "1", "--ppn", "1", "--hosts"]
    return []


def node_command(launcher: str, node: str, argv: list[str], cpus: int | str | None = None) -> list[str]:
    """argv, run on node through the launcher."""
    prefix = node_prefix(launcher, cpus)
    return [*prefix, node, *argv] if prefix else list(argv)
