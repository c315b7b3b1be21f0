"""Typed YAML configs: dataclass sections, `--section.key=value` overrides, errors that name the key.

`load_sections(cls, data)` turns nested dicts into nested dataclasses, checking every value's type
and range (declared on the field with `bounded(...)` or `one_of(...)`) and rejecting unknown keys
with a did-you-mean. YAML files keep their line numbers and overrides their text, so an error
blames what the user typed: `run.yaml:12: unknown key train.lrr (did you mean 'lr'?)`, or
`--train.lr=nan: must be a finite number > 0, got nan`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xmodel2.errors import UserError


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML without aliases: `*name` lets a few lines expand into billions of nodes (an
    "alias bomb"), and a config has no need to repeat a section by reference."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in configs",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _compose(text: str) -> yaml.Node | None:
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _construct(node: yaml.Node) -> Any:
    return _ConfigLoader("").construct_document(node)


def read_yaml(path: str | Path) -> tuple[dict, dict[str, int]]:
    """The mapping in a YAML file and the line number of every dotted key in it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
    try:
        node = _compose(text)
        data = _construct(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a mapping of sections")
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines, path)
    return data, lines


def _collect_lines(node: yaml.Node, prefix: str, lines: dict[str, int], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if key in seen:  # YAML would keep the last one silently: a lost section
                raise UserError(f"{path}:{line}: duplicate key {key} (first at line {seen[key]})")
            seen[key] = lines[key] = line
            _collect_lines(value_node, key + ".", lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, f"{prefix}{index}.", lines, path)


def parse_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    """(dotted key, raw value) of every `--a.b=value` / `--a.b value` override, in order."""
    parsed, pending = [], list(overrides)
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
        parsed.append((key, raw))
    return parsed


def override_texts(overrides: list[str]) -> dict[str, str]:
    """Dotted key -> the override as the user typed it, for errors that blame it."""
    return {key: f"--{key}={raw}" for key, raw in parse_overrides(overrides)}


def _override_value(key: str, raw: str) -> Any:
    if raw == "":
        return ""
    try:
        node = _compose(raw)
        return _construct(node) if node is not None else None
    except yaml.composer.ComposerError as exc:  # an alias: refused, as in files
        raise UserError(f"--{key}={raw}: {exc.problem}") from None
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--a.b=value` / `--a.b value` overrides; values are parsed as YAML scalars."""
    data = _deep_copy(data)
    for key, raw in parse_overrides(overrides):
        value = _override_value(key, raw)
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
                continue
            if not isinstance(target, dict):
                raise UserError(f"--{key}={raw}: {part!r} is not a section")
            target = target.setdefault(part, {})
        if isinstance(target, list) and parts[-1].isdigit() and int(parts[-1]) < len(target):
            target[int(parts[-1])] = value
        elif isinstance(target, dict):
            target[parts[-1]] = value
        else:
            raise UserError(f"--{key}={raw}: {'.'.join(parts[:-1])} has no item {parts[-1]}")
    return data


# ---- allowed values, declared on the dataclass fields ----------------------------------------------

@dataclass(frozen=True)
class Bounds:
    """The range of a numeric field (or of every value in a list or mapping field)."""

    above: float | None = None
    at_least: float | None = None
    below: float | None = None
    at_most: float | None = None

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None  # the type check has its own message
        inside = ((self.above is None or value > self.above)
                  and (self.at_least is None or value >= self.at_least)
                  and (self.below is None or value < self.below)
                  and (self.at_most is None or value <= self.at_most))
        if inside and math.isfinite(value):
            return None
        kind = "an integer" if isinstance(value, int) else "a finite number"
        return f"must be {kind}{self.describe()}, got {value}"

    def describe(self) -> str:
        low = (f"({_number(self.above)}" if self.above is not None
               else f"[{_number(self.at_least)}" if self.at_least is not None else None)
        high = (f"{_number(self.below)})" if self.below is not None
                else f"{_number(self.at_most)}]" if self.at_most is not None else None)
        if low and high:
            return f" in {low}, {high}"
        if low:
            return f" {'>' if low[0] == '(' else '>='} {low[1:]}"
        if high:
            return f" {'<' if high[-1] == ')' else '<='} {high[:-1]}"
        return ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def bounded(default: Any = dataclasses.MISSING, *, above: float | None = None,
            at_least: float | None = None, below: float | None = None,
            at_most: float | None = None) -> Any:
    """A dataclass field whose value (or values) must lie in the given range, e.g.
    `lr: float = bounded(0.01, above=0)`; `load_sections` blames the key or override."""
    bounds = Bounds(above=above, at_least=at_least, below=below, at_most=at_most)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: _deep_copy(default), metadata={"bounds": bounds})
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def one_of(default: str, *choices: str) -> Any:
    """A string field limited to `choices` (the default first)."""
    return dataclasses.field(default=default, metadata={"choices": (default, *choices)})


def field_problem(f: dataclasses.Field, value: Any, dotted: str) -> tuple[str, str] | None:
    """(dotted key, why) for the first value in field `f` (a scalar, or an item of a list or
    mapping) that is not allowed there; None when all are."""
    if isinstance(value, (list, tuple)):
        items = [(f"{dotted}.{i}", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f"{dotted}.{k}", v) for k, v in value.items()]
    else:
        problem = _scalar_problem(f, value)
        return (dotted, problem) if problem else None
    return next(filter(None, (field_problem(f, v, key) for key, v in items)), None)


def _scalar_problem(f: dataclasses.Field, value: Any) -> str | None:
    if value is None:
        return None  # Optional fields: None means "not set"
    if isinstance(value, float) and not math.isfinite(value) and "bounds" not in f.metadata:
        # No setting of a run means anything at NaN or infinity; they only poison arithmetic later.
        return f"must be a finite number, got {value}"
    bounds = f.metadata.get("bounds")
    if bounds is not None:
        return bounds.problem(value)
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        return f"must be {', '.join(map(str, choices[:-1]))} or {choices[-1]}, got {value!r}"
    return None


# ---- origins: where each key came from, for errors --------------------------------------------------

@dataclass
class _Origins:
    source: str
    lines: dict[str, int]
    overrides: dict[str, str]

    def override_for(self, dotted: str) -> str | None:
        """The command-line override that set `dotted` or a section holding it, or that created
        section `dotted` (one the file does not have)."""
        matches = [key for key in self.overrides if dotted == key or dotted.startswith(key + ".")]
        if matches:
            return self.overrides[max(matches, key=len)]
        created = [key for key in self.overrides if dotted and key.startswith(dotted + ".")]
        return self.overrides[created[0]] if created and dotted not in self.lines else None

    def key_error(self, dotted: str, message: str) -> UserError:
        """An error whose message already names the key: prefixed by where the key was set."""
        override = self.override_for(dotted)
        if override:
            return UserError(f"{override}: {message}")
        line = self.lines.get(dotted)
        if self.source and line:
            return UserError(f"{self.source}:{line}: {message}")
        return UserError(message)

    def value_error(self, dotted: str, problem: str) -> UserError:
        """An error about a value (`problem` reads "must be ..."): an override names its key itself."""
        override = self.override_for(dotted)
        if override:
            return UserError(f"{override}: {problem}")
        return self.key_error(dotted, f"{dotted or 'config'}: {problem}")


def load_sections(cls: type, data: Any, where: str = "", lines: dict[str, int] | None = None,
                  source: str = "", overrides: dict[str, str] | None = None) -> Any:
    """Build dataclass `cls` from nested dicts, validating types, ranges and keys.

    `lines` maps dotted keys to their line in `source`; `overrides` maps dotted keys to the
    command-line override that set them (see `override_texts`); errors blame whichever applies.
    """
    return _load(cls, data, where, _Origins(source, lines or {}, overrides or {}))


def _load(cls: type, data: Any, where: str, origins: _Origins) -> Any:
    if not isinstance(data, dict):
        raise origins.value_error(where, f"must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise origins.key_error(dotted, f"unknown key {dotted}{hint}")
        values[key] = _convert(hints[key], value, dotted, origins)
        problem = field_problem(fields[key], values[key], dotted)
        if problem:
            raise origins.value_error(*problem)
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        dotted = f"{where}.{missing[0]}" if where else missing[0]
        raise origins.key_error(where, f"missing key {dotted}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise origins.value_error(where, str(exc)) from None


def to_plain(obj: Any) -> Any:
    """Dataclasses to plain dicts/lists (for JSON and YAML)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _convert(hint: Any, value: Any, dotted: str, origins: _Origins) -> Any:
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
                return _convert(arg, value, dotted, origins)
            except UserError as exc:
                errors.append(exc)
        raise errors[-1]
    if dataclasses.is_dataclass(hint):
        return _load(hint, value, dotted, origins)
    if origin is list:
        if not isinstance(value, list):
            raise origins.value_error(dotted, f"must be a list, got {value!r}")
        return [_convert(args[0], v, f"{dotted}.{i}", origins) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise origins.value_error(dotted, f"must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{dotted}.{k}", origins) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float:
        return _to_float(value, dotted, origins)
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise origins.value_error(dotted, f"must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise origins.value_error(dotted, f"must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise origins.value_error(dotted, f"must be a string, got {value!r}")
        return str(value)
    return value


def _to_float(value: Any, dotted: str, origins: _Origins) -> float:
    if isinstance(value, str):  # YAML 1.1 reads "1e30" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise origins.value_error(dotted, f"must be a number, got {value!r}")
    return float(value)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
