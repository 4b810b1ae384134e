"""Site profiles, the model catalog and sweeps: every built-in loads; every bad input gets one message."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpcbench.config import ConfigError, load_models, load_site, load_sweep, site_names, sweep_names
from hpcbench.config.site import builtin_sites

GOOD = textwrap.dedent("""\
    name: mysite
    scheduler: {kind: slurm, max_nodes: 4}
    launcher: srun
    node: {accelerator: cuda, accelerators: 4, memory_gib: 80, cpus: 64}
    """)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcbench", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("name", sorted(builtin_sites()))
def test_every_builtin_site_loads(name):
    site = load_site(name)
    assert site.name == name
    assert site.node.accelerators >= 1


def test_builtin_sites_present():
    assert {"aurora", "polaris", "slurm-h100", "slurm-gb200", "local"} <= set(site_names())


def test_every_sweep_and_model_loads():
    assert len(load_models()) >= 9
    for name in sweep_names():
        assert load_sweep(name).points()


def test_extends_overrides_keys(tmp_path):
    (tmp_path / "child.yaml").write_text("extends: aurora\nscheduler: {account: MYPROJ, queue: prod}\n")
    site = load_site(str(tmp_path / "child.yaml"))
    assert site.name == "child"
    assert (site.scheduler.account, site.scheduler.queue) == ("MYPROJ", "prod")
    assert site.scheduler.filesystems == "home:flare"  # kept from the parent
    assert site.node.accelerators == 12


def test_user_sites_folder_is_searched(tmp_path):
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "mysite.yaml").write_text(GOOD)
    out = run_cli("sites", cwd=tmp_path)
    assert out.returncode == 0 and "mysite" in out.stdout


@pytest.mark.parametrize("text, key, expected", [
    ("name: x\nscheduler: {kind: slurm\n", "line", "malformed YAML"),
    (GOOD + "colour: blue\n", "colour", "unknown key (expected one of:"),
    (GOOD.replace("accelerators: 4", "accelerators: four"), "node.accelerators", "valid integer"),
    (GOOD.replace("launcher: srun\n", ""), "launcher", "required key is missing"),
    (GOOD.replace("kind: slurm", "kind: lsf"), "scheduler.kind", "'pbs', 'slurm' or 'local'"),
    (GOOD + "hf_home: /data/hub\n", "hf_home", "not hub/ itself"),
    (GOOD + "env: {'BAD NAME': x}\n", "env", "not a valid environment variable name"),
    (GOOD + "extends: nosuchsite\n", "extends", "unknown site 'nosuchsite'"),
    ("- a\n- b\n", "", "expected a mapping"),
])
def test_bad_site_names_file_key_and_expectation(tmp_path, text, key, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_site(str(path))
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert key in message and expected in message, message
    out = run_cli("plan", "--site", str(path))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert expected in out.stderr


def test_extends_cycle_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"extends chain has a cycle: a -> b -> a"):
        load_site(str(tmp_path / "a.yaml"))


def test_bad_sweep_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("scenarios:\n  - {name: x, input_len: 0, output_len: 4}\n")
    with pytest.raises(ConfigError, match=r"scenarios.0.input_len: Value error, values must be >= 1"):
        load_sweep(str(path))


def test_unknown_names_list_known_ones():
    out = run_cli("submit", "--site", "local", "--model", "tiny", "--sweep", "nosuch", "--dry-run")
    assert out.returncode == 2 and "unknown sweep 'nosuch'; known sweeps:" in out.stderr and "smoke" in out.stderr


LIGHT = ["--help"], ["sites"], ["models"], ["plan", "--site", "aurora", "--model", "405b"], ["status", "--root", "."]


@pytest.mark.parametrize("args", LIGHT, ids=lambda a: a[0])
def test_login_node_commands_import_nothing_heavy(args, tmp_path):
    code = ("import sys; from hpcbench.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('pandas', 'ray', 'vllm', 'torch', 'matplotlib', 'numpy', 'aiohttp') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_wheel_ships_sites_templates_and_catalog(tmp_path):
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True)
    import zipfile

    names = zipfile.ZipFile(next(tmp_path.glob("hpcbench-*.whl"))).namelist()
    for wanted in ("hpcbench/sites/aurora.yaml", "hpcbench/sites/local.yaml", "hpcbench/templates/slurm.sh.j2",
                   "hpcbench/templates/pbs.sh.j2", "hpcbench/catalog/models.yaml",
                   "hpcbench/catalog/sweeps/smoke.yaml"):
        assert wanted in names, wanted


def test_scenarios_longer_than_the_context_are_refused_at_submit():
    out = run_cli("submit", "--site", "local", "--model", "tiny", "--sweep", "smoke", "--max-model-len", "512",
                  "--dry-run")
    assert out.returncode == 2
    assert "scenario 'long-context' needs 1024 tokens of context, more than --max-model-len 512" in out.stderr
