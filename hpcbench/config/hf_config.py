"""A model's architecture read from its Hugging Face `config.json`.

The planner needs shapes, not names: layers, widths, heads, the experts of a mixture-of-experts model,
DeepSeek's latent attention (MLA), windowed layers and the checkpoint's quantization. Families differ in
how they spell these (num_local_experts / n_routed_experts / num_experts, ...); this module is the one
place that knows the spellings. A config without a field the planner needs is refused with the fields
missing and how to give them in a catalog entry (docs/planner.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpcbench.config.errors import UserError

# Bits per quantized weight, scales included: MXFP4 keeps one 8-bit scale per 32 values, NVFP4 one 8-bit
# scale per 16; FP8 block scales (one float per 128 x 128 block) are too few to count.
QUANT_BITS = {"fp8": 8.0, "mxfp4": 4.25, "nvfp4": 4.5, "int8": 8.0}
# vLLM's names for checkpoint formats that hold integer weights with per-group scales.
GROUPED_INT = ("awq", "gptq", "compressed-tensors")


class ConfigJsonError(UserError):
    pass


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigJsonError(f"{path}: cannot read the model's config.json: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigJsonError(f"{path}: config.json is not a JSON object")
    return data


def _first(cfg: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def _quantization(q: dict[str, Any] | None, where: Path) -> dict[str, Any]:
    """The checkpoint's quantization as spec fields: vLLM's method name, bits per quantized weight,
    and whether only the experts are quantized (gpt-oss keeps attention and the router in 16-bit)."""
    if not q:
        return {}
    method = str(q.get("quant_method", "")).lower()
    algo = str(q.get("quant_algo", "")).lower()  # ModelOpt: quant_method "modelopt", quant_algo "FP8"/"NVFP4"
    if method in QUANT_BITS:
        bits = QUANT_BITS[method]
    elif method == "modelopt" and algo in QUANT_BITS:
        bits = QUANT_BITS[algo]
    elif method in GROUPED_INT and q.get("bits"):
        group = int(q.get("group_size") or 128)
        bits = float(q["bits"]) + 16 / group + (float(q["bits"]) / group if not q.get("sym") else 0)
    else:
        raise ConfigJsonError(f"{where}: quantization_config {method or q!r} is not one hpcbench can size "
                              f"(known: {', '.join([*QUANT_BITS, *GROUPED_INT])}); give weight_bits in a "
                              "catalog entry (docs/planner.md)")
    skipped = " ".join(str(m) for m in q.get("modules_to_not_convert") or q.get("ignore") or [])
    return {"quantization": method, "weight_bits": bits,
            "quantized": "experts" if "attn" in skipped else "linear"}


def _windowed_layers(cfg: dict[str, Any], layers: int) -> tuple[int, int]:
    """(window, layers using it). Qwen configs carry a sliding_window they do not use."""
    window = cfg.get("sliding_window")
    if not window or cfg.get("use_sliding_window") is False:
        return 0, 0
    if isinstance(cfg.get("layer_types"), list):
        return int(window), sum(t == "sliding_attention" for t in cfg["layer_types"])
    pattern = cfg.get("sliding_window_pattern")
    if pattern:  # Gemma 3: every pattern-th layer is global, the others windowed
        return int(window), layers - layers // int(pattern)
    return int(window), layers


def _tied(cfg: dict[str, Any], text: dict[str, Any]) -> bool:
    """Whether the output projection reuses the input embedding. Released configs usually say; where
    they do not, each family's own transformers config class decides: Gemma ties, the others do not."""
    for c in (text, cfg):
        if "tie_word_embeddings" in c:
            return bool(c["tie_word_embeddings"])
    return str(text.get("model_type") or cfg.get("model_type") or "").startswith("gemma")


def spec_fields(cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """ModelSpec fields (architecture only; the caller adds name and hf_id) from a config.json."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg  # Llama 4, Gemma 3
    need = {"num_hidden_layers": text.get("num_hidden_layers"), "hidden_size": text.get("hidden_size"),
            "num_attention_heads": text.get("num_attention_heads"), "vocab_size": text.get("vocab_size"),
            "max_position_embeddings": text.get("max_position_embeddings")}
    missing = [k for k, v in need.items() if v is None]
    experts = int(_first(text, "num_local_experts", "n_routed_experts", "num_experts") or 0)
    if not experts and text.get("intermediate_size") is None:
        missing.append("intermediate_size")
    if missing:
        arch = ", ".join(cfg.get("architectures") or []) or cfg.get("model_type") or "unknown"
        raise ConfigJsonError(f"{where}: architecture {arch} lacks {', '.join(missing)}, which the planner "
                              "needs; add a catalog entry in ./models/NAME.yaml giving layers, hidden, heads, "
                              "kv_heads, head_dim, vocab, max_context and intermediate (docs/planner.md)")
    layers, hidden, heads = int(need["num_hidden_layers"]), int(need["hidden_size"]), int(need["num_attention_heads"])
    window, window_layers = _windowed_layers(text, layers)
    f: dict[str, Any] = {
        "layers": layers, "hidden": hidden, "heads": heads,
        "kv_heads": int(text.get("num_key_value_heads") or heads),
        # MLA has no per-head K/V; its query-key head is the no-rope part plus the rope part
        "head_dim": int(text.get("head_dim") or (text.get("qk_nope_head_dim", 0) + text.get("qk_rope_head_dim", 0))
                        or hidden // heads),
        "vocab": int(need["vocab_size"]), "max_context": int(need["max_position_embeddings"]),
        "tied_embeddings": _tied(cfg, text),
        "dtype": str(_first(text, "torch_dtype", "dtype") or _first(cfg, "torch_dtype", "dtype") or "bfloat16"),
        "sliding_window": window, "window_layers": window_layers,
        **_quantization(cfg.get("quantization_config") or text.get("quantization_config"), where),
    }
    if text.get("intermediate_size_mlp") is not None:  # Llama 4: dense layers are wider than the experts
        f["intermediate"] = int(text["intermediate_size_mlp"])
    elif text.get("intermediate_size") is not None:
        f["intermediate"] = int(text["intermediate_size"])
    if experts:
        moe_layers = layers
        if text.get("first_k_dense_replace"):  # DeepSeek: the first k layers are dense
            moe_layers = layers - int(text["first_k_dense_replace"])
        elif text.get("interleave_moe_layer_step"):  # Llama 4 Maverick: every second layer
            moe_layers = layers // int(text["interleave_moe_layer_step"])
        elif text.get("mlp_only_layers") or (text.get("decoder_sparse_step") or 1) > 1:  # Qwen MoE
            step = int(text.get("decoder_sparse_step") or 1)
            dense = set(text.get("mlp_only_layers") or [])
            moe_layers = sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)
        shared = int(_first(text, "n_shared_experts") or 0)
        shared_width = text.get("shared_expert_intermediate_size")
        if shared_width and not shared:  # Qwen2-MoE: one shared expert of its own width
            shared = 1
        if "Llama4" in " ".join(cfg.get("architectures") or []) or text.get("model_type") == "llama4_text":
            shared = 1  # every Llama 4 MoE layer has one shared expert as wide as a routed one
        f.update(experts=experts, experts_per_token=int(_first(text, "num_experts_per_tok", "experts_per_token")
                                                        or 1),
                 expert_intermediate=int(_first(text, "moe_intermediate_size", "intermediate_size")),
                 moe_layers=moe_layers, shared_experts=shared)
        if shared_width:
            f["shared_intermediate"] = int(shared_width)
    if text.get("kv_lora_rank"):  # DeepSeek MLA: a latent of kv_lora_rank plus the rope part is cached
        f.update(kv_lora_rank=int(text["kv_lora_rank"]), q_lora_rank=int(text.get("q_lora_rank") or 0),
                 qk_nope_head_dim=int(text["qk_nope_head_dim"]), qk_rope_head_dim=int(text["qk_rope_head_dim"]),
                 v_head_dim=int(text["v_head_dim"]))
    return f


def hf_id_of(cfg: dict[str, Any], folder: Path) -> str:
    name = cfg.get("_name_or_path")
    return str(name) if isinstance(name, str) and name.count("/") == 1 and not Path(name).is_absolute() \
        else folder.name
