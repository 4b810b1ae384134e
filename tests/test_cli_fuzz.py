"""Property-based: random command lines for every subcommand, and mutated site and sweep files, never
end in a traceback. Each run exits 0 or 2; a refusal (2) is exactly one stderr line starting with
"hpcbench" and writes nothing; an accepted `submit --dry-run` script passes shellcheck and would create
its experiment under --root.

Commands run in-process through hpcbench.cli.main (fast), each in a fresh folder that is also its working
directory and $HPCBENCH_ROOT. Nothing contacts a scheduler: submits are dry runs, or local-site submits
whose scheduler refuses. Seeded (the same examples every run); HPCBENCH_FUZZ_EXAMPLES=N runs N fresh
random examples per property instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hpcbench.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ON_DEMAND = int(os.environ.get("HPCBENCH_FUZZ_EXAMPLES") or 0)


def budget(examples: int) -> settings:
    """Seeded and bounded by default; HPCBENCH_FUZZ_EXAMPLES=N explores N new examples per property."""
    return settings(max_examples=ON_DEMAND or examples, derandomize=not ON_DEMAND, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- values ----------------------------------------------------------------------------------------------

ODD = ["", " ", "\t", "\n", "a b", "..", ".", "/", "../", "../../etc/passwd", "-", "--", "-x", "--help",
       "$(touch PWNED)", "`touch PWNED`", "'", '"', "\\", "a;b", "a|b", "\x00", "\x1b[31m", "\x7f", "\r",
       "é", "日本語", "🙂", "\u2028", "\x85", "\ufeff", "a" * 300, "../" * 40, "x" * 5000,
       "NaN", "inf", "-0", "0", "1e3", "0x10", "1_000", "１", "٣", "²", "9" * 30, "None", "null", "~", "%s"]
odd = st.one_of(st.sampled_from(ODD), st.text(max_size=12))


def _inside(v: str) -> bool:
    return ".." not in v and not v.startswith(("/", "~"))


# For paths a command reads or writes: odd, but never outside the example's folder ("/", "..", "~").
odd_inside = st.one_of(st.sampled_from([v for v in ODD if _inside(v)]), st.text(max_size=12).filter(_inside))
BOUNDS = ["0", "1", "-1", "3", "12", "16", "64", "131072", "1000000", str(2**63), "9" * 25]


def mostly(valid: st.SearchStrategy, *others: st.SearchStrategy) -> st.SearchStrategy:
    """valid half the time or more: deep paths (accepted scripts) need mostly sensible values."""
    return st.one_of(*[valid] * max(3, len(others)), *others)


count = mostly(st.sampled_from(["1", "2", "4", "8"]), st.sampled_from(BOUNDS), st.integers(-5, 10**6).map(str), odd)
context = mostly(st.sampled_from(["1024", "2048", "8192", "32768"]), count)


@dataclass(frozen=True)
class File:
    """An input file the test writes into the example's inputs folder; its path takes its place in argv."""

    name: str
    text: str
    siblings: tuple[File, ...] = ()
    base: str = ""  # the profile it was made from


# --- site and sweep files --------------------------------------------------------------------------------

def _yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


SITE_BASES = {p.stem: _yaml(p) for p in [*sorted((ROOT / "sites").glob("*.yaml")),
                                           *sorted((ROOT / "tests" / "sites").glob("*.yaml"))]}
SWEEP_BASES = {p.stem: _yaml(p) for p in [*sorted((ROOT / "hpcbench" / "catalog" / "sweeps").glob("*.yaml")),
                                            *sorted((ROOT / "tests" / "sweeps").glob("*.yaml"))]}
# Keys whose values are shell code by design (run as written): hostile text there is the profile's own.
SHELL_CODE = {"setup"}
CPU_BASES = {name for name, data in SITE_BASES.items()
             if data.get("node", {}).get("accelerator") == "cpu" or data.get("extends") == "local"}

weird = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(), odd,
                  st.floats(allow_nan=True, allow_infinity=True),
                  st.lists(st.one_of(st.integers(-2, 5), odd), max_size=3),
                  st.dictionaries(st.sampled_from(["a", "name", "kind", "BAD NAME", "1X", ""]), st.integers(),
                                  max_size=2))


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested mappings and lists."""
    out = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for key, value in items:
        if key in SHELL_CODE:
            continue
        out.append(prefix + (key,))
        out += _paths(value, prefix + (key,))
    return out


@st.composite
def mutated(draw: st.DrawFn, data: dict[str, Any]) -> dict[str, Any]:
    """data with one to three mutations: a key removed, a value replaced, an unknown key added."""
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(weird)
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["colour", "Name", "extra", "scheduler ", "x" * 50, "é", "a-b", "1X",
                                         ""]))] = draw(weird)
    return data


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@st.composite
def site_files(draw: st.DrawFn) -> File:
    base = draw(st.sampled_from(sorted(SITE_BASES)))
    data = draw(mostly(st.just(SITE_BASES[base]), mutated(SITE_BASES[base])))
    data = dict(data) if isinstance(data, dict) else data
    if isinstance(data, dict) and draw(st.integers(0, 7)) == 0:
        data["name"] = draw(st.one_of(odd, st.sampled_from(["../escape", "a/b", "x" * 200, "a\n$(touch PWNED)",
                                                            "ok-name"])))
    siblings: tuple[File, ...] = ()
    if isinstance(data, dict) and draw(st.integers(0, 7)) == 0:
        parent = draw(st.sampled_from(["nosuch", "local", "aurora", "slurm-cuda", "parent.yaml", "site.yaml",
                                       "missing.yaml", "../x.yaml", "", "a b"]))
        data["extends"] = parent if draw(st.booleans()) else draw(weird)
        if parent == "parent.yaml":
            siblings = (File("parent.yaml", _dump(draw(mutated(SITE_BASES["local"])))),)
    text = _dump(data)
    tweak = draw(st.integers(0, 15))
    if tweak == 0:  # the same key twice
        first = text.splitlines()[0] if text.strip() else "name: x"
        text = f"{first}\n{text}"
    elif tweak == 1:  # cut short
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif tweak == 2:
        text = draw(st.sampled_from(["", "[]", "- a\n", "name: [\n", "\t- x", "null", "42", "{a: 1}"]))
    return File("site.yaml", text, siblings, base)


@st.composite
def sweep_files(draw: st.DrawFn) -> File:
    base = SWEEP_BASES[draw(st.sampled_from(sorted(SWEEP_BASES)))]
    data = draw(mostly(st.just(base), mutated(base)))
    data = dict(data) if isinstance(data, dict) else data  # the base stays as it is for the next example
    if isinstance(data, dict) and draw(st.integers(0, 7)) == 0:  # names reach comments, paths and job names
        data["name"] = draw(st.one_of(odd, st.sampled_from(["../escape", "a\n$(touch PWNED)", "ok-name"])))
    if isinstance(data, dict) and draw(st.integers(0, 5)) == 0:
        data["scenarios"] = draw(st.sampled_from([[], None, "x", [{}], [{"name": "a", "input_len": 10**12,
                                                                          "output_len": 1}]]))
    text = _dump(data)
    if draw(st.integers(0, 9)) == 0:
        text = text[: len(text) // 2]
    return File("sweep.yaml", text)


# --- command lines ---------------------------------------------------------------------------------------

SITES = ["local", "aurora", "polaris", "slurm-h100", "slurm-gb200", "slurm-cuda", "slurm-rocm",
         str(ROOT / "tests" / "sites" / "slurm-local.yaml"), str(ROOT / "tests" / "sites" / "pbs-local.yaml")]
MODELS = ["tiny", "8b", "70b", "405b", "TINY", " 8b", "llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct"]
SWEEPS = ["smoke", "aurora-fom", "meta-concurrency", "nvidia-usecases", "alcf-offline-grid",
          *(str(p) for p in sorted((ROOT / "tests" / "sweeps").glob("*.yaml")))]

site_value = st.one_of(st.sampled_from(SITES), st.sampled_from(SITES), site_files(), odd)
model_value = mostly(st.sampled_from(MODELS), odd)
sweep_value = st.one_of(st.sampled_from(SWEEPS), st.sampled_from(SWEEPS), sweep_files(), odd)
PLAN_FLAGS: dict[str, st.SearchStrategy | None] = {
    "--site": site_value, "--model": model_value, "--sweep": sweep_value,
    "--mode": mostly(st.sampled_from(["serve", "replicas", "offline"]), odd),
    "--nodes": count, "--tp": count, "--max-model-len": context,
    "--dtype": mostly(st.sampled_from(["bfloat16", "fp8", "fp4", "float32", "BF16"]), odd),
}
SUBMIT_FLAGS: dict[str, st.SearchStrategy | None] = {
    **PLAN_FLAGS,
    "--account": mostly(st.sampled_from(["PROJ", "a.b@c:d+e-f"]), odd),
    "--queue": mostly(st.sampled_from(["debug", "prod"]), odd),
    "--walltime": mostly(st.sampled_from(["01:00:00", "00:30", "1-00", "2-12:30:00", "99:59:59", "0:0:1"]),
                         st.from_regex(r"[0-9:-]{1,10}", fullmatch=True), odd),
    "--model-path": mostly(st.sampled_from(["org/model", "./weights"]), odd),
    "--engine-timeout": mostly(st.sampled_from(["600", "3600"]), count),
}


# Sites with a model they fit, and sensible values, so that half the examples get past planning.
PAIRS = [("local", "tiny"), ("aurora", "8b"), ("aurora", "70b"), ("polaris", "8b"), ("slurm-h100", "8b"),
         ("slurm-h100", "70b"), ("slurm-gb200", "8b"), ("slurm-rocm", "8b"), (SITES[-2], "tiny"), (SITES[-1], "tiny")]
SENSIBLE: dict[str, st.SearchStrategy | None] = {
    "--sweep": st.sampled_from(SWEEPS), "--mode": st.sampled_from(["serve", "replicas"]),
    "--nodes": st.sampled_from(["1", "2"]), "--tp": st.sampled_from(["1", "2", "4"]),
    "--max-model-len": st.sampled_from(["2048", "8192", "32768"]), "--dtype": st.sampled_from(["bfloat16", "fp8"]),
    "--concurrency": st.sampled_from(["1", "4"]), "--json": None, "--queue": st.sampled_from(["debug", "prod"]),
    "--walltime": st.sampled_from(["01:00:00", "2-00", "00:45:00"]), "--model-path": st.just("org/model"),
    "--engine-timeout": st.sampled_from(["600", "3600"]),
}


@st.composite
def job_options(draw: st.DrawFn, flags: dict[str, st.SearchStrategy | None], most: int = 4) -> list[Any]:
    """options(flags); half the time a site, a model that fits it and sensible values of the other flags."""
    if draw(st.booleans()):
        return draw(options(flags, most))
    site, model = draw(st.sampled_from(PAIRS))
    argv = ["--site", site, "--model", model, *(["--account", "PROJ"] if "--account" in flags else [])]
    return argv + draw(options({k: v for k, v in SENSIBLE.items() if k in flags}, 3))


@st.composite
def options(draw: st.DrawFn, flags: dict[str, st.SearchStrategy | None], most: int = 4) -> list[Any]:
    """Some of flags, in any order, as `--flag value` or `--flag=value`; now and then an unknown one."""
    argv: list[Any] = []
    for flag in draw(st.lists(st.sampled_from(sorted(flags)), unique=True, max_size=most)) if flags else []:
        strategy = flags[flag]
        if strategy is None:
            argv.append(flag)
            continue
        value = draw(strategy)
        if isinstance(value, str) and draw(st.booleans()):
            argv.append(f"{flag}={value}")
        else:
            argv += [flag, value]
    if draw(st.integers(0, 15)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["--bogus", "-x", "--", "extra", "-h"])))
    return argv


# --- running and checking --------------------------------------------------------------------------------

@dataclass
class Outcome:
    code: int
    out: str
    err: str


ENV_KEYS = ("HPCBENCH_ROOT", "HPCBENCH_MODELS", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")


@contextlib.contextmanager
def sandbox(models: Path) -> Iterator[Path]:
    """A fresh folder: cwd/ (the working directory, holding the default root runs/) and inputs/."""
    tmp = Path(tempfile.mkdtemp(prefix="hpcbench-fuzz-"))
    (tmp / "cwd").mkdir()
    (tmp / "inputs").mkdir()
    saved_env = {k: os.environ.get(k) for k in ENV_KEYS}
    saved_cwd = os.getcwd()
    os.environ.update(HPCBENCH_ROOT=str(tmp / "cwd" / "runs"), HPCBENCH_MODELS=str(models),
                      XDG_CONFIG_HOME=str(tmp / "config"), XDG_CACHE_HOME=str(tmp / "cache"))
    os.chdir(tmp / "cwd")
    try:
        yield tmp
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)


def materialize(argv: list[Any], tmp: Path) -> list[str]:
    out = []
    for item in argv:
        if isinstance(item, File):
            for f in (*item.siblings, item):
                (tmp / "inputs" / f.name).write_text(f.text, encoding="utf-8")
            out.append(str(tmp / "inputs" / item.name))
        else:
            out.append(item)
    return out


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run(argv: list[str], tmp: Path) -> Outcome:
    """main(argv) in-process: exit 0 or 2, no exception; a refusal is one line and leaves cwd/ untouched."""
    before = tree(tmp / "cwd")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, --version, refusals
            code = exc.code if isinstance(exc.code, int) else 1
    got = Outcome(code, out.getvalue(), err.getvalue())
    event(f"exit {got.code}")
    assert got.code in (0, 2), (argv, got)
    assert "Traceback" not in got.err, (argv, got.err)
    if got.code == 2:
        lines = got.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("hpcbench"), (argv, got.err)
        assert tree(tmp / "cwd") == before, (argv, "a refusal wrote", tree(tmp / "cwd") - before)
    return got


_checked_scripts: dict[str, str] = {}


def check_dry_run(got: Outcome, argv: list[str], tmp: Path) -> None:
    """An accepted dry run: the script passes shellcheck; the experiment it would create is under the root."""
    if got.code != 0 or "--help" in argv or "-h" in argv:
        return
    created = [line.split("would create ", 1)[1].split(" and submit", 1)[0]
               for line in got.err.splitlines() if line.startswith("# dry run: would create ")]
    assert len(created) == 1, got.err
    root = Path(argv[argv.index("--root") + 1] if "--root" in argv else tmp / "cwd" / "runs").absolute()
    assert Path(os.path.normpath(created[0])).is_relative_to(os.path.normpath(root)), (created[0], root)
    event("script checked")
    key = hashlib.sha256(got.out.replace(created[0], "EXP").encode()).hexdigest()
    if key not in _checked_scripts:
        script = tmp / "job.sh"
        script.write_text(got.out)
        proc = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
        _checked_scripts[key] = proc.stdout if proc.returncode else ""
    assert _checked_scripts[key] == "", (argv, _checked_scripts[key])


@pytest.fixture(scope="module")
def models(tiny_model: Path) -> Path:
    """$HPCBENCH_MODELS holding the tiny model, so no example spends seconds making it."""
    return tiny_model.parent


# --- properties ------------------------------------------------------------------------------------------

@budget(200)
@given(argv=job_options(PLAN_FLAGS | {"--concurrency": count, "--json": None}, most=5))
def test_plan(models: Path, argv: list[Any]) -> None:
    with sandbox(models) as tmp:
        run(["plan", *materialize(argv, tmp)], tmp)


@budget(120)
@given(argv=job_options(SUBMIT_FLAGS, most=5), root=mostly(st.none(), odd))
def test_submit_dry_run(models: Path, argv: list[Any], root: str | None) -> None:
    assert shutil.which("shellcheck"), "shellcheck is missing: run scripts/install-deps.sh"
    with sandbox(models) as tmp:
        full = ["submit", "--dry-run", *(["--root", root] if root is not None else []), *materialize(argv, tmp)]
        check_dry_run(run(full, tmp), full, tmp)


@budget(100)
@given(site=site_files(), sweep=st.one_of(st.none(), sweep_files()))
def test_site_and_sweep_files(models: Path, site: File, sweep: File | None) -> None:
    """Mutated profiles and sweeps through plan and submit --dry-run: refused in one line, or rendered
    into a script that passes shellcheck."""
    assert shutil.which("shellcheck"), "shellcheck is missing: run scripts/install-deps.sh"
    model = "tiny" if site.base in CPU_BASES else "8b"
    with sandbox(models) as tmp:
        files = materialize([site] + ([sweep] if sweep else []), tmp)
        picks = ["--site", files[0], "--model", model, *(["--sweep", files[1]] if sweep else [])]
        run(["plan", *picks], tmp)
        full = ["submit", "--dry-run", *picks, "--account", "PROJ"]
        check_dry_run(run(full, tmp), full, tmp)


@budget(100)
@given(argv=options({k: v for k, v in SUBMIT_FLAGS.items() if k != "--site"} | {
    "--wait": None, "--resume": st.one_of(st.sampled_from(["runs", "no/such/exp"]), odd_inside)}, most=4))
def test_refused_local_submit_leaves_nothing(models: Path, argv: list[Any]) -> None:
    """Real local-site submits whose scheduler refuses: every refusal, early or late, leaves the root empty."""
    from hpcbench.schedulers.base import SchedulerError
    from hpcbench.schedulers.local import LocalScheduler

    with sandbox(models) as tmp, mock.patch.object(LocalScheduler, "submit",
                                                   side_effect=SchedulerError("refused by the test")):
        full = ["submit", "--site", "local", *materialize(argv, tmp)]
        got = run(full, tmp)
        assert got.code == 2 or any(a in ("-h", "--help") for a in full), (full, got)
        assert not (tmp / "cwd" / "runs").exists()


TRACKING = {"status": {"--root": mostly(st.just("runs"), odd_inside), "--json": None},
            "cancel": {"--root": mostly(st.just("runs"), odd_inside)},
            "sites": {"--json": None}, "models": {"--json": None}}


@budget(150)
@given(command=st.sampled_from(["status", "cancel", "sites", "models", "", "nosuch", "--version", "-h", "driver"]),
       data=st.data())
def test_listing_and_tracking(models: Path, command: str, data: st.DataObject) -> None:
    argv = data.draw(options(TRACKING.get(command, {}), most=2))
    if command in ("cancel", "driver"):
        argv.insert(0, data.draw(mostly(st.sampled_from(["123", "runs", "no/such"]), odd_inside)))
    with sandbox(models) as tmp:
        run([command, *argv] if command else argv, tmp)


@budget(60)
@given(argv=options({"-o": mostly(st.just("report"), odd_inside), "--format": mostly(
    st.sampled_from(["csv", "csv,md", "md,html", "parquet", "csv,parquet"]), odd),
    "--site": mostly(st.sampled_from(["aurora", "polaris"]), odd), "--model": mostly(st.just("llama-8b"), odd),
    "--compare": None, "--no-plots": None}, most=5), results=st.booleans(), roots=st.lists(
    mostly(st.sampled_from(["runs", "runs/aurora", "nosuch"]), odd_inside), max_size=2))
def test_collect(models: Path, argv: list[Any], results: bool, roots: list[str]) -> None:
    pytest.importorskip("pandas")
    from hpcbench.report.synthetic import sweep_rows, write_experiment

    if "--compare" in argv:  # two values, sites or directories
        i = argv.index("--compare")
        argv[i + 1:i + 1] = ["aurora", "runs/aurora/llama-8b/20250101T000000Z-aaaaaa"]
    if "--no-plots" not in argv:
        argv.append("--no-plots")  # plots cost seconds each; tests/test_report_html.py draws them
    with sandbox(models) as tmp:
        if results:
            name = "20250101T000000Z-aaaaaa"
            rows = sweep_rows(name, "aurora", "llama-8b", 4)
            write_experiment(tmp / "cwd" / "runs", "aurora", "llama-8b", name, rows)
        run(["collect", *roots, *argv], tmp)


@budget(40)
@given(target=st.one_of(st.sampled_from(["file", "file/tiny", "full", "", " ", "x" * 300, "a\nb", "\x1b",
                                         "runs\x00"]), st.text(alphabet="\n\r\t\x01\x1b\x7f", min_size=1)),
       force=st.booleans())
def test_make_tiny_model_bad_targets(models: Path, target: str, force: bool) -> None:
    """Targets it must refuse: a file, a path under a file, a folder of other files, bad or empty names."""
    with sandbox(models) as tmp:
        (tmp / "cwd" / "file").write_text("x\n")
        (tmp / "cwd" / "full").mkdir()
        (tmp / "cwd" / "full" / "notes.txt").write_text("keep\n")
        got = run(["make-tiny-model", target, *(["--force"] if force else [])], tmp)
        assert got.code == 2, got
        assert (tmp / "cwd" / "full" / "notes.txt").read_text() == "keep\n"


# --- a few through the real entry point ------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["plan", "--tp", "0"], ["plan", "--site", "../../etc/passwd"], ["submit", "--dry-run", "--walltime", "1:99"],
    ["collect", "nosuch", "-o", "out"], ["cancel", "123"], ["status", "--root", "x" * 5000], ["nosuch"],
    ["plan", "--model", "日本語\u2028"],
], ids=lambda a: " ".join(a)[:40])
def test_refusals_through_the_entry_point(tmp_path: Path, argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HPCBENCH_ROOT": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-m", "hpcbench", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 2:
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("hpcbench"), proc.stderr
        assert list(tmp_path.iterdir()) == []
