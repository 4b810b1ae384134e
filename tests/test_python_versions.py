"""Every Python version the package declares passes the fast tests (no Slurm, Ray, vLLM or Chromium).

The interpreter running this suite covers its own version. Each other version that `requires-python`
admits, up to the newest interpreter installed here, runs the fast tests of this checkout in its own venv
(scripts/install-deps.sh makes them; scripts/python_versions.py says which versions and where). A declared
version without an interpreter or a venv fails the test: it is never skipped.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.pyversions

ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 60


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("python_versions", ROOT / "scripts" / "python_versions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


pv = _load_script()
VERSIONS = pv.declared_versions()


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])


def test_the_fast_tests_exist_and_exclude_this_file() -> None:
    assert f"tests/{Path(__file__).name}" not in pv.FAST_TESTS  # the venvs must not run it again
    assert [f for f in pv.FAST_TESTS if not (ROOT / f).is_file()] == []


def test_every_admitted_interpreter_here_is_tested_and_no_version_is_left_out() -> None:
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(pv.requires_python())
    tested = sorted([v.minor for v in VERSIONS] + [sys.version_info.minor])
    assert tested == list(range(tested[0], tested[-1] + 1))
    assert all(v.venv == pv.venv_root() / v.name for v in VERSIONS)
    for minor, exe in pv.interpreters().items():
        full = subprocess.run([str(exe), "-c", "import platform; print(platform.python_version())"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        assert full.startswith(f"3.{minor}.")
        assert (minor in tested) == spec.contains(full), (exe, full, pv.requires_python())


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_fast_tests_pass(version: pv.Version) -> None:
    problem = pv.problem(version)
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        proc = pv.run_fast_tests(version)
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
        pytest.fail(f"the fast tests on Python {version.name} took over {exc.timeout:g} s:\n{_tail(out)}",
                    pytrace=False)
    if proc.returncode != 0 or " passed" not in proc.stdout:
        pytest.fail(f"the fast tests failed on Python {version.name} (exit {proc.returncode}), "
                    f"{' '.join(pv.pytest_command(version.python))}:\n{_tail(proc.stdout)}", pytrace=False)
