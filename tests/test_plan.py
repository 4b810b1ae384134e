"""The planner against the seed Kempner table and the real Llama 3.1 configs."""

import json
import subprocess
import sys

import pytest

from hpcbench.config import load_site, resolve_model
from hpcbench.plan import PlanError, plan


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcbench", *args], capture_output=True, text=True)


@pytest.mark.parametrize("model, weights, kv, for_weights, for_context", [
    ("70b", 140.0, 39.06, 2, 3),     # the seed table's row, exactly
    ("405b", 810.0, 61.52, 11, 11),  # the released config (8 KV heads), not the seed's 123.05 GB erratum
    ("8b", 16.0, 15.62, 1, 1),
])
def test_raw_arithmetic_matches_published_table(model, weights, kv, for_weights, for_context):
    out = run_cli("plan", "--site", "slurm-h100", "--model", model, "--max-model-len", "128000", "--json")
    assert out.returncode == 0, out.stderr
    a = json.loads(out.stdout)["arithmetic"]
    assert (a["weights_gb"], a["kv_cache_gib"]) == (weights, kv)
    assert (a["accelerators_for_weights"], a["accelerators_for_full_context"]) == (for_weights, for_context)


def test_aurora_405b_is_tp8_pp2_on_two_nodes():
    p = plan(resolve_model("405b"), load_site("aurora"), max_model_len=32768)
    assert (p.tp, p.pp, p.nodes, p.backend) == (8, 2, 2, "ray")
    assert 128 % p.tp == 0 and p.kv_tokens_per_replica >= 32768


def test_tp_divides_heads_and_stays_in_node():
    site = load_site("aurora")  # 12 devices per node: 12 does not divide 128 heads, so TP 8
    p = plan(resolve_model("70b"), site, max_model_len=8192)
    assert p.tp == 8 and p.nodes == 1
    with pytest.raises(PlanError, match="does not divide the 64 attention heads"):
        plan(resolve_model("70b"), site, max_model_len=8192, tp=12)


def test_replicas_use_smallest_tp_that_fits():
    # The Meta seed's preferred layout: 70B at TP2, several replicas per 8-GPU node.
    site = load_site("slurm-h100")
    p = plan(resolve_model("70b"), site, max_model_len=8192, mode="replicas", nodes=2)
    assert (p.tp, p.replicas_per_node, p.replicas) == (2, 2, 4)


def test_a_heavier_load_queues_unless_the_layout_is_asked_to_fit_it():
    site = load_site("slurm-h100")
    one = plan(resolve_model("405b"), site, max_model_len=128000)
    many = plan(resolve_model("405b"), site, max_model_len=128000, concurrency=3)
    assert (many.tp, many.pp, many.nodes) == (one.tp, one.pp, one.nodes)  # the layout does not follow the load
    assert not one.warnings
    [warning] = many.warnings
    assert f"needs {3 * 128000} tokens of KV cache per replica" in warning and "will queue" in warning
    fitted = plan(resolve_model("405b"), site, max_model_len=128000, concurrency=3, fit_load=True)
    assert fitted.nodes > one.nodes and fitted.kv_tokens_per_replica >= 3 * 128000 and not fitted.warnings
    # A load no layout of the site holds: one warning, which does not suggest the flag already given.
    [warning] = plan(resolve_model("405b"), site, max_model_len=128000, concurrency=40, fit_load=True).warnings
    assert "will queue" in warning and "--fit-load" not in warning and "largest layout tried" in warning


@pytest.mark.parametrize("args, message", [
    (["--model", "405b", "--site", "polaris", "--nodes", "2"], "does not fit on 2 node(s)"),
    (["--model", "70b", "--site", "slurm-h100", "--nodes", "9"], "allows at most 4"),
    (["--model", "tiny", "--site", "local", "--max-model-len", "99999"], "exceeds tiny's context"),
    (["--model", "nosuch"], "unknown model 'nosuch': not a folder with a config.json"),
    (["--model", "nosuch"], "; known models: llama-3.1-8b-instruct (8b)"),
    (["--site", "nosuch"], "unknown site 'nosuch'; known sites:"),
])
def test_impossible_requests_refused_with_numbers(args, message):
    out = run_cli("plan", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
