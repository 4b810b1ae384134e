"""Human-readable plan: the raw arithmetic, then the chosen layout and why."""

from __future__ import annotations

from hpcbench.plan import Plan


def format_plan(p: Plan) -> str:
    a = p.arithmetic
    lines = [
        f"{p.model} on {p.site} ({p.dtype}, KV cache {p.kv_cache_dtype}, max-model-len {p.max_model_len}, "
        f"mode {p.mode})",
        "",
        "memory arithmetic (published-table conventions):",
        f"  parameters            {a.params_b:g} B from the shapes"
        + (f", {a.active_params_b:g} B active per token" if a.active_params_b < a.params_b * 0.99 else ""),
        f"  weights               {a.weights_gb:g} GB",
        f"  KV cache per token    {a.kv_bytes_per_token} bytes",
        f"  KV cache, {a.context_tokens} tok  {a.kv_cache_gib:.2f} GiB",
        f"  accelerators          >= {a.accelerators_for_weights} for weights, "
        f">= {a.accelerators_for_full_context} for full context "
        f"({a.accelerator_memory_gib:g} GiB each)",
        "",
        "chosen layout:",
        f"  TP {p.tp} x PP {p.pp} on {p.nodes} node(s), {p.replicas} replica(s)"
        f" ({p.replicas_per_node} per node), executor {p.backend}",
        f"  accelerators          {p.accelerators_used} used of {p.accelerators_held} held",
        f"  per accelerator       {p.usable_gib_per_accelerator:g} GiB usable = "
        f"{p.weights_gib_per_accelerator:g} GiB weights + "
        f"{p.kv_room_gib_per_replica / p.accelerators_per_replica:.2f} GiB KV cache",
        f"  KV room per replica   {p.kv_room_gib_per_replica:g} GiB = {p.kv_tokens_per_replica} tokens "
        f"= {p.full_sequences_per_replica} full-length sequences (load asks {p.kv_tokens_wanted} tokens)",
        f"  engine ready timeout  {p.engine_ready_timeout_s} s",
        "",
        "why:",
        *(f"  - {r}" for r in p.reasons),
    ]
    if p.warnings:
        lines += ["", "warnings:", *(f"  ! {w}" for w in p.warnings)]
    return "\n".join(lines)
