"""Reading YAML into typed msgspec structs with one clear message per mistake (file, key path, expected).

Every configuration record derives from `Strict`: unknown keys are refused, fields are given by name,
numbers carry their bounds in their types (Annotated[int, msgspec.Meta(ge=1)]), and checks that need
code run in __post_init__, raising `FieldError` for the key they refuse. `validate` turns whatever
msgspec reports into one `<file>: <key.path>: <problem>` message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import yaml

from hpcbench.config.errors import ConfigError

T = TypeVar("T")

# Bounds shared by the records.
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=1024, le=65000)]


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every configuration record. (kw_only is not inherited: subclasses repeat it.)"""


class FieldError(ValueError):
    """A __post_init__ check refused one key of its record; key is relative to the record ("a.b")."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def check(key: str, func: Callable[..., T], value: Any, *args: Any) -> T:
    """func(value, *args), a single-value check (hpcbench.config.values), its ValueError naming key."""
    try:
        return func(value, *args)
    except ValueError as exc:
        raise FieldError(key, str(exc)) from None


# ------------------------------------------------------------------------------------------- YAML

# libyaml's parser when PyYAML was built with it (several times faster), else the pure-Python one.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe loading that refuses a key given twice in one mapping (PyYAML would keep the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # `<<:` merges may override; unhashable keys get the constructor's own message
            key = self.construct_object(key_node)
            if key in seen:
                raise _DuplicateKey(key, seen[key], key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_base60_as_text(self, node: Any) -> Any:
        # YAML 1.1 reads 1:30:00 as a base-60 number (5400): such a value is kept as written (a walltime).
        if ":" in node.value:
            return self.construct_scalar(node)
        return self.construct_yaml_int(node) if node.tag.endswith(":int") else self.construct_yaml_float(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_base60_as_text)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_base60_as_text)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: Any, again: Any) -> None:
        self.key, self.first, self.again = key, first, again


def read_yaml(path: Path | str, text: str | None = None) -> dict[str, Any]:
    """Parse one YAML mapping; malformed YAML names the line and column, a duplicate key its path too."""
    try:
        raw = Path(path).read_text() if text is None else text
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text (byte {exc.start})") from None
    loader = _Loader(raw)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except _DuplicateKey as exc:
        from hpcbench.config.explain import key_path  # only when something is wrong

        first, again = exc.first.line + 1, exc.again.line + 1
        given = f"given twice on line {first}" if first == again else f"given on lines {first} and {again}"
        keys = key_path(root, exc.again)
        if keys:
            raise ConfigError(path, ".".join(keys), f"duplicate key: {given}") from None
        raise ConfigError(path, f"line {again}", f"duplicate key {exc.key!r}: {given}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, where, f"malformed YAML: {problem}") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a mapping at the top level, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------- validation

Origin = Callable[[list[str]], "Path | str | None"]


def validate(model: type[T], data: dict[str, Any], file: Path | str | None, origin: Origin | None = None) -> T:
    """msgspec.convert(data, model), its error turned into one ConfigError: `<file>: <key.path>: <problem>`.

    origin, when the data was merged from several files, gives the file a key path came from."""
    try:
        return msgspec.convert(data, model, strict=False)  # "4" and 4.0 are read as 4, as YAML users expect
    except msgspec.ValidationError as exc:
        from hpcbench.config.explain import explain  # only when something is wrong

        keys, problem = explain(model, data, exc)
        raise ConfigError(origin(keys) if origin else file, ".".join(keys), problem) from None


# ---------------------------------------------------------------------------------------- helpers


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; everything else (lists included) in override replaces base."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def is_yaml_path(name_or_path: str) -> bool:
    """Whether --site/--sweep names a file (a .yaml path, or anything with a folder) rather than a catalog name."""
    return Path(name_or_path).suffix in (".yaml", ".yml") or os.sep in name_or_path


def name_from_file(path: Path, what: str) -> str:
    """The name of a profile without a `name:` key: its file's stem, if that is a safe name."""
    from hpcbench.config.values import safe_name

    try:
        return safe_name(path.stem, what)
    except ValueError as exc:
        raise ConfigError(path, "name", f"no name key, and the file name cannot be one: {exc}") from None


def package_files(package: str, pattern: str = "*.yaml") -> dict[str, Path]:
    """Built-in YAML files shipped in a package, by stem."""
    root = resources.files(package)
    out: dict[str, Path] = {}
    for entry in root.iterdir():
        name = entry.name
        if Path(name).match(pattern):
            out[Path(name).stem] = Path(str(entry))
    return out
