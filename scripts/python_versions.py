"""The Python versions the package declares, and the venvs that test each one.

Every minor version that pyproject.toml's `requires-python` admits, from the oldest up to the newest
interpreter found on this machine (pyenv's versions, then `python3.X` on PATH), must pass the fast tests:
those that need no Slurm, Ray, vLLM or Chromium. The interpreter that runs the main suite covers its own
version; each other version gets a venv under ${XDG_CACHE_HOME:-~/.cache}/hpcbench/pyvenvs/3.X with this
checkout installed editable (scripts/install-deps.sh makes them; tests/test_python_versions.py runs them).

    python3 scripts/python_versions.py list             # VERSION INTERPRETER VENV per other version
    python3 scripts/python_versions.py run [3.X ...]    # the fast tests in those venvs

Standard library and `packaging` only (a dependency of pytest and pip): it runs on every declared version.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Test files whose tests, less those marked below, need no Slurm, Ray, vLLM or Chromium.
FAST_TESTS = (
    "tests/test_bench_client.py",    # the client against local aiohttp servers
    "tests/test_bench_metrics.py",
    "tests/test_cli_edge.py",        # every user mistake: one line, exit 2
    "tests/test_collect.py",
    "tests/test_config.py",
    "tests/test_pbs_scheduler.py",   # qsub/qstat output replayed
    "tests/test_plan.py",
    "tests/test_render.py",
    "tests/test_report_html.py",
    "tests/test_runtime_engine.py",  # server planning; the real server test is marked vllm
    "tests/test_status.py",
)
HEAVY_MARKERS = ("slurm", "vllm", "ray", "chromium")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Version:
    minor: int
    interpreter: Path | None    # None: declared, but no interpreter found here
    venv: Path

    @property
    def name(self) -> str:
        return f"3.{self.minor}"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def requires_python(pyproject: Path = ROOT / "pyproject.toml") -> str:
    # A regex, not tomllib: this must run on 3.10, which has no tomllib.
    found = re.search(r'^requires-python\s*=\s*["\']([^"\']+)["\']', pyproject.read_text(), re.MULTILINE)
    if not found:
        raise SystemExit(f"{pyproject}: no requires-python in [project]")
    return found.group(1)


def interpreters() -> dict[int, Path]:
    """CPython 3 interpreters by minor version: pyenv's (newest patch release), else python3.X on PATH."""
    found: dict[int, tuple[int, Path]] = {}
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for path in pyenv.glob("3.*"):
        m = re.fullmatch(r"3\.(\d+)\.(\d+)", path.name)  # plain releases: not 3.13.0t, not dev builds
        exe = path / "bin" / f"python3.{m.group(1)}" if m else None
        if m and exe is not None and exe.exists():
            minor, patch = int(m.group(1)), int(m.group(2))
            if minor not in found or patch > found[minor][0]:
                found[minor] = (patch, exe)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or folder.rstrip("/").endswith("/shims"):  # pyenv's shims fail for unselected versions
            continue
        for exe in Path(folder).glob("python3.*"):
            m = re.fullmatch(r"python3\.(\d+)", exe.name)
            if m and os.access(exe, os.X_OK):
                found.setdefault(int(m.group(1)), (-1, exe))
    return {minor: exe for minor, (_, exe) in found.items()}


def venv_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hpcbench" / "pyvenvs"


def declared_versions() -> list[Version]:
    """Each declared minor version but the running interpreter's, up to the newest interpreter found."""
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(requires_python())
    found = interpreters()
    this = sys.version_info.minor
    versions = []
    for minor in range(max([this, *found]) + 1):
        # Declared: the specifier admits some 3.minor.patch release.
        if minor != this and any(spec.contains(f"3.{minor}.{patch}") for patch in range(100)):
            versions.append(Version(minor, found.get(minor), venv_root() / f"3.{minor}"))
    return versions


def pytest_command(python: Path) -> list[str]:
    return [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
            "-m", " and ".join(f"not {m}" for m in HEAVY_MARKERS), *FAST_TESTS]


def run_fast_tests(version: Version) -> subprocess.CompletedProcess[str]:
    """The fast tests of this checkout in the version's venv; output captured (stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(pytest_command(version.python), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)


def problem(version: Version) -> str | None:
    """Why the version cannot be tested here, or None."""
    if version.interpreter is None:
        return (f"Python {version.name} is declared (requires-python {requires_python()!r}) but no "
                f"interpreter was found: install it (pyenv install {version.name}), then run scripts/install-deps.sh")
    if not version.python.exists():
        return f"no venv for Python {version.name} at {version.venv}: run scripts/install-deps.sh"
    # From /, so that the package data (sites, templates) is found where the venv installed it.
    where = subprocess.run([str(version.python), "-c", "import hpcbench.templates as t; print(t.__file__)"],
                           cwd="/", capture_output=True, text=True, timeout=60)
    if where.returncode != 0 or not Path(where.stdout.strip()).resolve().is_relative_to(ROOT):
        found = where.stdout.strip() or (where.stderr.strip().splitlines() or ["no output"])[-1]
        return (f"the Python {version.name} venv does not install hpcbench from this checkout ({found}): "
                f"run scripts/install-deps.sh")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="VERSION INTERPRETER VENV for each declared version but this one")
    run = sub.add_parser("run", help="run the fast tests in the venvs")
    run.add_argument("only", nargs="*", metavar="3.X", help="these versions only (default: all)")
    args = ap.parse_args()

    versions = declared_versions()
    if args.command == "list":
        for v in versions:
            print(v.name, v.interpreter or "-", v.venv)
        return 0
    failed = 0
    for v in versions:
        if args.only and v.name not in args.only:
            continue
        why = problem(v)
        if why is None:
            proc = run_fast_tests(v)
            why = None if proc.returncode == 0 else f"exit {proc.returncode}"
            print(f"Python {v.name}: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''}")
        if why:
            print(f"Python {v.name}: FAILED: {why}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
