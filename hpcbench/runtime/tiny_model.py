"""A tiny random-weight Llama that vLLM (including the CPU build) loads and serves.

Model hubs are often unreachable from compute nodes and from test machines, so the local test model
is made here: numpy + safetensors for the weights (no torch needed), the `tokenizers` library for a
byte-level BPE tokenizer. Everything is seeded, so two machines make the same files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

import json
import os
import shutil
import tempfile
from pathlib import Path

from hpcbench.config.errors import UserError

# head_dim 64: vLLM's CPU attention refuses head_dim below 32.
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "use_cache": True,
}

SPECIAL = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2: match the ids in CONFIG

# Plain role/content turns; enough for /v1/chat/completions to build a prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "High performance computing clusters run batch jobs through a scheduler.",
    "A language model predicts the next token from the tokens before it.",
    "Throughput is measured in tokens per second across all requests.",
    "Latency is the time from sending a request to receiving the last token.",
    "Nodes, accelerators, memory and interconnect decide how a model is split.",
    "Tensor parallelism shards each layer; pipeline parallelism splits the layers.",
    "user assistant system: hello, how are you today? I am fine, thank you.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 numbers and words, punctuation! (yes) [no] {maybe}",
]

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json")


def needs_libraries() -> None:
    """Import what making the model needs (the `model` extra), so a missing one is found before any
    folder is made: ModuleNotFoundError naming it."""
    import numpy  # noqa: F401
    import tokenizers  # noqa: F401


def is_complete(path: Path) -> bool:
    """All files present (written last: config.json, via a rename of the whole folder)."""
    return all((Path(path) / name).is_file() for name in FILES)


def _weights(seed: int = 0) -> dict:
    import numpy as np

    c = CONFIG
    h, inter, v, hd = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> "np.ndarray":
        return rng.normal(0.0, c["initializer_range"], size=shape).astype(np.float32)

    tensors = {"model.embed_tokens.weight": rand(v, h), "model.norm.weight": np.ones(h, np.float32),
               "lm_head.weight": rand(v, h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": rand(q, h),
            p + "self_attn.k_proj.weight": rand(kv, h),
            p + "self_attn.v_proj.weight": rand(kv, h),
            p + "self_attn.o_proj.weight": rand(h, q),
            p + "mlp.gate_proj.weight": rand(inter, h),
            p + "mlp.up_proj.weight": rand(inter, h),
            p + "mlp.down_proj.weight": rand(h, inter),
            p + "input_layernorm.weight": np.ones(h, np.float32),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
        })
    return tensors


def _to_bf16(a: "np.ndarray") -> "np.ndarray":
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16; numpy has no bf16."""
    import numpy as np

    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def _write_safetensors(tensors: dict, out: Path) -> None:
    """safetensors.numpy cannot label uint16 data as BF16, so the (simple) format is written here:
    8-byte little-endian header length, JSON header, then the raw little-endian data."""
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        raw = _to_bf16(tensors[name]).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the data to 8 bytes
    with open(out, "wb") as fh:
        fh.write(len(head).to_bytes(8, "little"))
        fh.write(head)
        for blob in blobs:
            fh.write(blob)


def _tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=CONFIG["vocab_size"], special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    if tok.get_vocab_size() > CONFIG["vocab_size"]:
        raise RuntimeError(f"tokenizer vocabulary {tok.get_vocab_size()} exceeds the model's {CONFIG['vocab_size']}")


def _dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _check_target(path: Path) -> None:
    """The folder is replaced whole: only a new or empty one, or one holding (part of) this model."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder; give a new folder for the tiny model")
    others = sorted(e.name for e in path.iterdir() if e.name not in FILES) if path.is_dir() else []
    if others:
        raise UserError(f"{path} holds files that are not the tiny model's ({', '.join(others[:3])}"
                        f"{', ...' if len(others) > 3 else ''}); give a new or empty folder")


def make_tiny_model(path: Path, force: bool = False) -> Path:
    """Write the tiny model to path (a folder) and return it; a complete one is kept unless force."""
    path = Path(path).expanduser().absolute()
    if is_complete(path) and not force:
        return path
    needs_libraries()
    _check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Build in a sibling temp folder and rename it into place: a reader never sees half a model.
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise UserError(f"cannot write the tiny model next to {path}: {exc.strerror or exc}") from None
    try:
        _tokenizer(tmp)
        _write_safetensors(_weights(), tmp / "model.safetensors")
        _dump(tmp / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                                               "do_sample": False})
        _dump(tmp / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
        _dump(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
            "model_max_length": CONFIG["max_position_embeddings"],
            "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        })
        _dump(tmp / "config.json", CONFIG)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.chmod(0o755)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
