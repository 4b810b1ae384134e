"""Reading YAML into pydantic models with one clear message per mistake (file, key path, expected)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hpcbench.config.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path | str, text: str | None = None) -> dict[str, Any]:
    """Parse one YAML mapping; malformed YAML names the line and column."""
    try:
        raw = Path(path).read_text() if text is None else text
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, where, f"malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate(model: type[M], data: dict[str, Any], file: Path | str | None) -> M:
    """model.model_validate(data), turning the first validation error into a ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            fields = ", ".join(sorted(_fields_at(model, err["loc"][:-1])))
            problem = f"unknown key (expected one of: {fields})"
        elif kind == "missing":
            problem = "required key is missing"
        else:
            problem = f"{err['msg']} (got {err.get('input')!r})"
        more = len(exc.errors()) - 1
        if more:
            problem += f" [and {more} more problem{'s' if more > 1 else ''}]"
        raise ConfigError(file, key, problem) from None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at a key path, for the 'unknown key' message."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; everything else (lists included) in override replaces base."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def package_files(package: str, pattern: str = "*.yaml") -> dict[str, Path]:
    """Built-in YAML files shipped in a package, by stem."""
    root = resources.files(package)
    out: dict[str, Path] = {}
    for entry in root.iterdir():
        name = entry.name
        if Path(name).match(pattern):
            out[Path(name).stem] = Path(str(entry))
    return out
