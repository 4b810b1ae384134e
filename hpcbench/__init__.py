"""hpcbench: LLM inference benchmarks on HPC clusters, end to end."""

__version__ = "0.1.0"
