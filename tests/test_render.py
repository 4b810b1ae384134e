"""Rendered batch scripts: every built-in site x mode passes real shellcheck; config values stay data."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcbench.config import UserError, load_site, load_sweep, resolve_model, site_names
from hpcbench.config.job import resolve_job
from hpcbench.render import environment, render_job

ROOT = Path(__file__).resolve().parents[1]
TEST_SITES = ROOT / "tests" / "sites"
NASTY = {
    "SPACES": "a b  c",
    "QUOTES": "it's \"quoted\"",
    "SUBST": "$(touch PWNED_SUBST)",
    "BACKTICK": "`touch PWNED_TICK`",
    "NEWLINE": "line1\nline2; touch PWNED_NL",
    "DOLLAR": "$HOME ${PATH}",
}


def shellcheck(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    assert shutil.which("shellcheck"), "shellcheck is missing: run scripts/install-deps.sh"
    script = tmp_path / "job.sh"
    script.write_text(text)
    return subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)


def job_for(site: str, model: str, sweep: str, tmp_path: Path, **kw):
    return resolve_job(site=load_site(site), model=resolve_model(model), sweep=load_sweep(sweep),
                       experiment=tmp_path / "exp", account=kw.pop("account", "PROJ"), **kw)


CASES = [(s, m, sw, mode) for s in ("aurora", "polaris", "slurm-h100", "slurm-gb200", "slurm-cuda", "slurm-rocm")
         for m, sw, mode in (("405b", "aurora-fom", "serve"), ("70b", "meta-concurrency", "replicas"),
                             ("8b", "alcf-offline-grid", "offline"), ("70b", "nvidia-usecases", "serve"))] + [
    ("local", "tiny", "smoke", "serve"), ("local", "tiny", "smoke", "replicas"),
    (str(TEST_SITES / "slurm-local.yaml"), "tiny", "smoke", "replicas"),
]


@pytest.mark.parametrize("site, model, sweep, mode", CASES)
def test_every_site_and_scenario_passes_shellcheck(site, model, sweep, mode, tmp_path):
    job = job_for(site, model, sweep, tmp_path, mode=mode)
    text = render_job(job)
    out = shellcheck(text, tmp_path)
    assert out.returncode == 0, out.stdout
    assert f"TP {job.plan.tp} x PP {job.plan.pp}" in text


def test_aurora_405b_script_has_planned_nodes_modules_and_env(tmp_path):
    text = render_job(job_for("aurora", "405b", "aurora-fom", tmp_path))
    assert "#PBS -l select=2\n" in text and "#PBS -A PROJ\n" in text
    assert "#PBS -l filesystems=home:flare\n" in text and "#PBS -l place=scatter\n" in text
    assert "module load frameworks\n" in text and "export ZE_FLAT_DEVICE_HIERARCHY=FLAT\n" in text
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2" in text
    assert "mpiexec -n 1 --ppn 1 --hosts" in text and "-m hpcbench.runtime.node address" in text
    # ALCF's current guide: vLLM finds the XPU itself (--device xpu was removed in vLLM 0.10), and
    # remote code is not trusted unless a profile asks for it.
    assert "--device" not in text and "--trust-remote-code" not in text and "#PBS -k doe\n" in text


def test_every_node_finds_its_own_address_for_ray_and_vllm(tmp_path):
    """Workers as well as the head start Ray through the node module, which puts the node's address in
    --node-ip-address and VLLM_HOST_IP (multi-homed nodes: the default route is the wrong network)."""
    job = job_for("aurora", "405b", "aurora-fom", tmp_path)
    text = render_job(job)
    assert job.site.network.address == "dns" and job.site.network.dns_suffix == ".hsn.cm.aurora.alcf.anl.gov"
    starts = [line for line in text.splitlines() if "ray.scripts.scripts start" in line]
    assert len(starts) == 1 and '--node-ip-address="{node_ip}"' in starts[0]  # one command for head and workers
    assert 'hpcbench.runtime.node exec "$EXP" "$node" ray --' in text


@pytest.mark.parametrize("site, model, walltime, queue", [
    ("aurora", "8b", None, "debug"),               # 1 node: debug-scaling would refuse it
    ("aurora", "405b", None, "debug"),             # 2 nodes, 1 h
    ("aurora", "8b", "03:00:00", "capacity"),      # longer than the debug queues allow
    ("polaris", "405b", None, "debug-scaling"),    # 6 nodes
])
def test_queue_follows_the_plan(site, model, walltime, queue, tmp_path):
    job = job_for(site, model, "aurora-fom", tmp_path, walltime=walltime)
    assert job.queue == queue
    text = render_job(job)
    assert f"#PBS -q {queue}\n" in text
    assert "#PBS -k doe\n" in text  # output written as the job runs: `submit --wait` can follow it


def test_queue_table_refuses_a_job_no_queue_takes_and_an_explicit_queue_wins(tmp_path):
    with pytest.raises(UserError, match="no queue of this site takes a job of 1 node"):
        job_for("polaris", "8b", "aurora-fom", tmp_path, walltime="30:00:00")
    assert job_for("polaris", "8b", "aurora-fom", tmp_path, walltime="30:00:00", queue="preemptable").queue \
        == "preemptable"


@pytest.mark.parametrize("walltime, slurm, pbs", [
    ("1-12", "36:00:00", "36:00:00"),      # D-HH: a day and a half to Slurm, and now to hpcbench
    ("45:00", "00:45:00", "00:45:00"),     # MM:SS
    ("0-00:30", "00:30:00", "00:30:00"),   # D-HH:MM
])
def test_walltime_means_what_slurm_means_and_reaches_both_schedulers_normalised(walltime, slurm, pbs, tmp_path):
    assert f"#SBATCH --time={slurm}\n" in render_job(job_for("slurm-h100", "70b", "smoke", tmp_path, walltime=walltime))
    assert f"#PBS -l walltime={pbs}\n" in render_job(job_for("aurora", "70b", "smoke", tmp_path, walltime=walltime))


@pytest.mark.parametrize("walltime, says", [("30", "write 00:30:00 for 30 minutes"), ("99:99:99", "out of range"),
                                            ("1-24", "out of range"), ("soon", "must look like")])
def test_ambiguous_or_impossible_walltime_is_refused(walltime, says, tmp_path):
    with pytest.raises(UserError, match=says):
        job_for("slurm-h100", "70b", "smoke", tmp_path, walltime=walltime)


def test_ray_temp_dir_is_short_and_a_long_one_is_refused(tmp_path):
    import yaml

    from hpcbench.config.errors import ConfigError

    text = render_job(job_for("aurora", "405b", "aurora-fom", tmp_path))
    assert 'RAY_TMP=/tmp/hpcb-ray-"$JOB_TAG"' in text and "JOB_TAG=${JOB_ID%%.*}" in text
    site_file = tmp_path / "deep.yaml"
    site_file.write_text(yaml.safe_dump({"extends": "aurora", "ray": {"temp_dir": "/lus/flare/projects/MYPROJ/me/ray"}}))
    with pytest.raises(ConfigError, match="too long for Ray's socket paths"):
        load_site(str(site_file))


def test_slurm_header(tmp_path):
    job = job_for("slurm-h100", "405b", "aurora-fom", tmp_path, queue="gpu")
    text = render_job(job)
    for line in (f"#SBATCH --nodes={job.plan.nodes}", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --account=PROJ", "#SBATCH --partition=gpu", "#SBATCH --exclusive"):
        assert line + "\n" in text
    # The driver stops before the time limit by itself; the exclusive job holds every CPU of its nodes.
    assert "#SBATCH --signal" not in text and "#SBATCH --cpus-per-task" not in text
    # Every step asks for the CPUs the job holds on a node: where Slurm binds tasks to cores, a step
    # asking for none gets one, and so would every Ray worker and vLLM process it starts.
    assert 'srun --nodes=1 --ntasks=1 --cpus-per-task="$STEP_CPUS" --overlap --nodelist "$node"' in text
    assert 'STEP_CPUS="${SLURM_CPUS_ON_NODE:-1}"' in text


def test_a_shared_node_job_asks_for_the_nodes_cpus(tmp_path):
    text = render_job(job_for(str(TEST_SITES / "slurm-local.yaml"), "tiny", "smoke", tmp_path))
    assert "#SBATCH --cpus-per-task=2\n" in text  # not exclusive: node.cpus


def test_nothing_runs_python_before_the_sites_software_is_loaded(tmp_path):
    """PY is the site's python3 only after its modules and setup lines (Aurora: module load frameworks)."""
    text = render_job(job_for("aurora", "405b", "aurora-fom", tmp_path))
    before = text[:text.index("# --- software environment")]
    assert '"$PY"' not in before


def test_pbs_requires_account(tmp_path):
    with pytest.raises(UserError, match="requires a project: pass --account"):
        job_for("aurora", "405b", "aurora-fom", tmp_path, account=None)


def test_env_values_stay_literal_data(tmp_path):
    """Each hostile value is exported byte for byte and nothing in it runs."""
    site_file = tmp_path / "nasty.yaml"
    import yaml

    site_file.write_text(yaml.safe_dump({"extends": "local", "env": NASTY, "hf_home": "/x/$(touch PWNED_HF)"}))
    job = job_for(str(site_file), "tiny", "smoke", tmp_path)
    fragment = environment().get_template("_env.sh.j2").render(job=job, site=job.site, plan=job.plan)
    dump = f"{sys.executable} -c 'import os, json; print(json.dumps(dict(os.environ)))'"
    out = subprocess.run(["bash", "-c", f"set -euo pipefail\n{fragment}\n{dump}"], capture_output=True,
                         text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    for name, value in NASTY.items():
        assert seen[name] == value
    assert seen["HF_HOME"] == "/x/$(touch PWNED_HF)"
    assert not list(tmp_path.glob("PWNED*"))
    assert shellcheck(render_job(job), tmp_path).returncode == 0


@pytest.mark.parametrize("field", ["account", "queue"])
def test_header_values_cannot_break_out(field, tmp_path):
    with pytest.raises(UserError, match="control character"):
        render_job(job_for("slurm-h100", "70b", "smoke", tmp_path, **{field: "x\ntouch PWNED"}))
    # Without a newline, shell syntax in a header value is inert text on a #SBATCH line.
    text = render_job(job_for("slurm-h100", "70b", "smoke", tmp_path, **{field: "$(touch PWNED)"}))
    assert all(line.startswith("#") for line in text.splitlines() if "PWNED" in line)


def test_secret_names_not_values_in_script(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_plantedSecretValue123")
    text = render_job(job_for("slurm-h100", "70b", "smoke", tmp_path))
    assert "HF_TOKEN" in text and "hf_plantedSecretValue123" not in text


def test_shell_quote_round_trips_any_text():
    import random

    from hpcbench.render import shell_quote

    rng = random.Random(7)
    alphabet = "ab $`'\"\\\n\t!*?[]{}()<>|&;#~%\x01\x7fé"
    values = ["", "-n", *("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(300))]
    script = "".join(f"printf '%s\\0' {shell_quote(v)}\n" for v in values)
    out = subprocess.run(["bash", "-c", script], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split("\0")[:-1] == values


def test_failure_before_the_driver_still_writes_the_exit_record(tmp_path):
    """A broken setup line (a module that is not there, say) must not leave the job without a record."""
    import yaml

    site_file = tmp_path / "broken.yaml"
    site_file.write_text(yaml.safe_dump({"extends": "local", "setup": ["false  # a failing setup line"]}))
    job = job_for(str(site_file), "tiny", "smoke", tmp_path)
    (tmp_path / "exp").mkdir()
    job.save(tmp_path / "exp" / "config.yaml")
    script = tmp_path / "exp" / "job.sh"
    script.write_text(render_job(job))
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    record = json.loads((tmp_path / "exp" / "finished").read_text())
    assert record["reason"] == "failed" and record["exit_code"] == out.returncode and record["final"] is True
