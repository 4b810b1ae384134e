"""How big a model is, from its shapes: parameters (total and active), bytes of weights, bytes of KV cache.

Counted: embeddings, attention projections, dense and expert FFNs (gated: gate, up and down), routers and
norms; biases, rotary tables and attention sinks are left out (well under 0.1% for the models in the
catalog). "Active" is what one token's forward pass multiplies by: every weight but the routed experts
it is not sent to and the input embedding (a table lookup), the convention of the gpt-oss and DeepSeek
model cards. docs/planner.md works the numbers by hand for the catalog's models.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcbench.config.model import ModelSpec


@dataclass(frozen=True)
class Size:
    total: int            # parameters
    active: int           # parameters used per token
    quantized: int        # parameters stored at the checkpoint's quantized width
    embedding: int        # input embedding (and output head, if untied)

    def weight_bytes(self, model: ModelSpec, bytes_per_weight: float) -> float:
        """Bytes of weights: the quantized ones at their width, the rest at bytes_per_weight."""
        q_bytes = (model.weight_bits or 0) / 8
        return self.quantized * q_bytes + (self.total - self.quantized) * bytes_per_weight


def _attention(m: ModelSpec) -> int:
    if m.mla:
        q_head = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = (m.hidden * m.q_lora_rank + m.q_lora_rank * m.heads * q_head) if m.q_lora_rank \
            else m.hidden * m.heads * q_head
        kv = m.hidden * (m.kv_lora_rank + m.qk_rope_head_dim) \
            + m.kv_lora_rank * m.heads * (m.qk_nope_head_dim + m.v_head_dim)
        return q + kv + m.heads * m.v_head_dim * m.hidden
    return m.hidden * m.head_dim * (m.heads + 2 * m.kv_heads) + m.heads * m.head_dim * m.hidden


def size(m: ModelSpec) -> Size:
    ffn = 3 * m.hidden  # gate, up and down projections per unit of FFN width
    attention = _attention(m) * m.layers
    dense = ffn * (m.intermediate or 0) * m.dense_layers
    expert = ffn * (m.expert_intermediate or 0)
    routed = expert * m.experts * m.moe_layers
    shared = ffn * (m.shared_intermediate or m.expert_intermediate or 0) * m.shared_experts * m.moe_layers
    routers = m.hidden * m.experts * m.moe_layers
    norms = m.hidden * (2 * m.layers + 1) + (m.q_lora_rank + m.kv_lora_rank) * m.layers  # MLA norms its latents
    embed = m.vocab * m.hidden
    head = 0 if m.tied_embeddings else embed
    total = attention + dense + routed + shared + routers + norms + embed + head
    active = total - embed - (routed - expert * m.experts_per_token * m.moe_layers)
    linear = routed if m.quantized == "experts" else attention + dense + routed + shared
    return Size(total=total, active=active, quantized=linear if m.quantization else 0, embedding=embed + head)


def kv_values_per_token(m: ModelSpec) -> int:
    """Values cached per token per layer: K and V of each KV head, or MLA's one latent plus rope key."""
    if m.mla:
        return m.kv_lora_rank + m.qk_rope_head_dim
    return 2 * m.kv_heads * m.head_dim


def kv_bytes_per_sequence(m: ModelSpec, tokens: int, bytes_per_value: float) -> float:
    """KV cache of one sequence of `tokens` tokens; windowed layers hold at most their window."""
    windowed = min(tokens, m.sliding_window) * m.window_layers if m.window_layers else 0
    return kv_values_per_token(m) * bytes_per_value * ((m.layers - m.window_layers) * tokens + windowed)


def kv_copies(m: ModelSpec, tp: int) -> float:
    """How many times TP stores each token's cache: MLA's latent on every rank; KV heads beyond
    their count (vLLM replicates a KV head across the ranks that share it)."""
    return float(tp) if m.mla else max(1.0, tp / m.kv_heads)
