"""The benchmark: load generation against vLLM endpoints, offline batches, per-point metrics.

run_sweep (server modes) and run_offline_sweep (mode offline) are what the in-job driver calls.
"""

from hpcbench.bench.offline import run_offline_sweep
from hpcbench.bench.rows import SweepResult
from hpcbench.bench.sweep import run_sweep

__all__ = ["SweepResult", "run_offline_sweep", "run_sweep"]
