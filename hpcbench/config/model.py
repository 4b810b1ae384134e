"""The model catalog: architecture numbers the planner needs, and short aliases."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import msgspec

from hpcbench.config.errors import ConfigError
from hpcbench.config.loading import (FieldError, NonNegativeInt, PositiveFloat, PositiveInt, Strict, check, read_yaml,
                                     validate)
from hpcbench.config.values import non_empty, safe_name

if TYPE_CHECKING:
    from hpcbench.config.site import Site


class ModelSpec(Strict, kw_only=True):
    """A model's architecture: from its config.json (hpcbench.config.hf_config) or a catalog entry."""

    name: str
    hf_id: str
    aliases: list[str] = []
    params_b: Optional[PositiveFloat] = None  # the published (nominal) size, in billions, when there is one
    layers: PositiveInt
    hidden: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt
    vocab: PositiveInt
    max_context: PositiveInt
    intermediate: Optional[PositiveInt] = None  # FFN width of the dense layers
    tied_embeddings: bool = False
    # Mixture of experts: moe_layers of the layers route each token to experts_per_token of `experts`
    # FFNs of expert_intermediate width, plus shared_experts that every token uses.
    experts: NonNegativeInt = 0
    experts_per_token: NonNegativeInt = 0
    expert_intermediate: Optional[PositiveInt] = None
    moe_layers: NonNegativeInt = 0
    shared_experts: NonNegativeInt = 0
    shared_intermediate: Optional[PositiveInt] = None  # default: expert_intermediate
    # Multi-head latent attention (DeepSeek): the cache holds kv_lora_rank + qk_rope_head_dim per layer.
    kv_lora_rank: NonNegativeInt = 0
    q_lora_rank: NonNegativeInt = 0
    qk_nope_head_dim: NonNegativeInt = 0
    qk_rope_head_dim: NonNegativeInt = 0
    v_head_dim: NonNegativeInt = 0
    # Windowed attention: window_layers of the layers attend to (and cache) the last sliding_window tokens.
    sliding_window: NonNegativeInt = 0
    window_layers: NonNegativeInt = 0
    # The checkpoint's quantization (its quantization_config): vLLM's method name, bits per quantized
    # weight with scales, and which weights: every linear layer, or only the experts (gpt-oss).
    quantization: Optional[str] = None
    weight_bits: Optional[PositiveFloat] = None
    quantized: Literal["linear", "experts"] = "linear"
    dtype: str = "bfloat16"  # of the weights that are not quantized (config.json's torch_dtype)
    local: bool = False  # made by `hpcbench make-tiny-model`, never downloaded

    def __post_init__(self) -> None:
        # The name is a folder of the experiments root; an alias may become the job's name.
        check("name", safe_name, self.name, "model name")
        for i, alias in enumerate(self.aliases):
            check(f"aliases.{i}", safe_name, alias, "an alias")
        check("hf_id", non_empty, self.hf_id, "hf_id")
        check("dtype", non_empty, self.dtype, "dtype")
        if self.heads % self.kv_heads:
            raise FieldError("kv_heads", f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.experts:
            if not 1 <= self.experts_per_token <= self.experts:
                raise FieldError("experts_per_token", f"must be 1 to experts ({self.experts})")
            if self.expert_intermediate is None:
                raise FieldError("expert_intermediate", "a mixture-of-experts model needs its experts' FFN width")
            if not 1 <= self.moe_layers <= self.layers:
                raise FieldError("moe_layers", f"must be 1 to layers ({self.layers})")
        elif self.moe_layers or self.experts_per_token or self.shared_experts:
            raise FieldError("experts", "moe_layers, experts_per_token and shared_experts need experts")
        if self.dense_layers and self.intermediate is None:
            raise FieldError("intermediate", "the FFN width of the dense layers is needed to count parameters")
        if self.window_layers > self.layers:
            raise FieldError("window_layers", f"must be at most layers ({self.layers})")
        if bool(self.window_layers) != bool(self.sliding_window):
            raise FieldError("sliding_window", "sliding_window and window_layers go together")
        if self.kv_lora_rank and not (self.qk_rope_head_dim and self.qk_nope_head_dim and self.v_head_dim):
            raise FieldError("kv_lora_rank", "latent attention needs qk_rope_head_dim, qk_nope_head_dim and "
                                             "v_head_dim")
        if bool(self.quantization) != bool(self.weight_bits):
            raise FieldError("quantization", "quantization and weight_bits go together")

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    def architecture(self) -> dict[str, Any]:
        """The fields that describe the weights (everything but names and provenance), to compare a
        catalog entry with the config.json of the weights it points at."""
        skip = {"name", "hf_id", "aliases", "params_b", "local"}
        return {k: v for k, v in msgspec.structs.asdict(self).items() if k not in skip}


class Catalog(Strict, kw_only=True):
    """A catalog file: `models:` and nothing else."""

    models: list[ModelSpec]

    def __post_init__(self) -> None:
        # resolve_model takes the first match: a second model answering to a name would never be found.
        owner: dict[str, int] = {}
        for i, m in enumerate(self.models):
            words = [("name", m.name), ("hf_id", m.hf_id), *((f"aliases.{j}", a) for j, a in enumerate(m.aliases))]
            for key, word in words:
                first = owner.setdefault(word.lower(), i)
                if first != i:
                    raise FieldError(f"models.{i}.{key}", f"{word!r} already names model {self.models[first].name!r}")


def catalog_path() -> Path:
    return Path(str(resources.files("hpcbench.catalog") / "models.yaml"))


def user_model_dirs() -> list[Path]:
    """Where users add catalog entries, as for sites: ./models, then ~/.config/hpcbench/models."""
    config_home = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return [Path.cwd() / "models", config_home / "hpcbench" / "models"]


def load_models(path: Path | None = None) -> list[ModelSpec]:
    """The catalog: one file, or the built-in one with the users' files over it (an entry of the same
    name replaces the built-in one; ./models wins over ~/.config)."""
    if path is not None:
        return validate(Catalog, read_yaml(path), path).models
    found = {m.name: m for m in validate(Catalog, read_yaml(catalog_path()), catalog_path()).models}
    for folder in reversed(user_model_dirs()):
        for file in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.update((m.name, m) for m in validate(Catalog, read_yaml(file), file).models)
    models = list(found.values())
    try:
        Catalog(models=models)  # names and aliases still answer to one model each
    except FieldError as exc:
        raise ConfigError(None, "model catalog", f"{exc.problem} (a user catalog entry in "
                          f"{' or '.join(map(str, user_model_dirs()))} clashes with another)") from None
    return models


def resolve_model(name: str, models: list[ModelSpec] | None = None) -> ModelSpec:
    """A catalog entry by name, alias or Hugging Face id (case-insensitive)."""
    models = models if models is not None else load_models()
    found = _catalog_entry(name, models)
    if found is None:
        raise ConfigError(None, "--model", _unknown(name, models))
    return found


def _catalog_entry(name: str, models: list[ModelSpec]) -> ModelSpec | None:
    wanted = name.strip().lower()
    for m in models:
        if wanted in {m.name.lower(), m.hf_id.lower(), *(a.lower() for a in m.aliases)}:
            return m
    return None


def _unknown(name: str, models: list[ModelSpec]) -> str:
    known = ", ".join(f"{m.name} ({'/'.join(m.aliases)})" if m.aliases else m.name for m in models)
    return (f"unknown model {name!r}: not a folder with a config.json, not in the site's models_dir or "
            f"Hugging Face cache (hf_home), not in the catalog; known models: {known}")


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(path)).expanduser()


def _cached_config(hf_id: str, site: "Site | None") -> Path | None:
    """config.json of a Hugging Face id in the site's cache (the snapshot refs/main names, else the
    newest) or its models_dir."""
    if site is None or "/" not in hf_id:
        return None
    if site.models_dir:
        local = _expand(site.models_dir) / hf_id.split("/")[-1] / "config.json"
        if local.is_file():
            return local
    if site.hf_home:
        repo = _expand(site.hf_home) / "hub" / f"models--{hf_id.replace('/', '--')}"
        ref = repo / "refs" / "main"
        if ref.is_file():
            pinned = repo / "snapshots" / ref.read_text().strip() / "config.json"
            if pinned.is_file():
                return pinned
        snapshots = sorted(repo.glob("snapshots/*/config.json"), key=lambda p: p.stat().st_mtime)
        if snapshots:
            return snapshots[-1]
    return None


def from_config(config: Path, name: str, hf_id: str) -> ModelSpec:
    """A model spec from the config.json of its weights."""
    from hpcbench.config.hf_config import read_config, spec_fields

    try:
        fields = spec_fields(read_config(config), config)
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as exc:
        # a field of the wrong kind (a string, a list, a zero): the shapes cannot be read
        raise ConfigError(config, "", f"cannot read the architecture from config.json: {exc}") from None
    safe = "".join(c if c.isalnum() or c in "._+-" else "-" for c in name).strip("-.") or "model"
    try:
        return msgspec.convert({"name": safe, "hf_id": hf_id, **fields}, ModelSpec)
    except (msgspec.ValidationError, FieldError) as exc:
        raise ConfigError(config, "", f"cannot plan this architecture: {exc}") from None


def find_model(name: str, site: "Site | None" = None, model_path: str | None = None,
               path_flag: str = "--model-path") -> tuple[ModelSpec, str]:
    """(architecture, what the engine loads) for --model NAME [--model-path P] (path_flag: how the
    command calls P).

    NAME is a folder with a config.json, a catalog name, alias or Hugging Face id, or a Hugging Face id
    in the site's models_dir or cache. The architecture comes from the weights' own config.json whenever
    one is found; a catalog entry that contradicts it is refused, never used in its place.
    """
    folder = _expand(name)
    if (folder / "config.json").is_file():
        if model_path is not None:
            raise ConfigError(None, path_flag, f"--model {name} is a folder of weights already; "
                              f"{path_flag} is for a catalog model's weights")
        spec = from_config(folder / "config.json", folder.resolve().name, folder.resolve().name)
        return spec, str(folder.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(None, "--model", f"{name!r}: no such folder with a config.json")
    models = load_models()
    entry = _catalog_entry(name, models)
    path = weights_path(entry, name, site, model_path)
    local = _expand(path) / "config.json"
    config = local if local.is_file() else _cached_config(path, site) or _cached_config(name, site)
    if entry is None:
        if config is None:
            raise ConfigError(None, "--model", _unknown(name, models))
        # Weights found in the Hugging Face cache load by id (the job sets HF_HOME); else their folder.
        in_cache = site is not None and site.hf_home and config.is_relative_to(_expand(site.hf_home))
        return from_config(config, name.split("/")[-1], name), name if in_cache else str(config.parent)
    if config is not None:
        derived = from_config(config, entry.name, entry.hf_id).architecture()
        differ = [f"{k} {v!r} (catalog: {entry.architecture()[k]!r})" for k, v in derived.items()
                  if entry.architecture()[k] != v]
        if differ:
            raise ConfigError(None, "--model", f"catalog model {entry.name} does not match the weights at "
                              f"{config.parent}: their config.json has {'; '.join(differ)}; name the folder "
                              "itself with --model, or fix the catalog entry")
    return entry, path


def weights_path(entry: ModelSpec | None, name: str, site: "Site | None", override: str | None) -> str:
    """A local folder if one is known (override, tiny model, site models_dir), else the HF id."""
    if override:
        return str(_expand(override).resolve()) if _expand(override).exists() else override
    if entry is not None and entry.local:
        from hpcbench.config.job import tiny_model_dir

        return str(tiny_model_dir())
    hf_id = entry.hf_id if entry is not None else name
    if site is not None and site.models_dir:
        return str(_expand(site.models_dir) / hf_id.split("/")[-1])
    return hf_id
