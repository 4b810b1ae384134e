"""The model catalog: architecture numbers the planner needs, and short aliases."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpcbench.config.errors import ConfigError
from hpcbench.config.loading import read_yaml, validate


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    hf_id: str
    aliases: list[str] = Field(default_factory=list)
    params_b: float = Field(..., gt=0, description="parameters, in billions (nominal, as published)")
    layers: int = Field(..., ge=1)
    hidden: int = Field(..., ge=1)
    heads: int = Field(..., ge=1)
    kv_heads: int = Field(..., ge=1)
    head_dim: int = Field(..., ge=1)
    vocab: int = Field(..., ge=1)
    max_context: int = Field(..., ge=1)
    dtype: str = "bfloat16"
    local: bool = Field(False, description="made by `hpcbench make-tiny-model`, never downloaded")

    @model_validator(mode="after")
    def _heads(self) -> "ModelSpec":
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        return self


def catalog_path() -> Path:
    return Path(str(resources.files("hpcbench.catalog") / "models.yaml"))


def load_models(path: Path | None = None) -> list[ModelSpec]:
    path = path or catalog_path()
    data = read_yaml(path)
    entries = data.get("models")
    if not isinstance(entries, list):
        raise ConfigError(path, "models", "expected a list of models")
    models = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(path, f"models.{i}", "expected a mapping")
        try:
            models.append(validate(ModelSpec, entry, path))
        except ConfigError as exc:
            raise ConfigError(path, f"models.{i}.{exc.key}", exc.problem) from None
    return models


def resolve_model(name: str, models: list[ModelSpec] | None = None) -> ModelSpec:
    """A catalog entry by name, alias or Hugging Face id (case-insensitive)."""
    models = models if models is not None else load_models()
    wanted = name.strip().lower()
    for m in models:
        if wanted in {m.name.lower(), m.hf_id.lower(), *(a.lower() for a in m.aliases)}:
            return m
    known = ", ".join(f"{m.name} ({'/'.join(m.aliases)})" if m.aliases else m.name for m in models)
    raise ConfigError(None, "model", f"unknown model {name!r}; known models: {known}")
