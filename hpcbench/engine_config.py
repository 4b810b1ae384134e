"""The engine's configuration, built in one place.

`engine_args` is the vLLM command line of the job: the server runs it as it is (plus --host and
--port), and offline mode hands the same list to vLLM's own parser (`offline_kwargs`), so a served and
an offline run of one plan get the same settings. The dtype spellings vLLM accepts, and the widths the
planner sizes memory with, are here too: a dtype vLLM would refuse is refused before anything queues.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from hpcbench.config.errors import UserError

if TYPE_CHECKING:
    from hpcbench.config.model import ModelSpec
    from hpcbench.config.site import Site
    from hpcbench.plan import Plan

# vLLM's --dtype choices and their widths; "auto" is the checkpoint's own (config.json torch_dtype).
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}
DTYPE_SPELLINGS = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# The --kv-cache-dtype choices hpcbench can size ("auto": the dtype of the activations).
KV_CACHE_BYTES = {"bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


def engine_dtype(name: str, what: str = "dtype") -> str:
    """vLLM's spelling of a dtype ('auto' kept), or ValueError naming the choices (a single-value check,
    as in hpcbench.config.values). Quantized widths are not dtypes: they come from the checkpoint."""
    key = name.strip().lower() if isinstance(name, str) else ""
    key = DTYPE_SPELLINGS.get(key, key)
    if key == "auto" or key in DTYPE_BYTES:
        return key
    hint = ("; quantized weights come from the checkpoint's config.json, and an FP8 KV cache is "
            "--kv-cache-dtype fp8" if any(q in key for q in ("fp8", "int", "fp4", "float8")) else "")
    raise ValueError(f"{what} {name!r} is not one vLLM accepts; choose from auto, {', '.join(DTYPE_BYTES)}, "
                     f"{', '.join(DTYPE_SPELLINGS)}{hint}")


def kv_cache_dtype(name: str, what: str = "KV cache dtype") -> str:
    key = name.strip().lower() if isinstance(name, str) else ""
    if key == "auto" or key in KV_CACHE_BYTES:
        return key
    raise ValueError(f"{what} {name!r} is not one hpcbench can size; choose from auto, {', '.join(KV_CACHE_BYTES)}")


def resolved_dtype(dtype: str, model: "ModelSpec") -> str:
    """The dtype the engine computes in: 'auto' is the checkpoint's."""
    try:
        key = engine_dtype(dtype, "--dtype")
        return engine_dtype(model.dtype, f"model {model.name}'s dtype") if key == "auto" else key
    except ValueError as exc:
        raise UserError(str(exc)) from None


def dtype_width(dtype: str) -> int:
    return DTYPE_BYTES[engine_dtype(dtype)]


def kv_width(kv_dtype: str, dtype: str) -> int:
    return dtype_width(dtype) if kv_cache_dtype(kv_dtype) == "auto" else KV_CACHE_BYTES[kv_dtype]


def engine_args(site: "Site", p: "Plan", model_path: str, served_name: str) -> list[str]:
    """The engine's command-line settings for a plan (no --host/--port: those are the server's)."""
    args = ["--model", model_path, "--served-model-name", served_name,
            "--tensor-parallel-size", str(p.tp), "--pipeline-parallel-size", str(p.pp),
            "--dtype", p.dtype, "--max-model-len", str(p.max_model_len)]
    if p.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", p.kv_cache_dtype]
    if p.tp * p.pp > 1:
        args += ["--distributed-executor-backend", p.backend]
    if p.expert_parallel:
        args.append("--enable-expert-parallel")
    if site.node.accelerator != "cpu":  # on CPU the KV cache size comes from VLLM_CPU_KVCACHE_SPACE
        args += ["--gpu-memory-utilization", f"{site.engine.gpu_memory_utilization:g}"]
    if site.engine.trust_remote_code:
        args.append("--trust-remote-code")
    return args + list(site.engine.extra_args)


def vllm_parser() -> Any:
    """The installed vLLM's own server argument parser (the one `vllm serve` uses)."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # vLLM before 0.30
        from vllm.entrypoints.openai.cli_args import make_arg_parser  # type: ignore[no-redef]
    return make_arg_parser(FlexibleArgumentParser())


def offline_kwargs(args: list[str]) -> dict[str, Any]:
    """vllm.LLM keyword arguments for the engine command line `args`: parsed by vLLM's own parser, the
    engine settings that differ from vLLM's defaults (server-only flags have no meaning offline)."""
    from vllm.engine.arg_utils import EngineArgs

    parser = vllm_parser()
    given, defaults = vars(parser.parse_args(args)), vars(parser.parse_args([]))
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    return {k: v for k, v in given.items() if k in fields and v != defaults.get(k)}
