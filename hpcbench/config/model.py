"""The model catalog: architecture numbers the planner needs, and short aliases."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hpcbench.config.errors import ConfigError
from hpcbench.config.loading import FieldError, PositiveFloat, PositiveInt, Strict, check, read_yaml, validate
from hpcbench.config.values import non_empty, safe_name


class ModelSpec(Strict, kw_only=True):
    name: str
    hf_id: str
    aliases: list[str] = []
    params_b: PositiveFloat  # parameters, in billions (nominal, as published)
    layers: PositiveInt
    hidden: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt
    vocab: PositiveInt
    max_context: PositiveInt
    dtype: str = "bfloat16"
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


def load_models(path: Path | None = None) -> list[ModelSpec]:
    path = path or catalog_path()
    return validate(Catalog, read_yaml(path), path).models


def resolve_model(name: str, models: list[ModelSpec] | None = None) -> ModelSpec:
    """A catalog entry by name, alias or Hugging Face id (case-insensitive)."""
    models = models if models is not None else load_models()
    wanted = name.strip().lower()
    for m in models:
        if wanted in {m.name.lower(), m.hf_id.lower(), *(a.lower() for a in m.aliases)}:
            return m
    known = ", ".join(f"{m.name} ({'/'.join(m.aliases)})" if m.aliases else m.name for m in models)
    raise ConfigError(None, "--model", f"unknown model {name!r}; known models: {known}")
