"""Strict conversion of parsed YAML into typed dataclasses, with errors that point at the file and line.

The experiment file is the user's only interface to a study, so a typo must never be silently ignored.
`load_yaml` parses a file and remembers the line of every key; `build` walks a dataclass's type hints
and converts the parsed data into it, rejecting unknown keys, wrong types and missing values with a
one-line `ConfigError` such as::

    experiments/quickstart.yaml:14: children[1].polcy: unknown key (did you mean 'policy'?)

A dataclass checks relations between its own fields in `__post_init__` by raising `Invalid(key, why)`;
`build` adds the file, line and full key path to the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from xattn_ray.errors import ConfigError

KeyPath = tuple[str | int, ...]


class Invalid(ValueError):
    """Raised by a config dataclass's `__post_init__`: field `key` (or the whole section) is wrong."""

    def __init__(self, key: str | None, why: str):
        super().__init__(why)
        self.key = key
        self.why = why


@dataclasses.dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML file: plain Python data plus the line of every mapping key and list item."""

    path: Path
    data: Any
    lines: dict[KeyPath, int]

    def where(self, key_path: KeyPath) -> str:
        """`file:line: a.b[2].c` for messages; the line of the nearest enclosing key that has one."""
        for end in range(len(key_path), -1, -1):
            if key_path[:end] in self.lines:
                return f"{self.path}:{self.lines[key_path[:end]]}: {format_key_path(key_path)}"
        return f"{self.path}: {format_key_path(key_path)}"


def format_key_path(key_path: KeyPath) -> str:
    """('children', 1, 'policy') -> 'children[1].policy'; () -> '<top level>'."""
    text = ""
    for part in key_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "<top level>"


def load_yaml(path: Path) -> YamlDocument:
    """Parse `path`, keeping line numbers; a syntax error or duplicate key is a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: experiment file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        data = _node_to_python(loader, root, (), lines, path) if root is not None else {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {err.problem or err.context}") from None
    finally:
        loader.dispose()
    return YamlDocument(path=path, data=data, lines=lines)


def _node_to_python(loader: yaml.SafeLoader, node: yaml.Node, key_path: KeyPath,
                    lines: dict[KeyPath, int], path: Path) -> Any:
    """Build Python values from a YAML node tree, recording `key_path -> line` on the way."""
    lines.setdefault(key_path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merges
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            child_path = key_path + (key,)
            if key in mapping:
                raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: "
                                  f"{format_key_path(child_path)}: duplicate key")
            lines[child_path] = key_node.start_mark.line + 1
            mapping[key] = _node_to_python(loader, value_node, child_path, lines, path)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(loader, item, key_path + (i,), lines, path)
                for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(text: str, where: str) -> str:
    """Replace `${NAME}` and `${NAME:-default}` with environment values (data paths as parameters)."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set "
                          f"(set it, or write ${{{name}:-default}})")

    return _ENV_REFERENCE.sub(substitute, text)


def build(cls: type, document: YamlDocument, value: Any = None, key_path: KeyPath = ()) -> Any:
    """Convert `value` (default: the whole document) into an instance of dataclass `cls`, strictly."""
    return _convert(cls, document.data if value is None and not key_path else value, key_path, document)


def _convert(hint: Any, value: Any, key_path: KeyPath, doc: YamlDocument) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(typing.get_args(hint), value, key_path, doc)
    if dataclasses.is_dataclass(hint):
        return _convert_dataclass(hint, value, key_path, doc)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{doc.where(key_path)}: must be one of {', '.join(map(str, choices))}, "
                              f"got {value!r}")
        return value
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        items = _expect(list, value, key_path, doc, "a list")
        return [_convert(item_hint, item, key_path + (i,), doc) for i, item in enumerate(items)]
    if origin is tuple:
        return _convert_tuple(typing.get_args(hint), value, key_path, doc)
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        mapping = _expect(dict, value, key_path, doc, "a mapping")
        return {_convert(key_hint, k, key_path + (k,), doc): _convert(value_hint, v, key_path + (k,), doc)
                for k, v in mapping.items()}
    if hint is bool:
        return _expect(bool, value, key_path, doc, "true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{doc.where(key_path)}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{doc.where(key_path)}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        return _expect(str, value, key_path, doc, "a string")
    raise TypeError(f"schema type {hint!r} is not supported")  # a bug in a config dataclass


def _expect(kind: type, value: Any, key_path: KeyPath, doc: YamlDocument, what: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{doc.where(key_path)}: expected {what}, got {value!r}")
    return value


def _convert_union(members: tuple[Any, ...], value: Any, key_path: KeyPath, doc: YamlDocument) -> Any:
    if value is None:
        if type(None) in members:
            return None
        raise ConfigError(f"{doc.where(key_path)}: a value is required")
    errors = []
    for member in members:
        if member is type(None):
            continue
        try:
            return _convert(member, value, key_path, doc)
        except ConfigError as err:
            errors.append(err)
    # Report the error of the member whose shape matches (a mapping for a dataclass, ...), else the first.
    for member, err in zip([m for m in members if m is not type(None)], errors):
        if dataclasses.is_dataclass(member) and isinstance(value, dict):
            raise err
    raise errors[0]


def _convert_tuple(args: tuple[Any, ...], value: Any, key_path: KeyPath, doc: YamlDocument) -> tuple:
    items = _expect(list, value, key_path, doc, "a list")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], item, key_path + (i,), doc) for i, item in enumerate(items))
    if len(items) != len(args):
        raise ConfigError(f"{doc.where(key_path)}: expected a list of {len(args)} values, got {value!r}")
    return tuple(_convert(hint, item, key_path + (i,), doc) for i, (hint, item) in enumerate(zip(args, items)))


def _convert_dataclass(cls: type, value: Any, key_path: KeyPath, doc: YamlDocument) -> Any:
    mapping = _expect(dict, {} if value is None else value, key_path, doc, "a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in mapping:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
            raise ConfigError(f"{doc.where(key_path + (key,))}: unknown key{hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in mapping:
            kwargs[name] = _convert(hints[name], mapping[name], key_path + (name,), doc)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{doc.where(key_path + (name,))}: missing required key")
    try:
        return cls(**kwargs)
    except Invalid as err:
        at = key_path + ((err.key,) if err.key else ())
        raise ConfigError(f"{doc.where(at)}: {err.why}") from None
