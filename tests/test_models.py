"""Any model a user names: sizes derived from released config.json files (tests/data/configs, copied from
the models' Hugging Face repositories), the catalog checked against them, and every engine flag
hpcbench renders checked by the installed vLLM's own parser."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcbench.config import load_site, load_sweep, site_names, sweep_names
from hpcbench.config.model import find_model, load_models
from hpcbench.model_size import kv_bytes_per_sequence, size

ROOT = Path(__file__).parent.parent
CONFIGS = Path(__file__).parent / "data" / "configs"
SWEEPS = Path(__file__).parent / "sweeps"
CATALOG_CONFIGS = [  # test data folder, the catalog entry written from the same released config
    ("Llama-3.1-405B", "llama-3.1-405b"), ("Qwen2.5-72B-Instruct", "qwen2.5-72b-instruct"),
    ("Qwen3-235B-A22B", "qwen3-235b-a22b"), ("DeepSeek-V3", "deepseek-v3"), ("gpt-oss-120b", "gpt-oss-120b"),
    ("Mixtral-8x7B-v0.1", "mixtral-8x7b"), ("Llama-4-Scout-17B-16E-Instruct", "llama-4-scout-17b-16e-instruct"),
]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, whatever the working directory
    return subprocess.run([sys.executable, "-m", "hpcbench", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


def plan_json(*args: str, cwd: Path | None = None) -> dict:
    out = run_cli("plan", "--site", "slurm-h100", "--json", *args, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# Published totals and active parameters (billions) from the model cards. The cards of Mixtral, Qwen3 and
# DeepSeek count the input embedding as active, gpt-oss's does not (nor does hpcbench: it is a lookup).
@pytest.mark.parametrize("folder, total, active", [
    ("Llama-3.1-405B", 405.85, 405.85),
    ("Qwen2.5-72B-Instruct", 72.7, 72.7),
    ("Qwen3-235B-A22B", 235.0, 22.0),
    ("DeepSeek-V3", 671.0, 37.0),
    ("gpt-oss-120b", 116.83, 5.13),
    ("Mixtral-8x7B-v0.1", 46.7, 12.9),
])
def test_parameters_from_the_shapes_match_the_model_cards(folder, total, active):
    a = plan_json("--model", str(CONFIGS / folder), "--max-model-len", "4096")["arithmetic"]
    assert a["params_b"] == pytest.approx(total, rel=0.01)
    assert a["active_params_b"] == pytest.approx(active, rel=0.025)


def test_llama_counts_are_exact():
    spec, _ = find_model(str(CONFIGS / "Llama-3.1-405B"))
    assert size(spec).total == 405_853_388_800  # the count the released checkpoint's index gives
    # Scout's card (109B) includes its vision encoder; the text model is 107.77B by the same arithmetic
    scout, _ = find_model(str(CONFIGS / "Llama-4-Scout-17B-16E-Instruct"))
    attention = 5120 * 128 * (40 + 2 * 8) + 40 * 128 * 5120
    experts = 3 * 5120 * 8192 * (16 + 1) + 5120 * 16  # 16 routed, 1 shared, the router
    norms = 5120 * (2 * 48 + 1)
    assert size(scout).total == 48 * (attention + experts) + norms + 2 * 202048 * 5120


def test_kv_cache_of_latent_and_windowed_attention_by_hand():
    # DeepSeek-V3: MLA caches kv_lora_rank + qk_rope_head_dim = 576 values per layer, 61 layers, 2 bytes.
    a = plan_json("--model", str(CONFIGS / "DeepSeek-V3"), "--max-model-len", "8192")["arithmetic"]
    assert a["kv_bytes_per_token"] == 61 * 576 * 2 == 70_272
    # gpt-oss-120b: 18 full layers of 8 KV heads x 64 x K,V at 2 bytes; 18 layers windowed at 128 tokens.
    spec, _ = find_model(str(CONFIGS / "gpt-oss-120b"))
    per_layer_token = 2 * 8 * 64 * 2
    assert kv_bytes_per_sequence(spec, 8192, 2) == per_layer_token * (18 * 8192 + 18 * 128)
    assert kv_bytes_per_sequence(spec, 100, 2) == per_layer_token * 36 * 100  # shorter than the window
    a = plan_json("--model", str(CONFIGS / "gpt-oss-120b"), "--max-model-len", "8192")["arithmetic"]
    assert a["kv_bytes_per_token"] == 18 * per_layer_token
    assert a["kv_cache_gib"] == round(per_layer_token * (18 * 8192 + 18 * 128) / 2**30, 2)


def test_quantized_weights_by_hand():
    # gpt-oss-120b: MXFP4 experts (4-bit values + one 8-bit scale per 32: 4.25 bits); the rest bfloat16.
    a = plan_json("--model", str(CONFIGS / "gpt-oss-120b"), "--max-model-len", "8192")["arithmetic"]
    experts = 36 * 128 * 3 * 2880 * 2880
    total = a["params_b"] * 1e9
    assert a["weights_gb"] == pytest.approx((experts * 4.25 / 8 + (total - experts) * 2) / 1e9, abs=0.01)
    assert 64 < a["weights_gb"] < 66  # the released checkpoint is about 65 GB
    # DeepSeek-V3: FP8 linear layers (block scales are 1/16384 of them); embeddings, head, routers, norms 16-bit
    spec, _ = find_model(str(CONFIGS / "DeepSeek-V3"))
    s = size(spec)
    unquantized = 2 * 129280 * 7168 + 58 * 256 * 7168 + (2 * 61 + 1) * 7168 + 61 * (1536 + 512)
    assert s.total - s.quantized == unquantized
    a = plan_json("--model", str(CONFIGS / "DeepSeek-V3"), "--max-model-len", "8192")["arithmetic"]
    assert a["weights_gb"] == pytest.approx((s.quantized + 2 * unquantized) / 1e9, abs=0.01)


def test_kv_cache_dtype_halves_the_kv_and_reaches_the_engine(tmp_path):
    full = plan_json("--model", "70b", "--max-model-len", "32768")
    fp8 = plan_json("--model", "70b", "--max-model-len", "32768", "--kv-cache-dtype", "fp8")
    assert fp8["arithmetic"]["kv_bytes_per_token"] * 2 == full["arithmetic"]["kv_bytes_per_token"]
    assert fp8["kv_tokens_per_replica"] == pytest.approx(2 * full["kv_tokens_per_replica"], rel=0.001)
    out = run_cli("submit", "--site", "slurm-h100", "--model", "70b", "--kv-cache-dtype", "fp8", "--dry-run",
                  "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "--kv-cache-dtype fp8" in out.stdout


@pytest.mark.parametrize("flag, value, message", [
    ("--dtype", "fp8", "quantized weights come from the checkpoint"),
    ("--dtype", "int4", "--dtype"),
    ("--kv-cache-dtype", "int8", "--kv-cache-dtype"),
])
def test_engine_dtypes_vllm_rejects_are_refused_before_queueing(tmp_path, flag, value, message):
    out = run_cli("submit", "--site", "slurm-h100", "--model", "8b", flag, value, "--dry-run",
                  "--root", str(tmp_path))
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("config.yaml"))


def test_common_dtype_spellings_map_to_vllms_choices(tmp_path):
    out = run_cli("submit", "--site", "slurm-h100", "--model", "8b", "--dtype", "bf16", "--dry-run",
                  "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "--dtype bfloat16" in out.stdout and "bf16" not in out.stdout


def test_catalog_entry_that_contradicts_the_weights_is_refused():
    out = run_cli("plan", "--site", "slurm-h100", "--model", "8b", "--model-path",
                  str(CONFIGS / "Qwen2.5-72B-Instruct"))
    assert out.returncode == 2
    assert "does not match the weights" in out.stderr and "layers 80 (catalog: 32)" in out.stderr
    # weights that agree with their entry are fine, and the entry's nominal size stays (the seed table)
    a = plan_json("--model", "405b", "--model-path", str(CONFIGS / "Llama-3.1-405B"),
                  "--max-model-len", "128000")["arithmetic"]
    assert (a["weights_gb"], a["kv_cache_gib"]) == (810.0, 61.52)


@pytest.mark.parametrize("folder, name", CATALOG_CONFIGS)
def test_catalog_entries_agree_with_the_released_configs(folder, name):
    derived, _ = find_model(str(CONFIGS / folder))
    [entry] = [m for m in load_models() if m.name == name]
    assert entry.architecture() == derived.architecture()
    assert sorted(p.name for p in CONFIGS.iterdir()) == sorted(f for f, _ in CATALOG_CONFIGS)


def test_hugging_face_id_found_in_the_site_cache(tmp_path):
    snap = tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-72B" / "snapshots"
    for rev in ("old", "abc123"):
        (snap / rev).mkdir(parents=True)
        shutil.copy(CONFIGS / "Qwen2.5-72B-Instruct" / "config.json", snap / rev / "config.json")
    cfg = json.loads((snap / "old" / "config.json").read_text())
    (snap / "old" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    (tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-72B" / "refs").mkdir()
    (tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-72B" / "refs" / "main").write_text("abc123\n")
    site = tmp_path / "mysite.yaml"
    site.write_text(f"extends: slurm-h100\nhf_home: {tmp_path / 'hf'}\n")
    out = run_cli("plan", "--site", str(site), "--model", "Qwen/Qwen2.5-72B", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["arithmetic"]["params_b"] == pytest.approx(72.7, rel=0.01)  # refs/main's
    out = run_cli("plan", "--site", "slurm-h100", "--model", "Qwen/Qwen2.5-72B")
    assert out.returncode == 2 and "unknown model 'Qwen/Qwen2.5-72B'" in out.stderr


def test_user_catalog_in_the_working_directory(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.yaml").write_text(
        "models:\n  - {name: my-model, hf_id: me/my-model, layers: 4, hidden: 1024, intermediate: 4096,\n"
        "     heads: 8, kv_heads: 8, head_dim: 128, vocab: 32000, max_context: 8192}\n")
    d = plan_json("--model", "my-model", "--max-model-len", "4096", cwd=tmp_path)
    attention, ffn = 4 * 1024 * 1024, 3 * 1024 * 4096
    assert d["arithmetic"]["params_b"] == round((4 * (attention + ffn) + 9 * 1024 + 2 * 32000 * 1024) / 1e9, 3)
    (tmp_path / "models" / "bad.yaml").write_text("models:\n  - {name: x, hf_id: y/x, layers: 0}\n")
    out = run_cli("plan", "--site", "slurm-h100", "--model", "my-model", cwd=tmp_path)
    assert out.returncode == 2 and "bad.yaml" in out.stderr


def test_unknown_architecture_names_the_missing_fields(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps(
        {"architectures": ["OddForCausalLM"], "model_type": "odd", "d_model": 512, "n_layer": 4, "vocab_size": 100}))
    out = run_cli("plan", "--site", "slurm-h100", "--model", str(tmp_path / "odd"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for word in ("OddForCausalLM", "num_hidden_layers", "hidden_size", "num_attention_heads", "./models/"):
        assert word in out.stderr
    (tmp_path / "odd" / "config.json").write_text("{not json")
    out = run_cli("plan", "--site", "slurm-h100", "--model", str(tmp_path / "odd"))
    assert out.returncode == 2 and "config.json" in out.stderr


def test_plan_shows_expert_parallel_and_its_reason():
    d = plan_json("--model", str(CONFIGS / "Qwen3-235B-A22B"), "--max-model-len", "8192")
    assert d["expert_parallel"] is True and d["tp"] * d["pp"] > 1
    assert any(r.startswith("expert parallel:") for r in d["reasons"])
    dense = plan_json("--model", str(CONFIGS / "Qwen2.5-72B-Instruct"), "--max-model-len", "8192")
    assert dense["expert_parallel"] is False


@pytest.mark.parametrize("site", sorted(site_names()))
def test_plan_and_submit_agree_for_every_sweep(site, tmp_path):
    """`plan --sweep S` shows the layout `submit --sweep S` runs, for every built-in site and sweep."""
    from hpcbench.config.job import resolve_job
    from hpcbench.plan import plan_for

    s = load_site(site)
    model = "tiny" if s.node.accelerator == "cpu" else "70b"
    spec, path = find_model(model, s)
    for sweep in sweep_names():
        sw = load_sweep(sweep)
        try:
            shown = plan_for(site, model, sweep)
        except Exception as exc:  # a sweep this site cannot run: submit must refuse it too
            with pytest.raises(type(exc)):
                resolve_job(site=s, model=spec, sweep=sw, experiment=tmp_path / sweep, model_path=path,
                            account="acct")
            continue
        mode = shown.mode
        try:
            job = resolve_job(site=s, model=spec, sweep=sw, experiment=tmp_path / sweep, model_path=path,
                              account="acct", mode=mode)
        except Exception as exc:
            assert "scenarios" in str(exc), exc  # offline/served mismatch only
            continue
        got = job.plan
        assert (got.tp, got.pp, got.nodes, got.replicas, got.max_model_len) == \
            (shown.tp, shown.pp, shown.nodes, shown.replicas, shown.max_model_len), sweep


# -- engine flags against the installed vLLM's own argument parser


def _every_built_in_job(tmp_path: Path):
    from hpcbench.config.job import resolve_job

    for site in sorted(site_names()):
        s = load_site(site)
        model = "tiny" if s.node.accelerator == "cpu" else "70b"
        spec, path = find_model(model, s)
        small = s.node.accelerator == "cpu"  # the tiny model: the test sweeps fit its context
        for sweep in (("smoke", str(SWEEPS / "offline.yaml")) if small else ("smoke", "alcf-offline-grid")):
            yield site, resolve_job(site=s, model=spec, sweep=load_sweep(sweep), experiment=tmp_path / site / sweep,
                                    model_path=path, account="acct", kv_cache_dtype="fp8", dtype="bf16")


@pytest.mark.vllm
def test_every_rendered_engine_flag_parses_with_vllm(tmp_path):
    from hpcbench.engine_config import offline_kwargs, vllm_parser

    parser = vllm_parser()
    seen = 0
    for site, job in _every_built_in_job(tmp_path):
        argv = job.engine_command(8000)
        flags = argv[argv.index("--model"):]
        try:
            parsed = parser.parse_args(flags)
        except SystemExit:
            pytest.fail(f"vLLM refuses the engine flags of site {site}: {' '.join(flags)}")
        assert parsed.tensor_parallel_size == job.plan.tp and parsed.dtype == "bfloat16"
        assert parsed.kv_cache_dtype == "fp8" and parsed.port == 8000
        if job.plan.mode == "offline":
            kwargs = offline_kwargs(job.engine_args)
            assert kwargs.get("tensor_parallel_size", 1) == job.plan.tp and "port" not in kwargs
            assert kwargs["max_model_len"] == job.plan.max_model_len and kwargs["kv_cache_dtype"] == "fp8"
        seen += 1
    assert seen == 2 * len(site_names())


@pytest.mark.vllm
def test_offline_runs_keep_the_sites_extra_args():
    from hpcbench.engine_config import offline_kwargs

    kwargs = offline_kwargs(["--model", "m", "--tensor-parallel-size", "2", "--enforce-eager",
                             "--max-num-seqs", "7", "--host", "0.0.0.0"])
    assert kwargs == {"model": "m", "tensor_parallel_size": 2, "enforce_eager": True, "max_num_seqs": 7}


@pytest.mark.parametrize("change", [{"num_hidden_layers": "x"}, {"num_attention_heads": 0},
                                    {"quantization_config": {"quant_method": "awq", "bits": "four"}},
                                    {"hidden_size": [64]}])
def test_fields_of_the_wrong_kind_are_one_message(tmp_path, change):
    good = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10,
            "max_position_embeddings": 4096, "intermediate_size": 10}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({**good, **change}))
    out = run_cli("plan", "--site", "slurm-h100", "--model", str(tmp_path / "m"), "--max-model-len", "1024")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "config.json" in out.stderr
