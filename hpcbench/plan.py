"""Memory and parallelism planner: (model, site, context, load) -> Plan, or a UserError saying why not.

Two levels, both reported:
- `Arithmetic`: the published-table conventions (the Kempner seed): weights = parameters x bytes in
  decimal GB (the published size when the model has one and is not quantized; else the bytes its shapes
  and quantization give); KV cache = 2 x layers x KV heads x head dim x bytes per token (MLA: the latent;
  windowed layers: at most their window), for the context, in GiB; accelerators = ceil(memory / memory).
- the layout actually chosen, with real sizes and margins: weights as counted from the shapes
  (hpcbench.model_size), only `gpu_memory_utilization` of each accelerator is the engine's, minus a
  per-accelerator overhead (activations, CUDA graphs, runtime), and the KV room must hold one full-length
  sequence with a margin. The sweep's heaviest point (tokens in flight) does not add nodes unless asked
  (`fit_load`): a load that queues in the engine is what a benchmark of that layout should show, and the
  plan says so.

Layout rules: tensor parallel (TP) stays within a node and must divide the attention heads, and divide
or be a multiple of the KV heads (vLLM replicates KV heads when TP exceeds them); pipeline parallel
(PP) spans nodes, one stage per node, at most the layer count. `serve` and `offline` run one engine
over the fewest nodes that fit; `replicas` runs independent engines, each inside one node.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hpcbench.config.errors import UserError
from hpcbench.config.model import ModelSpec
from hpcbench.config.site import Site
from hpcbench.config.values import positive_int
from hpcbench.engine_config import dtype_width, kv_cache_dtype, kv_width, resolved_dtype
from hpcbench.model_size import kv_bytes_per_sequence, kv_copies, kv_values_per_token, size

if TYPE_CHECKING:
    from hpcbench.config.sweep import Sweep

GB = 1e9
GiB = float(2**30)
KV_MARGIN = 1.1  # KV room for a full-length sequence and a tenth more: the profile run and block rounding vary
# endpoint: servers that hpcbench did not start (`hpcbench bench`); the layout is what the user says.
Mode = Literal["serve", "replicas", "offline", "endpoint"]

# What `plan` and `submit` use when --site / --model are not given.
DEFAULT_SITE = "local"
DEFAULT_MODEL = "tiny"


class PlanError(UserError):
    """The request cannot be served on this site; the message carries the numbers."""


@dataclass(frozen=True)
class Arithmetic:
    """The raw numbers, in the seed table's units (weights in GB, KV in GiB)."""

    dtype_bytes: float
    kv_dtype_bytes: float
    params_b: float          # counted from the shapes
    active_params_b: float   # used per token (mixture of experts: the routed experts it is sent to)
    weights_gb: float
    kv_bytes_per_token: int  # layers with full attention (windowed layers add at most their window)
    context_tokens: int
    kv_cache_gib: float
    accelerator_memory_gib: float
    accelerators_for_weights: int
    accelerators_for_full_context: int


def arithmetic(model: ModelSpec, site: Site, context: int, dtype: str, kv_dtype: str = "auto") -> Arithmetic:
    b, kvb = dtype_width(dtype), kv_width(kv_dtype, dtype)
    n = size(model)
    nominal = model.params_b is not None and not model.quantization
    weights_gb = model.params_b * 1e9 * b / GB if nominal else n.weight_bytes(model, b) / GB  # type: ignore[operator]
    kv_per_token = int(kv_values_per_token(model) * (model.layers - model.window_layers) * kvb)
    kv_gib = kv_bytes_per_sequence(model, context, kvb) / GiB
    mem = site.node.memory_gib
    return Arithmetic(
        dtype_bytes=b, kv_dtype_bytes=kvb,
        params_b=round(n.total / 1e9, 3), active_params_b=round(n.active / 1e9, 3),
        weights_gb=round(weights_gb, 2),
        kv_bytes_per_token=kv_per_token,
        context_tokens=context,
        kv_cache_gib=round(kv_gib, 2),
        accelerator_memory_gib=mem,
        accelerators_for_weights=math.ceil(round(weights_gb / mem, 9)),
        # The seed adds GB of weights to GiB of KV; kept so its table is reproduced exactly.
        accelerators_for_full_context=math.ceil(round((weights_gb + kv_gib) / mem, 9)),
    )


@dataclass
class Plan:
    site: str
    model: str
    mode: Mode
    dtype: str
    kv_cache_dtype: str
    max_model_len: int
    kv_tokens_wanted: int
    tp: int | None  # None: not known (servers hpcbench did not start, when the user does not say)
    pp: int | None
    nodes: int | None
    replicas: int
    replicas_per_node: int
    accelerators_per_replica: int
    expert_parallel: bool
    accelerators_used: int
    accelerators_held: int | None
    usable_gib_per_accelerator: float
    weights_gib_per_accelerator: float
    kv_room_gib_per_replica: float
    kv_tokens_per_replica: int
    full_sequences_per_replica: int
    backend: str
    engine_ready_timeout_s: int
    arithmetic: Arithmetic
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def valid_tp_sizes(model: ModelSpec, per_node: int) -> list[int]:
    return [t for t in range(1, per_node + 1)
            if model.heads % t == 0 and (model.mla or model.kv_heads % t == 0 or t % model.kv_heads == 0)]


def _check_tp(model: ModelSpec, tp: int, per_node: int) -> None:
    if model.heads % tp:
        raise PlanError(f"TP {tp} does not divide the {model.heads} attention heads of {model.name}")
    if not model.mla and model.kv_heads % tp and tp % model.kv_heads:
        raise PlanError(f"TP {tp} neither divides nor is a multiple of the {model.kv_heads} KV heads "
                        f"of {model.name}")
    if tp > per_node:
        raise PlanError(f"TP {tp} exceeds the {per_node} accelerators of one node (TP stays within a node)")


@dataclass(frozen=True)
class _Fit:
    usable: float          # bytes per accelerator the engine may use
    weights: float         # bytes of weights per accelerator
    kv_room: float         # bytes for KV cache per replica
    kv_tokens: int         # tokens that room holds


def _fit(model: ModelSpec, site: Site, a: Arithmetic, tp: int, pp: int) -> _Fit:
    usable = site.node.memory_gib * GiB * site.engine.gpu_memory_utilization - site.engine.overhead_gib * GiB
    weights = size(model).weight_bytes(model, a.dtype_bytes) / (tp * pp)
    kv_room = max(0.0, usable - weights) * tp * pp
    # Per token of a full-length sequence (windowed layers cap theirs), times the copies TP keeps.
    context = a.context_tokens
    per_token = kv_bytes_per_sequence(model, context, a.kv_dtype_bytes) / context * kv_copies(model, tp)
    return _Fit(usable, weights, kv_room, int(kv_room // per_token))


def engine_timeout(site: Site, a: Arithmetic) -> int:
    """Loading time budget: the site's, else 5 min plus 6 s per GB of weights (405B: ~86 min)."""
    return site.engine.ready_timeout_s or int(300 + 6 * a.weights_gb)


def _whole(flag: str, value: int) -> None:
    """Callers other than the command line (which refuses these already) get the same words."""
    try:
        positive_int(value, flag)
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def default_sweep(site: Site) -> str:
    """The sweep a job runs when none is named: the quick smoke test on CPU sites, the FOM sweep elsewhere."""
    return "smoke" if site.node.accelerator == "cpu" else "aurora-fom"


def default_context(sweep: "Sweep") -> int:
    """The engine's context when --max-model-len is not given, for `plan` and `submit` alike: the longest
    context the sweep's scenarios need (the engine is sized for what runs, not the model's maximum)."""
    return sweep.needed_context()


def default_mode(sweep: "Sweep") -> Mode:
    return sweep.mode or "serve"


def sweep_load(sweep: "Sweep") -> int:
    """Tokens in flight at the sweep's heaviest point: its requests at once x their full length."""
    return max((p.concurrency or 1) * (p.input_len + p.output_len) for p in sweep.points())


def plan_sweep(model: ModelSpec, site: Site, sweep: "Sweep", *, max_model_len: int | None = None,
               mode: Mode | None = None, concurrency: int | None = None, **kw: Any) -> Plan:
    """The layout a job running `sweep` gets: `plan --sweep` and `submit --sweep` both call this, so
    they cannot disagree. Unless given, the context is what the sweep needs and the load its heaviest
    point (or `concurrency` full-length sequences)."""
    context = max_model_len or default_context(sweep)
    load = concurrency * context if concurrency else sweep_load(sweep)
    p = plan(model, site, max_model_len=context, mode=mode or default_mode(sweep), kv_tokens=load, **kw)
    if not max_model_len:
        p.reasons.insert(0, f"max-model-len {p.max_model_len}: the longest context sweep {sweep.name} needs "
                            "(--max-model-len to change)")
    return p


def plan_for(site_name: str, model_name: str, sweep_name: str | None = None, *, model_path: str | None = None,
             **kw: Any) -> Plan:
    """`hpcbench plan`: names resolved, then the plan `submit` would make for the same site and sweep."""
    from hpcbench.config import load_site, load_sweep
    from hpcbench.config.model import find_model

    site = load_site(site_name)
    model, _ = find_model(model_name, site, model_path)
    return plan_sweep(model, site, load_sweep(sweep_name or default_sweep(site)), **kw)


def plan(model: ModelSpec, site: Site, *, max_model_len: int, dtype: str | None = None,
         kv_cache: str | None = None, mode: Mode = "serve", nodes: int | None = None, tp: int | None = None,
         kv_tokens: int | None = None, concurrency: int = 1, fit_load: bool = False) -> Plan:
    """Choose TP, PP, nodes and replicas for an engine of max_model_len tokens of context. kv_tokens:
    tokens in flight the load puts in the engine (default: concurrency full-length sequences); the
    layout holds them only with fit_load, else a load beyond the KV room is reported as queueing."""
    _whole("--max-model-len", max_model_len)
    for flag, value in (("--concurrency", concurrency), ("--nodes", nodes), ("--tp", tp), ("kv_tokens", kv_tokens)):
        if value is not None:
            _whole(flag, value)
    dtype = resolved_dtype(dtype or site.engine.dtype, model)
    try:
        kv_dtype = kv_cache_dtype(kv_cache or site.engine.kv_cache_dtype, "--kv-cache-dtype")
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    context = max_model_len
    if context > model.max_context:
        raise PlanError(f"max-model-len {context} exceeds {model.name}'s context of {model.max_context} tokens")
    per_node = site.node.accelerators
    limit = site.scheduler.max_nodes
    if nodes is not None and nodes > limit:
        raise PlanError(f"{nodes} nodes requested, but site {site.name} allows at most {limit} per job")
    a = arithmetic(model, site, context, dtype, kv_dtype)
    load = max(context, kv_tokens if kv_tokens is not None else concurrency * context)
    need = math.ceil(context * KV_MARGIN)  # what every layout must hold
    wanted = max(need, load) if fit_load else need
    reasons: list[str] = []
    warnings: list[str] = []

    if tp is not None:
        _check_tp(model, tp, per_node)
        tps = [tp]
        reasons.append(f"TP {tp}: given")
    else:
        tps = valid_tp_sizes(model, per_node)

    def build(t: int, p: int, n: int, reps_per_node: int, f: _Fit) -> Plan:
        used = t * p * reps_per_node * (n if mode == "replicas" else 1)
        replicas = reps_per_node * n if mode == "replicas" else 1
        # Ray only where the engine spans nodes; a replica's workers stay on its node, and under the
        # job-wide Ray cluster they could be placed on another replica's GPUs.
        backend = "ray" if p > 1 else ("mp" if mode == "replicas" else site.engine.backend)
        if p > 1 and site.node.accelerator == "cpu":
            raise PlanError("pipeline parallel across nodes needs the Ray executor, which vLLM's CPU "
                            "platform refuses; on CPU sites use --mode replicas for several nodes")
        # Experts whole on each rank (each rank holds experts/ranks of them) instead of every expert cut
        # TP ways: fewer, larger expert matmuls and no all-reduce inside each expert.
        ep = bool(model.experts) and t * p > 1 and model.experts % t == 0
        if ep:
            reasons.append(f"expert parallel: the {model.experts} experts are spread whole over the {t} TP "
                           f"ranks ({model.experts // t} each) rather than each split {t} ways")
        share = math.ceil(load / replicas)
        if f.kv_tokens < share:
            why = (f"even the largest layout tried; the site allows {limit} node(s)" if fit_load else
                   "that is what this layout serves; --fit-load adds nodes or TP for it")
            warnings.append(f"the heaviest load needs {share} tokens of KV cache per replica, the layout holds "
                            f"{f.kv_tokens}: the engine will queue requests ({why})")
        return Plan(
            site=site.name, model=model.name, mode=mode, dtype=dtype, kv_cache_dtype=kv_dtype,
            max_model_len=context, kv_tokens_wanted=load, tp=t, pp=p, nodes=n, replicas=replicas,
            replicas_per_node=reps_per_node if mode == "replicas" else 1,
            accelerators_per_replica=t * p, expert_parallel=ep, accelerators_used=used,
            accelerators_held=n * per_node,
            usable_gib_per_accelerator=round(f.usable / GiB, 2),
            weights_gib_per_accelerator=round(f.weights / GiB, 2),
            kv_room_gib_per_replica=round(f.kv_room / GiB, 2), kv_tokens_per_replica=f.kv_tokens,
            full_sequences_per_replica=f.kv_tokens // context, backend=backend,
            engine_ready_timeout_s=engine_timeout(site, a), arithmetic=a, reasons=reasons,
            warnings=warnings)

    if mode == "replicas":
        n = nodes or 1
        for t in tps:
            f = _fit(model, site, a, t, 1)
            reps = per_node // t
            share = math.ceil(wanted / (reps * n))
            if f.kv_tokens >= max(need, share):
                reasons.append(f"TP {t}: the smallest TP whose replica holds the weights and "
                               + (f"its share of the load ({share} tokens)" if fit_load else
                                  f"a full-length sequence with a margin ({need} tokens)")
                               + f"; {reps} replica(s) per node x {n} node(s)")
                reasons.append("PP 1: a replica stays within one node")
                return build(t, 1, n, reps, f)
        raise PlanError(_no_fit(model, site, a, context, "one node (a replica must fit in one node; "
                                "try --mode serve to span nodes)", max(tps), 1))

    candidates = [nodes] if nodes else list(range(1, limit + 1))
    best_fallback: tuple[int, int, int, _Fit] | None = None
    for n in candidates:
        if n > model.layers:
            raise PlanError(f"{n} nodes would need PP {n}, more than the {model.layers} layers of {model.name}")
        t = max(tps)
        f = _fit(model, site, a, t, n)
        if f.kv_tokens < context:
            continue
        if f.kv_tokens >= wanted:
            if tp is None:
                reasons.append(f"TP {t}: the largest TP within a node that divides {model.heads} "
                               f"heads / {model.kv_heads} KV heads")
            held = f"{wanted} tokens of KV cache" + (" (the load)" if fit_load and wanted > need else
                                                       " (a full-length sequence with a margin)")
            reasons.append(f"PP {n}: " + ("one node holds the weights and " + held if n == 1 else
                           f"one stage per node; {n} nodes are the fewest that hold "
                           f"{a.weights_gb:g} GB of weights and {held}"))
            return build(t, n, n, 1, f)
        if best_fallback is None:
            best_fallback = (t, n, n, f)
    if best_fallback is not None:
        t, p, n, f = best_fallback
        if f.kv_tokens < need:  # a load beyond the room is build()'s warning
            warnings.append(f"KV room holds {f.kv_tokens} tokens, less than a full-length sequence and its "
                            f"margin ({need}): little room for the engine's own estimate (more nodes would "
                            f"help, the site allows {limit})")
        reasons.append(f"TP {t}: the largest TP within a node dividing the heads")
        reasons.append(f"PP {p}: the fewest nodes that hold the weights and one full sequence")
        return build(t, p, n, 1, f)
    where = f"{nodes} node(s)" if nodes else f"the {limit} node(s) site {site.name} allows"
    raise PlanError(_no_fit(model, site, a, context, where, max(tps), candidates[-1]))


def described_plan(model: ModelSpec, site: Site, sweep: "Sweep", *, replicas: int, context: int,
                   gpus: int | None = None, nodes: int | None = None, tp: int | None = None,
                   pp: int | None = None, dtype: str | None = None) -> Plan:
    """The layout of servers hpcbench did not start, as the user describes it: nothing is fitted or
    chosen, unknown sizes stay None (their report cells stay empty, never guessed). context: the
    servers' max-model-len; the arithmetic is the model's at that context."""
    for flag, value in (("--gpus", gpus), ("--nodes", nodes), ("--tp", tp), ("--pp", pp)):
        if value is not None:
            _whole(flag, value)
    a = arithmetic(model, site, context, resolved_dtype(dtype or "auto", model))
    per_replica = tp * (pp or 1) if tp else 0
    reasons = [f"{replicas} endpoint(s) started elsewhere; layout as given: "
               + ", ".join(f"{k} {v if v is not None else 'not given'}"
                           for k, v in (("GPUs", gpus), ("nodes", nodes), ("TP", tp), ("PP", pp)))]
    return Plan(site=site.name, model=model.name, mode="endpoint", dtype=dtype or "", kv_cache_dtype="",
                max_model_len=context, kv_tokens_wanted=sweep_load(sweep), tp=tp, pp=pp, nodes=nodes,
                replicas=replicas, replicas_per_node=0, accelerators_per_replica=per_replica,
                expert_parallel=False, accelerators_used=per_replica * replicas, accelerators_held=gpus,
                usable_gib_per_accelerator=0.0, weights_gib_per_accelerator=0.0, kv_room_gib_per_replica=0.0,
                kv_tokens_per_replica=0, full_sequences_per_replica=0, backend="", engine_ready_timeout_s=1,
                arithmetic=a, reasons=reasons,
                warnings=[] if gpus else ["--gpus not given: per-GPU figures stay empty"])


def _no_fit(model: ModelSpec, site: Site, a: Arithmetic, context: int, where: str, tp: int, pp: int) -> str:
    """Why nothing fits, with the memory of the largest layout tried: TP tp x PP pp accelerators, not
    every accelerator of the nodes (a given --tp leaves the others idle)."""
    usable = site.node.memory_gib * site.engine.gpu_memory_utilization - site.engine.overhead_gib
    used = tp * pp
    return (f"{model.name} does not fit on {where}: it needs {a.weights_gb:g} GB of weights plus "
            f"{a.kv_cache_gib:g} GiB of KV cache for one {context}-token sequence "
            f"({a.accelerators_for_full_context} x {site.node.memory_gib:g} GiB accelerators by the raw "
            f"arithmetic), while TP {tp} x PP {pp} = {used} accelerator(s) x {usable:.1f} GiB usable "
            f"({site.engine.gpu_memory_utilization:g} of {site.node.memory_gib:g} GiB, less "
            f"{site.engine.overhead_gib:g} GiB overhead) = {used * usable:.1f} GiB")
