"""Find experiment directories under the roots, warning (not failing) on directories that cannot be read.

Same rule as hpcbench.experiment.find_experiments (a directory holding config.yaml, oldest first), but
walked with os.scandir so an unreadable directory is reported instead of silently skipped, and so a
root with thousands of experiments costs one scandir per directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpcbench.experiment import CONFIG


def find_experiment_dirs(roots: list[Path], warnings: list[str]) -> list[Path]:
    """Experiment directories under roots, sorted like find_experiments; problems appended to warnings."""
    found: dict[str, Path] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            warnings.append(f"{root}: no such directory")
            continue
        _walk(str(root), found, warnings)
    return sorted(found.values(), key=lambda p: (p.name, str(p)))


def _walk(top: str, found: dict[str, Path], warnings: list[str]) -> None:
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            warnings.append(f"{path}: cannot read directory ({exc.strerror or exc})")
            continue
        if any(e.name == CONFIG and e.is_file() for e in entries):
            found.setdefault(os.path.realpath(path), Path(path))
            continue  # an experiment holds no nested experiments
        stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
