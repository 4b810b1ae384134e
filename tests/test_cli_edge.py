"""The command line's refusals: every user mistake is one line on stderr, exit status 2, no traceback, and
nothing written (issue 14). Each case runs the real command in a subprocess inside an empty folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_SITES = ROOT / "tests" / "sites"


@dataclass
class Box:
    """An empty working folder with every default location of hpcbench inside it."""

    home: Path
    env: dict[str, str]

    def run(self, *args: str, prelude: str = "", stdout: int | None = subprocess.PIPE,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        # prelude: Python run before the command line (e.g. to block an import), through `python -c`.
        entry = "\nimport sys\nfrom hpcbench.cli import main\nsys.exit(main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", prelude + entry] if prelude else [sys.executable, "-m", "hpcbench"]
        return subprocess.run([*cmd, *args], cwd=self.home, env={**self.env, **(env or {})}, stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=120)

    def files(self) -> set[str]:
        return {str(p.relative_to(self.home)) for p in self.home.rglob("*")}

    def refused(self, *args: str, **kw) -> str:
        """Run a command that must be refused; its one stderr line."""
        before = self.files()
        proc = self.run(*args, **kw)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("hpcbench"), proc.stderr
        assert proc.stdout == "", proc.stdout[-2000:]
        assert self.files() == before, "a refusal wrote something"
        return lines[0]


@pytest.fixture
def box(tmp_path: Path) -> Box:
    home = tmp_path / "cwd"
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HPCBENCH_ROOT": str(home / "runs"), "HPCBENCH_MODELS": str(tmp_path / "models"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return Box(home, env)


# --- 1. counts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, flag, given", [
    (["plan", "--tp", "0"], "--tp", "0"),
    (["plan", "--tp", "-2"], "--tp", "-2"),
    (["plan", "--tp", "two"], "--tp", "'two'"),
    (["plan", "--tp", "1.5"], "--tp", "'1.5'"),
    (["plan", "--nodes", "0"], "--nodes", "0"),
    (["plan", "--nodes", "-1"], "--nodes", "-1"),
    (["plan", "--max-model-len", "-5"], "--max-model-len", "-5"),
    (["plan", "--max-model-len", "0"], "--max-model-len", "0"),     # not "the default"
    (["plan", "--concurrency", "0"], "--concurrency", "0"),         # not 1
    (["submit", "--dry-run", "--engine-timeout", "0"], "--engine-timeout", "0"),
    (["submit", "--dry-run", "--engine-timeout", "-1"], "--engine-timeout", "-1"),
    (["submit", "--dry-run", "--tp", "0"], "--tp", "0"),
    (["submit", "--max-model-len", ""], "--max-model-len", "''"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_counts_must_be_whole_numbers_of_at_least_one(box: Box, args: list[str], flag: str, given: str) -> None:
    line = box.refused(*args)
    assert f"argument {flag}: " in line and "whole number of at least 1" in line and f"(got {given})" in line


def test_the_planner_refuses_counts_below_one_in_the_same_words() -> None:
    from hpcbench.config import load_site, resolve_model
    from hpcbench.plan import PlanError, plan

    model, site = resolve_model("tiny"), load_site("local")
    for kw in ({"tp": 0}, {"nodes": -1}, {"concurrency": 0}, {"max_model_len": -5}):
        with pytest.raises(PlanError, match="must be a whole number of at least 1"):
            plan(model, site, **{"max_model_len": 512, **kw})


# --- 2. empty values and control characters ------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["plan", "--model", ""], ["plan", "--site", ""], ["plan", "--sweep", "  "], ["plan", "--dtype", ""],
    ["submit", "--site", "\t"], ["submit", "--model", ""], ["submit", "--sweep", ""], ["submit", "--account", ""],
    ["submit", "--queue", " "], ["submit", "--model-path", ""], ["submit", "--root", ""], ["submit", "--resume", ""],
    ["status", "--root", ""], ["cancel", ""], ["cancel", " "], ["collect", "-o", ""], ["collect", ""],
    ["collect", "--site", ""], ["make-tiny-model", ""], ["driver", ""],
], ids=lambda a: " ".join(map(repr, a)))
def test_empty_values_never_fall_back_to_defaults(box: Box, args: list[str]) -> None:
    """A script passing an unset variable must not run with the defaults (the local site, the login node)."""
    assert "value is empty" in box.refused(*args)


@pytest.mark.parametrize("flag, value", [
    ("--model", "tiny\n"), ("--site", "local\x1b[2J"), ("--sweep", "smoke\r"), ("--dtype", "bf16\x07"),
    ("--model-path", "/models/x\ny"), ("--root", "runs\x7f"), ("--walltime", "01:00:00\n"),
])
def test_control_characters_in_any_value_are_refused(box: Box, flag: str, value: str) -> None:
    line = box.refused("submit", "--dry-run", flag, value)
    assert f"argument {flag}:" in line and "control character" in line


def test_unknown_arguments_with_control_characters_stay_one_line(box: Box) -> None:
    line = box.refused("plan", "--bogus", "a\nb\x1b")
    assert "unrecognized arguments: --bogus a\\nb\\x1b" in line


# --- 3. walltime, account and queue --------------------------------------------------------------------

@pytest.mark.parametrize("walltime", ["5", "1:99:00", "soon", "1-", "-1:00:00", "²:00:00", "00:00:00"])
def test_bad_walltime_is_one_line_naming_the_flag(box: Box, walltime: str) -> None:
    line = box.refused("submit", "--dry-run", "--walltime", walltime)
    assert line.startswith("hpcbench submit: error: argument --walltime: ") and "walltime" in line


@pytest.mark.parametrize("flag", ["--account", "--queue"])
@pytest.mark.parametrize("value", ["my project", "it's", 'a"b', "a;b", "$(id)", "a\nb"])
def test_account_and_queue_are_one_scheduler_word(box: Box, flag: str, value: str) -> None:
    line = box.refused("submit", "--site", "aurora", "--model", "8b", "--dry-run", f"{flag}={value}")
    assert f"argument {flag}:" in line


# --- 4. closed pipes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["sites"], ["models"], ["plan", "--json"], ["--help"], ["plan", "--help"],
                                  ["submit", "--dry-run"]], ids=" ".join)
def test_output_to_a_closed_pipe_ends_quietly_with_141(box: Box, args: list[str]) -> None:
    """As `hpcbench sites | head -1` once the reader has gone: no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = box.run(*args, stdout=write)
    finally:
        os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


# --- 5. missing extras ----------------------------------------------------------------------------------

def blocking(*modules: str) -> str:
    """Python that makes importing the modules fail as if they were not installed."""
    return textwrap.dedent(f"""\
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {modules!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
        """)


def write_results(root: Path) -> None:
    from hpcbench.report.synthetic import sweep_rows, write_experiment

    name = "20250101T000000Z-aaaaaa"
    write_experiment(root, "aurora", "llama-8b", name, sweep_rows(name, "aurora", "llama-8b", 3))


@pytest.mark.parametrize("blocked, args", [
    ("pandas", ["--no-plots"]),
    ("matplotlib", []),  # the plots need it: found before any file of the report is written
])
def test_collect_without_the_report_extra_names_it(box: Box, blocked: str, args: list[str]) -> None:
    write_results(box.home / "runs")
    line = box.refused("collect", "runs", "-o", "report", *args, prelude=blocking(blocked))
    assert line == (f"hpcbench: error: collect needs the 'report' extra (no module named {blocked!r}): "
                    "pip install 'hpcbench[report]'")


def test_make_tiny_model_without_the_model_extra_names_it(box: Box) -> None:
    line = box.refused("make-tiny-model", "new/tiny", prelude=blocking("tokenizers"))
    assert "make-tiny-model needs the 'model' extra" in line and "pip install 'hpcbench[model]'" in line


def test_submit_that_would_make_the_tiny_model_without_the_model_extra_names_it(box: Box) -> None:
    line = box.refused("submit", "--site", "local", "--model", "tiny", prelude=blocking("numpy"))
    assert "submit needs the 'model' extra (no module named 'numpy')" in line


def test_driver_without_the_bench_extra_names_it_and_records_why(box: Box) -> None:
    exp = box.home / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text("{}\n")
    proc = box.run("driver", str(exp), prelude=blocking("aiohttp"))
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "hpcbench: error: driver needs the 'bench' extra (no module named 'aiohttp'): pip install 'hpcbench[bench]'"]
    assert "'bench' extra" in json.loads((exp / "phase.json").read_text())["detail"]


def test_extras_table_matches_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    from hpcbench.cli import EXTRAS

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        names = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower() for req in declared[extra]}
        assert set(modules) == names, extra


# --- 6. the hidden driver command -----------------------------------------------------------------------

def test_help_does_not_list_the_internal_driver_command(box: Box) -> None:
    out = box.run("--help")
    assert out.returncode == 0 and "==SUPPRESS==" not in out.stdout and "driver" not in out.stdout
    assert box.run("driver", "--help").returncode == 0  # still there for the batch script


def test_unknown_command_lists_only_the_users_commands(box: Box) -> None:
    line = box.refused("nosuch")
    assert "invalid choice: 'nosuch'" in line and "'collect'" in line and "driver" not in line


def test_empty_root_variable_is_the_default_root_not_the_current_folder(box: Box) -> None:
    exp = box.home / "20250101T000000Z-aaaaaa"  # an experiment right in the current folder
    exp.mkdir()
    (exp / "config.yaml").write_text("{}\n")
    (exp / "submit.json").write_text('{"scheduler": "local", "job_id": "1.1", "site": "local"}\n')
    proc = box.run("status", env={"HPCBENCH_ROOT": ""})
    assert proc.returncode == 0 and proc.stdout.startswith("no submitted experiments under hpcbench-runs"), \
        proc.stdout + proc.stderr


def test_driver_refuses_a_folder_that_is_not_an_experiment_and_creates_nothing(box: Box) -> None:
    line = box.refused("driver", "no/such/exp")
    assert "no/such/exp is not an experiment directory (no config.yaml)" in line


def test_command_help_shows_defaults_and_examples(box: Box) -> None:
    for command in ("plan", "submit", "collect", "status"):
        text = box.run(command, "--help").stdout
        assert "examples:" in text and "(default:" in text, command


# --- 7. one default context -----------------------------------------------------------------------------

@pytest.mark.parametrize("site, model, extra", [("local", "tiny", []), ("aurora", "405b", ["--account", "P"]),
                                                ("slurm-h100", "70b", [])])
def test_plan_and_submit_size_the_engine_for_the_same_context(box: Box, site: str, model: str,
                                                               extra: list[str]) -> None:
    planned = box.run("plan", "--site", site, "--model", model, "--json")
    assert planned.returncode == 0, planned.stderr
    script = box.run("submit", "--site", site, "--model", model, "--dry-run", *extra)
    assert script.returncode == 0, script.stderr
    context = json.loads(planned.stdout)["max_model_len"]
    assert f"--max-model-len {context} " in script.stdout


# --- 8. the memory a refused layout would use -----------------------------------------------------------

@pytest.mark.parametrize("tp, gib", [("1", "70.0"), ("2", "140.0")])
def test_fit_refusal_counts_only_the_accelerators_the_plan_would_use(box: Box, tp: str, gib: str) -> None:
    line = box.refused("plan", "--site", "slurm-h100", "--model", "405b", "--tp", tp, "--nodes", "1")
    assert f"TP {tp} x PP 1 = {tp} accelerator(s) x 70.0 GiB usable" in line and line.endswith(f"= {gib} GiB")
    assert "280" not in line


# --- 9. a refused submit leaves no folders --------------------------------------------------------------

def fake_sbatch(box: Box) -> dict[str, str]:
    bin_dir = box.home.parent / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_scheduler_refusal_removes_the_experiment_and_the_folders_made_for_it(box: Box) -> None:
    model = box.home.parent / "model"
    model.mkdir()
    line = box.refused("submit", "--site", str(TEST_SITES / "slurm-local.yaml"), "--model", "tiny",
                       "--model-path", str(model), "--sweep", "smoke", "--root", "new/runs", env=fake_sbatch(box))
    assert "Invalid account" in line
    assert not (box.home / "new").exists()


def test_scheduler_refusal_keeps_folders_that_were_there(box: Box) -> None:
    model = box.home.parent / "model"
    model.mkdir()
    (box.home / "runs" / "slurm-local" / "tiny").mkdir(parents=True)
    (box.home / "runs" / "other.txt").write_text("kept\n")
    box.refused("submit", "--site", str(TEST_SITES / "slurm-local.yaml"), "--model", "tiny",
                "--model-path", str(model), "--root", "runs", env=fake_sbatch(box))
    assert (box.home / "runs" / "slurm-local" / "tiny").is_dir()
    assert (box.home / "runs" / "other.txt").read_text() == "kept\n"


def test_root_that_is_a_file_is_refused_in_one_line(box: Box) -> None:
    (box.home / "runs").write_text("not a folder\n")
    line = box.refused("submit", "--site", "local", "--model", "tiny", "--model-path", str(box.home),
                       "--root", "runs")
    assert "cannot create the experiment directory" in line and "choose another --root" in line


# --- paths the user gives ------------------------------------------------------------------------------

def test_make_tiny_model_never_replaces_a_folder_holding_other_files(box: Box) -> None:
    """The model's folder is replaced whole: a folder of anything else is refused, not deleted."""
    (box.home / "notes").mkdir()
    (box.home / "notes" / "keep.txt").write_text("precious\n")
    line = box.refused("make-tiny-model", "notes", "--force")
    assert "holds files that are not the tiny model's (keep.txt)" in line
    assert (box.home / "notes" / "keep.txt").read_text() == "precious\n"


def test_make_tiny_model_into_a_file_is_refused(box: Box) -> None:
    (box.home / "f").write_text("x\n")
    assert "exists and is not a folder" in box.refused("make-tiny-model", "f")


def test_a_path_the_system_refuses_is_one_line(box: Box) -> None:
    assert "File name too long" in box.refused("status", "--root", "x" * 5000)


# Names become paths, job names and comment lines of the script: site and sweep files refuse unsafe ones
# (hpcbench/config).

def test_site_name_cannot_lead_the_experiment_out_of_the_root(box: Box) -> None:
    site = box.home.parent / "site.yaml"
    site.write_text("extends: local\nname: ../escape\n")
    line = box.refused("submit", "--site", str(site), "--dry-run")
    assert str(site) in line and "name" in line


def test_sweep_name_with_a_newline_cannot_reach_the_script(box: Box) -> None:
    sweep = box.home.parent / "sweep.yaml"
    sweep.write_text('name: "x\\n$(touch PWNED)"\nscenarios:\n  - {name: a, input_len: 8, output_len: 8}\n')
    line = box.refused("submit", "--sweep", str(sweep), "--dry-run")
    assert str(sweep) in line and "name" in line


# A damaged submit.json (edited by hand, cut short by a full disk) must not be a traceback.

def damaged_experiment(box: Box, record: str) -> Path:
    exp = box.home / "runs" / "local" / "tiny" / "20250101T000000Z-aaaaaa"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text("{}\n")
    (exp / "submit.json").write_text(record)
    return exp


def test_cancel_with_a_damaged_submit_record_is_one_line(box: Box) -> None:
    exp = damaged_experiment(box, "{}\n")
    assert "submit.json" in box.refused("cancel", str(exp))


def test_status_with_a_damaged_submit_record_has_no_traceback(box: Box) -> None:
    damaged_experiment(box, "[1]\n")
    proc = box.run("status")
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr


def test_sites_lists_the_good_profiles_and_warns_about_a_broken_one(box: Box) -> None:
    (box.home / "sites").mkdir()
    (box.home / "sites" / "broken.yaml").write_text("name: [\n")
    proc = box.run("sites")
    assert proc.returncode == 0 and "local" in proc.stdout and "broken" not in proc.stdout
    [warning] = proc.stderr.splitlines()
    assert warning.startswith("hpcbench: warning: skipped ") and "broken.yaml" in warning


# --- resume, damaged and unusual files, closed output ----------------------------------------------------

def resumable(box: Box, site: str) -> Path:
    """An experiment as submit leaves it after a run that ended: config.yaml, job.sh, the end records."""
    from fixtures.vllm import make_job
    from hpcbench.render import render_job

    exp = box.home / "runs" / "exp"
    job = make_job(exp, box.home / "model", site=site)
    (exp / "job.sh").write_text(render_job(job))
    (exp / "finished").write_text('{"exit_code": 124, "reason": "timeout"}\n')
    (exp / "phase.json").write_text('{"phase": "failed", "detail": "walltime"}\n')
    return exp


def test_resume_dry_run_shows_the_script_and_changes_nothing(box: Box) -> None:
    exp = resumable(box, "local")
    before = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}
    proc = box.run("submit", "--resume", str(exp), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (exp / "job.sh").read_text() and "nothing submitted" in proc.stderr
    assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before  # no job, no submit.json


def test_resume_the_scheduler_refuses_keeps_the_last_end_records(box: Box, tmp_path: Path) -> None:
    exp = resumable(box, str(TEST_SITES / "slurm-local.yaml"))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\n"
                                 "exit 1\n")
    (fake / "sbatch").chmod(0o755)
    before = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}
    line = box.refused("submit", "--resume", str(exp), env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert "Invalid account" in line
    assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before


def test_site_file_that_is_not_utf8_is_one_line(box: Box) -> None:
    site = box.home / "latin1.yaml"
    site.write_bytes("extends: local\ndescription: caf\xe9\n".encode("latin-1"))
    assert "latin1.yaml: not UTF-8 text" in box.refused("plan", "--site", str(site))


def test_numbers_written_as_text_in_a_site_file_load_as_numbers(box: Box) -> None:
    site = box.home / "quoted.yaml"
    site.write_text("extends: slurm-h100\nnode: {accelerators: '4', memory_gib: '80'}\n")
    proc = box.run("plan", "--site", str(site), "--model", "8b")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_damaged_phase_record_has_no_traceback(box: Box) -> None:
    exp = damaged_experiment(box, '{"scheduler": "local", "job_id": "1.1", "site": "local"}\n')
    (exp / "phase.json").write_text("[1]\n")
    proc = box.run("status")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_closed_stdout_and_a_full_disk_are_not_tracebacks(box: Box) -> None:
    closed = subprocess.run([sys.executable, "-m", "hpcbench", "sites"], cwd=box.home, env=box.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120,
                            preexec_fn=lambda: os.close(1))
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed.stderr
    with open("/dev/full", "w") as full:
        proc = box.run("--help", stdout=full)
    assert proc.returncode == 2 and proc.stderr == "hpcbench: error: cannot write the output: No space left on device\n"
