"""Shared fixtures live in tests/fixtures/ (one module per real part) and are loaded here.

The suite runs on two workers (pytest-xdist, `-n 2 --dist loadgroup --no-loadscope-reorder` in
pyproject's addopts; `-n 0` runs it in one process). Each test module is one group, so its servers start
once; every test on the shared Slurm clusters is in one group, as the clusters live once per worker.
Groups are handed out in collection order (xdist would otherwise start with the groups of most tests),
and the longest come first, so the run ends soon after the longest group does.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "fixtures.slurm",
    "fixtures.vllm",
]

# Longest first (minutes on two shared cores); every other module comes after these, in file order.
SLOW_GROUPS = ("slurm", "test_local_jobs", "test_pbs_script", "test_python_versions", "test_quickstart",
               "test_bench_offline", "test_runtime_driver", "test_runtime_cluster", "test_bench_peer")


def _group(item: pytest.Item) -> str:
    return "slurm" if item.get_closest_marker("slurm") else item.module.__name__.rpartition(".")[2]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    rank = {name: i for i, name in enumerate(SLOW_GROUPS)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: file order within a rank
