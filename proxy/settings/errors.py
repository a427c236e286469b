"""Config errors in our words: pydantic's errors mapped in one place, the cross-field checks
that pydantic skips when a field is invalid, and YAML read strictly (duplicate keys are errors,
syntax errors name the file, line and column).

Every message is `path: what is wrong` (the YAML path, `[i]` for list items), and a config is
checked in one pass: `collect` returns the field errors and the cross-field errors together, so
`check-config` lists every problem at once. The admin API and the YAML file share this one
validator (proxy.settings.model.parse_settings).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

# pydantic error type -> our wording. `{...}` fields come from the error's ctx.
WORDS: dict[str, str] = {
    "extra_forbidden": "unknown key",
    "missing": "required",
    "bool_type": "expected true or false (not a string like 'yes')",
    "bool_parsing": "expected true or false",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "dict_type": "expected a mapping (key: value)",
    "model_type": "expected a mapping (key: value)",
    "model_attributes_type": "expected a mapping (key: value)",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "literal_error": "must be one of {expected}",
    "too_short": "needs at least {min_length} item(s)",
}


class ConfigError(ValueError):
    """Every problem found in one configuration, each as `path: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def format_loc(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The key names a mapping at `loc` may hold (for "did you mean")."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            current = _inner(current)
            if isinstance(part, int) or current is None:
                continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = current.model_fields[part].annotation
    current = _inner(current) if not (isinstance(current, type) and issubclass(current, BaseModel)) else current
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _inner(annotation: Any) -> Any:
    """The model inside tuple[Model, ...], dict[str, Model] or Model | None, else None."""
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def format_errors(exc: ValidationError, model: type[BaseModel], slot_pattern: str) -> list[str]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind in WORDS:
            try:
                msg = WORDS[kind].format(**(err.get("ctx") or {}))
            except (KeyError, IndexError):
                msg = WORDS[kind]
        if kind == "extra_forbidden" and loc and isinstance(loc[-1], str):
            close = difflib.get_close_matches(loc[-1], _fields_at(model, loc[:-1]), n=1, cutoff=0.6)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif kind == "string_pattern_mismatch" and "[key]" in loc:
            msg = f"slot names must match {slot_pattern}"
            loc = tuple(p for p in loc if p != "[key]")
        path = format_loc(loc)
        if not path and ": " in msg and not msg.startswith(("expected", "must")):
            errors.append(msg)  # a model-level check that names its own path
        else:
            errors.append(f"{path or '<root>'}: {msg}")
    return errors


def cross_field(data: Mapping[str, Any]) -> list[str]:
    """The cross-field checks, on the raw data: pydantic runs its model validators only when every
    field of the model is valid, so these run here too, and every error shows in one pass."""
    errors = []
    slots, active = data.get("slots"), data.get("active")
    names = [str(n) for n in slots] if isinstance(slots, Mapping) else []
    if isinstance(slots, Mapping) and isinstance(active, str) and len(slots) == 2 and active not in slots:
        errors.append(f"active: {active!r} is not a slot (slots: {', '.join(names)})")
    health = data.get("health")
    checks = health.get("checks") if isinstance(health, Mapping) else None
    if isinstance(checks, Mapping) and names:
        unknown = [name for name in checks if name not in names]
        if unknown:
            errors.append(f"health.checks: no slot named {', '.join(map(repr, unknown))}")
    sticky = data.get("sticky")
    if isinstance(sticky, Mapping) and sticky.get("by") in ("cookie", "header") and not sticky.get("name"):
        errors.append(f"sticky: sticky.by {sticky['by']} needs a name")
    admin = data.get("admin")
    tokens = admin.get("tokens") if isinstance(admin, Mapping) else None
    for i, token in enumerate(tokens if isinstance(tokens, list) else []):
        if isinstance(token, Mapping) and (token.get("token_env") is None) == (token.get("token_file") is None):
            errors.append(f"admin.tokens[{i}]: set exactly one of token_env or token_file")
    return errors


def merge(field_errors: list[str], cross: list[str]) -> list[str]:
    """Field errors first, then cross-field ones not already reported (the model validators'
    messages are the same text, with or without the path prefix)."""
    out = list(field_errors)
    for message in cross:
        if not any(message in line or line.endswith(message.split(": ", 1)[-1]) for line in out):
            out.append(message)
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML says keys are unique;
    PyYAML silently keeps the last)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})", mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in `path`; ConfigError with file:line:column for any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{where}: not valid YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
