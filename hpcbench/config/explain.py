"""What went wrong, in words: the key path and the problem for a msgspec ValidationError or a YAML key
given twice. Imported only when something is wrong (hpcbench.config.loading builds the message)."""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
import yaml

from hpcbench.config.loading import FieldError


def key_path(node: Any, mark: Any, seen: set[int] | None = None) -> list[str] | None:
    """The key path, in the composed YAML tree under node, of the mapping key written at mark."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias may refer back to its own anchor
        return None
    seen.add(id(node))
    children: list[tuple[str, Any]] = []
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.start_mark.index == mark.index:
                return [str(key_node.value)]
            children.append((str(getattr(key_node, "value", "?")), value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [(str(i), child) for i, child in enumerate(node.value)]
    for name, child in children:
        below = key_path(child, mark, seen)
        if below is not None:
            return [name, *below]
    return None


# "<what msgspec says> - at `$.a[0].b`" (nothing after the text at the top level); a bad mapping key
# reads "... - at `key` in `$.a`", and a bad mapping value "... - at `$.a[...]`".
_AT = re.compile(r"(?P<text>.*?)(?: - at (?P<in_key>`key` in )?`\$(?P<path>[^`]*)`)?", re.S)
_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_NOUNS = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false",
          "array": "a list", "object": "a mapping", "null": "null"}
_BOUNDS = {">=": "of at least", ">": "greater than", "<=": "of at most", "<": "less than"}


def explain(model: type, data: Any, exc: msgspec.ValidationError) -> tuple[list[str], str]:
    """(key path, problem) for msgspec's message, looking the value and its type up along the path."""
    match = _AT.fullmatch(str(exc))
    assert match is not None  # the pattern matches any text
    text, cause = match["text"], exc.__cause__
    keys: list[str] = []
    value, typ = data, model
    for name, index in _PART.findall(match["path"] or ""):
        part: Any = name or (int(index) if index != "..." else None)
        if part is None:  # msgspec does not say which value of a mapping: the first one that fails
            part = _first_bad(value, lambda v, t=_arg(typ, dict, 1): _fails(v, t))
        keys.append(str(part))
        typ, value = _step(typ, part), _get(value, part)
    if match["in_key"]:
        key_type = str if _fields(typ) else _arg(typ, dict, 0)  # a record's keys are its field names
        bad = _first_bad(value, lambda k: _fails(k, key_type), keys_of=True)
        return keys, f"{_expected(text)} as a key (got {_show(bad)})"
    if isinstance(cause, FieldError):
        return keys + cause.key.split("."), cause.problem
    if isinstance(cause, (ValueError, TypeError)):
        return keys, str(cause)
    if m := re.fullmatch(r"Object contains unknown field `(.*)`", text):
        allowed = ", ".join(sorted(_fields(typ)))
        return keys + [m[1]], f"unknown key (expected one of: {allowed})"
    if m := re.fullmatch(r"Object missing required field `(.*)`", text):
        return keys + [m[1]], "required key is missing"
    choices = [repr(c) for arm in _arms(typ) if get_origin(arm) is Literal for c in get_args(arm)]
    if text.startswith("Invalid enum value") and choices:
        one_of = f"one of {', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
        return keys, f"expected {one_of} (got {_show(value)})"
    return keys, f"{_expected(text)} (got {_show(value)})"


def _expected(text: str) -> str:
    """msgspec's "Expected `int | array` >= 1, got `str`" in words: "expected a whole number or a list ..."."""
    m = re.fullmatch(r"Expected `([^`]*)`(.*?)(?:, got `[^`]*`)?", text, re.S)
    if not m:
        return text[:1].lower() + text[1:]
    kinds = " or ".join(_NOUNS.get(k, k) for k in m[1].split(" | "))
    rest = re.sub(r"(>=|<=|>|<) (-?\d+(?:\.\d+)?)", lambda b: f"{_BOUNDS[b[1]]} {float(b[2]):g}", m[2])
    return f"expected {kinds}{rest.replace('of length of', 'of length')}"


def _show(value: Any) -> str:
    """A value for a message: short, and never a whole mapping."""
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _get(value: Any, part: str | int) -> Any:
    try:
        return value[part]
    except (KeyError, IndexError, TypeError):
        return None


def _first_bad(mapping: Any, fails: Callable[[Any], bool], keys_of: bool = False) -> Any:
    """The first key of mapping whose value (or the key itself, keys_of) fails; "..." if none does."""
    for key, value in (mapping.items() if isinstance(mapping, dict) else ()):
        if fails(key if keys_of else value):
            return key
    return "..."


def _fails(value: Any, typ: Any) -> bool:
    try:
        msgspec.convert(value, typ)
    except msgspec.ValidationError:
        return True
    return False


def _arms(typ: Any) -> list[Any]:
    """The alternatives of a type: Annotated stripped, unions (X | None, Union[...]) flattened."""
    if get_origin(typ) is Annotated:
        return _arms(get_args(typ)[0])
    if get_origin(typ) in (Union, types.UnionType):
        return [arm for arg in get_args(typ) for arm in _arms(arg)]
    return [typ]


def _arg(typ: Any, origin: type, index: int) -> Any:
    """The index-th type argument of the first alternative of typ whose origin is origin (list, dict)."""
    for arm in _arms(typ):
        if get_origin(arm) is origin:
            return get_args(arm)[index]
    return Any


def _fields(typ: Any) -> dict[str, Any]:
    """Field name -> type of the record (struct or dataclass) among typ's alternatives; {} if none."""
    import dataclasses

    for arm in _arms(typ):
        if isinstance(arm, type) and issubclass(arm, msgspec.Struct):
            hints = get_type_hints(arm, include_extras=True)
            return {name: hints[name] for name in arm.__struct_fields__}
        if isinstance(arm, type) and dataclasses.is_dataclass(arm):
            hints = get_type_hints(arm, include_extras=True)
            return {f.name: hints[f.name] for f in dataclasses.fields(arm)}
    return {}


def _step(typ: Any, part: str | int) -> Any:
    """The type one step down: a list's items for an index, a record's field or a mapping's values for a name."""
    if isinstance(part, int):
        return _arg(typ, list, 0)
    fields = _fields(typ)
    return fields[part] if part in fields else _arg(typ, dict, 1)
