"""Typed YAML configs: dataclass sections, `--section.key=value` overrides, errors that name the key.

`load_sections(cls, data)` turns nested dicts into nested dataclasses, checking every value's type
and rejecting unknown keys with a did-you-mean. YAML files keep their line numbers so an error can
say `run.yaml:12: unknown key train.lrr (did you mean 'lr'?)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from xmodel2.errors import UserError


def read_yaml(path: str | Path) -> tuple[dict, dict[str, int]]:
    """The mapping in a YAML file and the line number of every dotted key in it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a mapping of sections")
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    return data, lines


def _collect_lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key + ".", lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, f"{prefix}{index}.", lines)


def overridden_keys(overrides: list[str]) -> set[str]:
    return {item[2:].split("=", 1)[0] for item in overrides if item.startswith("--")}


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--a.b=value` / `--a.b value` overrides; values are parsed as YAML scalars."""
    data = _deep_copy(data)
    pending = list(overrides)
    while pending:
        item = pending.pop(0)
        if not item.startswith("--") or item == "--":
            raise UserError(f"unexpected argument {item!r} (overrides look like --train.lr=0.02)")
        item = item[2:]
        if "=" in item:
            key, raw = item.split("=", 1)
        elif pending and not pending[0].startswith("--"):
            key, raw = item, pending.pop(0)
        else:
            raise UserError(f"override --{item} needs a value (--{item}=VALUE)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
                continue
            if not isinstance(target, dict):
                raise UserError(f"override --{key}: {part!r} is not a section")
            target = target.setdefault(part, {})
        if isinstance(target, list) and parts[-1].isdigit():
            target[int(parts[-1])] = value
        else:
            target[parts[-1]] = value
    return data


def load_sections(cls: type, data: Any, where: str = "", lines: dict[str, int] | None = None,
                  source: str = "") -> Any:
    """Build dataclass `cls` from nested dicts, validating types and keys."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise _error(where, f"{where or 'config'} must be a mapping", lines, source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _error(dotted, f"unknown key {dotted}{hint}", lines, source)
        values[key] = _convert(hints[key], value, dotted, lines, source)
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        dotted = f"{where}.{missing[0]}" if where else missing[0]
        raise _error(where, f"missing key {dotted}", lines, source)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise _error(where, f"{where or 'config'}: {exc}", lines, source) from None


def to_plain(obj: Any) -> Any:
    """Dataclasses to plain dicts/lists (for JSON and YAML)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _convert(hint: Any, value: Any, dotted: str, lines: dict, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, dotted, lines, source)
            except UserError as exc:
                errors.append(exc)
        raise errors[-1]
    if dataclasses.is_dataclass(hint):
        return load_sections(hint, value, dotted, lines, source)
    if origin is list:
        if not isinstance(value, list):
            raise _error(dotted, f"{dotted} must be a list, got {value!r}", lines, source)
        return [_convert(args[0], v, f"{dotted}.{i}", lines, source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _error(dotted, f"{dotted} must be a mapping, got {value!r}", lines, source)
        return {str(k): _convert(args[1], v, f"{dotted}.{k}", lines, source) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e30" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(dotted, f"{dotted} must be a number, got {value!r}", lines, source)
        return float(value)
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(dotted, f"{dotted} must be an integer, got {value!r}", lines, source)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _error(dotted, f"{dotted} must be true or false, got {value!r}", lines, source)
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _error(dotted, f"{dotted} must be a string, got {value!r}", lines, source)
        return str(value)
    return value


def _error(dotted: str, message: str, lines: dict[str, int], source: str) -> UserError:
    # Keys without a line came from command-line overrides: the message names them alone.
    line = lines.get(dotted)
    if source and line:
        return UserError(f"{source}:{line}: {message}")
    return UserError(message)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
