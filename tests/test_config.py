"""Site profiles, the model catalog and sweeps: every built-in loads; every bad input gets one message."""

import json
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
    (GOOD.replace("accelerators: 4", "accelerators: four"), "node.accelerators", "a whole number (got 'four')"),
    (GOOD.replace("launcher: srun\n", ""), "launcher", "required key is missing"),
    (GOOD.replace("kind: slurm", "kind: lsf"), "scheduler.kind", "'pbs', 'slurm' or 'local'"),
    (GOOD + "hf_home: /data/hub\n", "hf_home", "not hub/ itself"),
    (GOOD + "env: {'BAD NAME': x}\n", "env", "not a shell variable name"),
    (GOOD + "extends: nosuchsite\n", "extends", "unknown site 'nosuchsite'"),
    # Beyond any machine: refused, not planned over (a planner loop over 10**23 layouts never ends).
    (GOOD.replace("accelerators: 4", "accelerators: 99999999999999999999999"), "node.accelerators", "at most 64"),
    (GOOD.replace("max_nodes: 4", "max_nodes: 10000000000"), "scheduler.max_nodes", "at most 100000"),
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
    with pytest.raises(ConfigError, match=r"scenarios.0.input_len: expected a whole number of at least 1 \(got 0\)"):
        load_sweep(str(path))


def test_unknown_names_list_known_ones():
    out = run_cli("submit", "--site", "local", "--model", "tiny", "--sweep", "nosuch", "--dry-run")
    assert out.returncode == 2 and "unknown sweep 'nosuch'; known sweeps:" in out.stderr and "smoke" in out.stderr


LIGHT = ["--help"], ["sites"], ["models"], ["plan", "--site", "aurora", "--model", "405b"], ["status", "--root", "."]


@pytest.mark.parametrize("args", LIGHT, ids=lambda a: a[0])
def test_login_node_commands_import_nothing_heavy(args, tmp_path):
    code = ("import sys; from hpcbench.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('pandas', 'ray', 'vllm', 'torch', 'matplotlib', 'numpy', 'aiohttp', 'pydantic', "
            "'hpcbench.runtime.cluster') "
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


# --- one message per site-file mistake, naming the file and key the value came from -------------------


def load_error(text: str, path: Path) -> str:
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_site(str(path))
    return str(err.value)


def test_launcher_that_does_not_fit_the_scheduler_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    message = load_error(GOOD.replace("kind: slurm", "kind: pbs"), path)
    assert message == f"{path}: launcher: 'srun' does not work with scheduler 'pbs' (use mpiexec)"


@pytest.mark.parametrize("parent_text, key, expected", [
    (GOOD + "colour: blue\n", "colour", "unknown key"),
    (GOOD.replace("max_nodes: 4", "max_nodes: 4, colour: blue"), "scheduler.colour", "unknown key"),
    (GOOD.replace("accelerators: 4", "accelerators: four"), "node.accelerators", "expected a whole number"),
    (GOOD.replace("launcher: srun", "launcher: local"), "launcher", "'local' does not work with scheduler 'slurm'"),
])
def test_mistake_in_a_parent_profile_names_the_parent(tmp_path, parent_text, key, expected):
    parent = tmp_path / "parent.yaml"
    parent.write_text(parent_text)
    message = load_error("extends: parent.yaml\nscheduler: {account: PROJ}\n", tmp_path / "child.yaml")
    assert message.startswith(f"{parent}: {key}: {expected}"), message


@pytest.mark.parametrize("where, key", [("account: {}", "scheduler.account"), ("queue: {}", "scheduler.queue"),
                                        ("queues: [{{name: ok}}, {{name: {}}}]", "scheduler.queues.1.name")])
@pytest.mark.parametrize("value", [r'"a\nb"', r'"a\x01b"', '"a b"', "\"'a'\"", '"$(id)"', '"a;b"', '"a`b`"'])
def test_account_and_queue_are_one_scheduler_word(tmp_path, where, key, value):
    path = tmp_path / "bad.yaml"
    message = load_error(GOOD.replace("max_nodes: 4", where.format(value)), path)
    assert message.startswith(f"{path}: {key}: ") and "must be one word" in message, message
    assert "\n" not in message


def test_missing_extends_path_names_the_child_and_the_path(tmp_path):
    path = tmp_path / "child.yaml"
    message = load_error("extends: ../nowhere/parent.yaml\n", path)
    assert message == f"{path}: extends: no such site file: {tmp_path / '../nowhere/parent.yaml'}"


@pytest.mark.parametrize("name", ["../x", "a/b", "my site", "x;y", "..", ".hidden", "a\tb"])
def test_unsafe_site_name_is_refused(tmp_path, name):
    path = tmp_path / "bad.yaml"
    message = load_error(GOOD.replace("name: mysite", f"name: {json.dumps(name)}"), path)
    assert message.startswith(f"{path}: name: site name must be letters"), message


def test_unsafe_file_name_without_a_name_key_is_refused(tmp_path):
    path = tmp_path / "my site.yaml"
    message = load_error(GOOD.replace("name: mysite\n", ""), path)
    assert message.startswith(f"{path}: name: no name key, and the file name cannot be one"), message


def test_list_sites_keeps_the_good_ones_beside_a_broken_one(tmp_path, monkeypatch):
    from hpcbench.config.site import list_sites

    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "mysite.yaml").write_text(GOOD)
    (tmp_path / "sites" / "broken.yaml").write_text(GOOD + "colour: blue\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    good, broken = list_sites()
    assert {"mysite", "aurora", "local"} <= {name for name, _, _ in good}
    assert all(site.name == name for name, _, site in good)
    assert len(broken) == 1 and (broken[0].file, broken[0].key) == (tmp_path / "sites" / "broken.yaml", "colour")
    assert str(broken[0]).startswith(f"{tmp_path / 'sites' / 'broken.yaml'}: colour: unknown key (expected one of:")


@pytest.mark.parametrize("text, key", [
    (GOOD + "env: {1BAD: x}\n", "env"),
    (GOOD + "env: {'A-B': x}\n", "env"),
    (GOOD + "engine: {env: {'A B': x}}\n", "engine.env"),
    (GOOD + "secrets: [HF_TOKEN, 'HF TOKEN']\n", "secrets.1"),
    (GOOD + "secrets: ['$(id)']\n", "secrets.0"),
])
def test_variable_names_bash_rejects_are_refused(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    message = load_error(text, path)
    assert message.startswith(f"{path}: {key}: not a shell variable name"), message


@pytest.mark.parametrize("where, key", [
    ("walltime: '99:99:99'", "scheduler.walltime"),
    ("queues: [{name: a, max_walltime: '99:99:99'}]", "scheduler.queues.0.max_walltime"),
])
def test_out_of_range_walltime_in_a_site_is_refused(tmp_path, where, key):
    path = tmp_path / "bad.yaml"
    message = load_error(GOOD.replace("max_nodes: 4", where), path)
    assert message == f"{path}: {key}: walltime '99:99:99' is out of range (minutes and seconds below 60)"


def test_out_of_range_walltime_in_a_job_record_is_refused(tmp_path):
    import yaml

    from hpcbench.config.job import Job, resolve_job
    from hpcbench.config.model import resolve_model

    job = resolve_job(site=load_site("local"), model=resolve_model("tiny"), sweep=load_sweep("smoke"),
                      experiment=tmp_path)
    job.save(tmp_path / "config.yaml")
    assert Job.load(tmp_path / "config.yaml") == job  # what the job reads back is what was resolved
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    data["walltime"] = "99:99:99"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"config.yaml: walltime: walltime '99:99:99' is out of range"):
        Job.load(tmp_path / "config.yaml")


def test_unquoted_walltime_is_read_as_written(tmp_path):
    # YAML 1.1 reads 2:00:00 as the base-60 number 7200.
    (tmp_path / "s.yaml").write_text(GOOD.replace("max_nodes: 4", "walltime: 2:00:00"))
    assert load_site(str(tmp_path / "s.yaml")).scheduler.walltime == "2:00:00"


@pytest.mark.parametrize("text, key, lines", [
    (GOOD + "name: other\n", "name", "given on lines 1 and 5"),
    (GOOD.replace("max_nodes: 4", "max_nodes: 4, max_nodes: 8"), "scheduler.max_nodes", "given twice on line 2"),
    (GOOD + "env:\n  A: x\n  B: y\n  A: z\n", "env.A", "given on lines 6 and 8"),
])
def test_duplicate_keys_in_a_site_are_refused(tmp_path, text, key, lines):
    path = tmp_path / "bad.yaml"
    assert load_error(text, path) == f"{path}: {key}: duplicate key: {lines}"


SWEEP = "scenarios:\n  - {name: x, input_len: 8, output_len: 4, EXTRA}\n"


@pytest.mark.parametrize("extra, key, expected", [
    ("output_len: 5", "scenarios.0.output_len", "duplicate key: given twice on line 2"),
    ("colour: red", "scenarios.0.colour", "unknown key (expected one of: api, burstiness,"),
    ("request_rate: 0", "scenarios.0.request_rate", "expected a number greater than 0 (got 0)"),
    ("request_rate: [1, -1]", "scenarios.0.request_rate.1", "expected a number greater than 0 (got -1)"),
    ("concurrency: [1, 0]", "scenarios.0.concurrency.1", "expected a whole number of at least 1 (got 0)"),
    ("concurrency: []", "scenarios.0.concurrency", "expected a list of length at least 1 (got [])"),
    ("num_requests: 0", "scenarios.0.num_requests", "expected a whole number of at least 1 (got 0)"),
    ("warmup: -1", "scenarios.0.warmup", "expected a whole number of at least 0 (got -1)"),
    ("burstiness: 0", "scenarios.0.burstiness", "expected a number greater than 0 (got 0)"),
    ("slo: {ttft_ms: -5}", "scenarios.0.slo.ttft_ms", "expected a number greater than 0 (got -5)"),
    ("request_timeout_s: 0", "scenarios.0.request_timeout_s", "expected a number greater than 0 (got 0)"),
    ("max_model_len: 0", "scenarios.0.max_model_len", "expected a whole number of at least 1 (got 0)"),
    ("fom: FOM4", "scenarios.0.fom", "expected one of 'FOM1', 'FOM2' or 'FOM3' (got 'FOM4')"),
])
def test_sweep_mistakes_name_the_key(tmp_path, extra, key, expected):
    path = tmp_path / "s.yaml"
    path.write_text(SWEEP.replace("EXTRA", extra))
    with pytest.raises(ConfigError) as err:
        load_sweep(str(path))
    assert str(err.value).startswith(f"{path}: {key}: {expected}"), str(err.value)


def test_unsafe_sweep_and_scenario_names_are_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: '../x'\n" + SWEEP.replace(", EXTRA", ""))
    with pytest.raises(ConfigError, match=r"s.yaml: name: sweep name must be letters"):
        load_sweep(str(path))
    path.write_text(SWEEP.replace("name: x, ", "name: 'a b', ").replace(", EXTRA", ""))
    with pytest.raises(ConfigError, match=r"s.yaml: scenarios.0.name: scenario name must be letters"):
        load_sweep(str(path))


MODEL = ("models:\n  - {name: m, hf_id: org/m, aliases: [mm], params_b: 1, layers: 2, hidden: 8, heads: 4, kv_heads: 2,"
         " head_dim: 2, vocab: 10, max_context: 64, intermediate: 16}\n")


@pytest.mark.parametrize("text, key, expected", [
    (MODEL.replace("layers: 2", "layers: 0"), "models.0.layers", "expected a whole number of at least 1 (got 0)"),
    (MODEL.replace("params_b: 1", "params_b: -1"), "models.0.params_b", "expected a number greater than 0 (got -1)"),
    (MODEL.replace("layers: 2", "layers: 2, colour: x"), "models.0.colour", "unknown key (expected one of: aliases,"),
    (MODEL.replace("layers: 2", "layers: 2, layers: 3"), "models.0.layers", "duplicate key: given twice on line 2"),
    (MODEL + "other: 1\n", "other", "unknown key (expected one of: models)"),
    (MODEL.replace("name: m", "name: 'm/../x'"), "models.0.name", "model name must be letters"),
    (MODEL.replace("kv_heads: 2", "kv_heads: 3"), "models.0.kv_heads", "heads (4) must be a multiple of kv_heads (3)"),
    (MODEL.replace(", intermediate: 16", ""), "models.0.intermediate", "the FFN width of the dense layers is needed"),
    (MODEL.replace("layers: 2", "layers: 2, experts: 4, experts_per_token: 5, expert_intermediate: 8, moe_layers: 2"),
     "models.0.experts_per_token", "must be 1 to experts (4)"),
    (MODEL.replace("layers: 2", "layers: 2, sliding_window: 8"), "models.0.sliding_window",
     "sliding_window and window_layers go together"),
    (MODEL + MODEL.split("\n", 1)[1].replace("name: m", "name: n").replace("org/m", "org/n"), "models.1.aliases.0",
     "'mm' already names model 'm'"),
])
def test_catalog_file_mistakes_name_the_key(tmp_path, text, key, expected):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_models(path)
    assert str(err.value).startswith(f"{path}: {key}: {expected}"), str(err.value)


@pytest.mark.parametrize("text, key, expected", [
    (GOOD + "env: {A: 1}\n", "env.A", "expected text (got 1)"),
    (GOOD + "engine: {env: {A: x, B: [1]}}\n", "engine.env.B", "expected text (got [1])"),
    (GOOD + "ray: {port: 80}\n", "ray.port", "expected a whole number of at least 1024 (got 80)"),
    (GOOD + "setup: {a: 1}\n", "setup", "expected a list (got a mapping)"),
    (GOOD + "network: {address: dns}\n", "network.address", "dns needs dns_suffix"),
    (GOOD.replace("max_nodes: 4", "directives: ['--x', \"a\\nb\"]"), "scheduler.directives.1",
     "a directive contains a control character"),
])
def test_messages_name_the_key_path_of_the_value(tmp_path, text, key, expected):
    path = tmp_path / "bad.yaml"
    message = load_error(text, path)
    assert message.startswith(f"{path}: {key}: {expected}"), message


@pytest.mark.parametrize("text, key", [
    (GOOD.replace("kind: slurm", "kind: pbs"), "launcher"),
    (GOOD.replace("max_nodes: 4", 'account: "a\\nb"'), "scheduler.account"),
    (GOOD + "node: {cpus: 8}\n", "node"),
])
def test_new_mistakes_are_one_line_at_the_command_line(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = run_cli("plan", "--site", str(path))
    assert out.returncode == 2 and out.stderr.startswith(f"hpcbench: error: {path}: {key}: "), out.stderr
    assert out.stderr.strip().count("\n") == 0
