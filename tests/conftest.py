"""Shared fixtures live in tests/fixtures/ (one module per real part) and are loaded here."""

pytest_plugins = [
    "fixtures.slurm",
    "fixtures.vllm",
]
