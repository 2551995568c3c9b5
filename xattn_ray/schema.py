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
import math
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
    """Raised by a config dataclass's `__post_init__`: field `key` (or the whole section) is wrong.

    `key` may be a path inside the section, e.g. ("test", "flickr2016") or ("languages", 2).
    """

    def __init__(self, key: str | KeyPath | None, why: str):
        super().__init__(why)
        self.key = key
        self.why = why


# A name that becomes a folder or file name (an experiment, a run, a policy, a test set): one path segment
# that cannot climb out of its folder ("..", "a/b"), hide (".x") or be empty. It is also the store's rule
# for run ids, which are built from these names. The length leaves room for the rest of a run id.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 40


def check_file_name(text: str, key: str | KeyPath | None) -> None:
    """Raise Invalid(key, ...) unless `text` can name a folder or file of a study."""
    if not (_FILE_NAME.fullmatch(text) and len(text) <= MAX_NAME_LENGTH):
        raise Invalid(key, f"{_shown(text)} cannot name a folder or file: use 1 to {MAX_NAME_LENGTH} letters, "
                           f"digits, '.', '_' and '-', starting with a letter or digit")


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
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
            continue
        # A key with a newline or other unprintable character is quoted, so the message stays one line.
        shown = part if isinstance(part, str) and part.isprintable() and part else _shown(part)
        text += f".{shown}" if text else shown
    return text or "<top level>"


# Experiment files are a few kilobytes; a file this large is a mistake (a corpus given as the experiment?).
MAX_FILE_BYTES = 1_000_000
# Values after alias expansion. The shipped experiments have a few hundred; the cap refuses a 'billion
# laughs' file (a few hundred bytes whose nested aliases expand to billions of values) before it fills memory.
MAX_VALUES = 100_000
MAX_INTEGER = 2**63 - 1
MAX_DEPTH = 50  # nesting of lists and mappings; a config section is a handful of levels deep


def load_yaml(path: Path) -> YamlDocument:
    """Parse `path`, keeping line numbers; every problem (unreadable file, size, syntax, duplicate key,
    a key that is a list, self-referring or exploding aliases) is a one-line ConfigError."""
    text = _read_text(path)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        converter = _Converter(loader, path)
        data = converter.value(root, ()) if root is not None else {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {err.problem or err.context}") from None
    except RecursionError:  # PyYAML's own composer and merge resolution recurse
        raise ConfigError(f"{path}: invalid YAML: nested too deeply or an alias refers to itself") from None
    finally:
        loader.dispose()
    return YamlDocument(path=path, data=data, lines=converter.lines)


def _read_text(path: Path) -> str:
    """The file's text: a regular UTF-8 file of at most MAX_FILE_BYTES."""
    try:
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "not found" if not path.exists() else "not a regular file"
            raise ConfigError(f"{path}: experiment file {what}")
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the experiment file ({err.strerror or err})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: over {MAX_FILE_BYTES:,} bytes; an experiment file is a few kilobytes "
                          f"(is this a data file?)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start})") from None


class _Converter:
    """Builds Python values from a YAML node tree, recording `key_path -> line` on the way.

    Aliases make the node tree a graph: it may refer to itself (`a: &x [*x]`) or expand exponentially
    (billion laughs), so the walk tracks the nodes it is inside of and counts every value it builds.
    """

    def __init__(self, loader: yaml.SafeLoader, path: Path):
        self.loader = loader
        self.path = path
        self.lines: dict[KeyPath, int] = {}
        self.count = 0
        self.inside: set[int] = set()  # ids of the collection nodes on the current path

    def value(self, node: yaml.Node, key_path: KeyPath) -> Any:
        self.lines.setdefault(key_path, node.start_mark.line + 1)
        self.count += 1
        if self.count > MAX_VALUES:
            raise ConfigError(f"{self.path}: more than {MAX_VALUES:,} values once aliases are expanded "
                              f"(an alias bomb?); write the values out instead")
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, key_path)
        if id(node) in self.inside:
            self.fail(node, key_path, "an alias refers to a list or mapping it is part of")
        if len(self.inside) >= MAX_DEPTH:
            self.fail(node, key_path, f"nested more than {MAX_DEPTH} levels deep")
        self.inside.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, key_path)
            return [self.value(item, key_path + (i,)) for i, item in enumerate(node.value)]
        finally:
            self.inside.discard(id(node))

    def mapping(self, node: yaml.MappingNode, key_path: KeyPath) -> dict:
        self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merges
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, key_path, "a key must be a single value, not a list or mapping")
            key = self.scalar(key_node, key_path)
            child_path = key_path + (key,)
            if key in mapping:
                self.fail(key_node, child_path, "duplicate key")
            self.lines[child_path] = key_node.start_mark.line + 1
            mapping[key] = self.value(value_node, child_path)
        return mapping

    def scalar(self, node: yaml.ScalarNode, key_path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, OverflowError) as err:  # an int of thousands of digits, a date like 2021-13-45
            self.fail(node, key_path, f"cannot read {_shown(node.value)} ({_shown(str(err))})")

    def fail(self, node: yaml.Node, key_path: KeyPath, why: str) -> typing.NoReturn:
        raise ConfigError(f"{self.path}:{node.start_mark.line + 1}: {format_key_path(key_path)}: {why}")


def _shown(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
                              f"got {_shown(value)}")
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
            raise ConfigError(f"{doc.where(key_path)}: expected an integer, got {_shown(value)}")
        if abs(value) > MAX_INTEGER:  # torch, numpy and Ray take 64-bit integers
            raise ConfigError(f"{doc.where(key_path)}: {_shown(value)} is out of range (at most {MAX_INTEGER})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{doc.where(key_path)}: expected a number, got {_shown(value)}")
        # No option means anything by nan or infinity (`null` or 0 says "no limit" where one is optional);
        # nan would slip through every range check (`nan < 0` is false). The bound keeps float() from overflowing.
        if not (isinstance(value, int) and abs(value) <= MAX_INTEGER or isinstance(value, float) and math.isfinite(value)):
            raise ConfigError(f"{doc.where(key_path)}: expected a finite number, got {_shown(value)}")
        return float(value)
    if hint is str:
        return _expect(str, value, key_path, doc, "a string")
    raise TypeError(f"schema type {hint!r} is not supported")  # a bug in a config dataclass


def _expect(kind: type, value: Any, key_path: KeyPath, doc: YamlDocument, what: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{doc.where(key_path)}: expected {what}, got {_shown(value)}")
    return value


def _convert_union(members: tuple[Any, ...], value: Any, key_path: KeyPath, doc: YamlDocument) -> Any:
    if value is None:
        if type(None) in members:
            return None
        raise ConfigError(f"{doc.where(key_path)}: a value is required")
    members = tuple(member for member in members if member is not type(None))
    if isinstance(value, dict):
        # A mapping holding every required key of a dataclass member means that dataclass, so its errors
        # are the ones to report: `{sacrebleu: wmt14, orglang: de}` is a misspelt sacreBLEU test set, not
        # files of the languages `sacrebleu` and `orglang`.
        for member in members:
            required = _required_keys(member) if dataclasses.is_dataclass(member) else set()
            if required and required <= value.keys():
                return _convert(member, value, key_path, doc)
    errors = []
    for member in members:
        try:
            return _convert(member, value, key_path, doc)
        except ConfigError as err:
            errors.append(err)
    # Report the error of the member whose shape matches (a mapping: a dataclass or a dict), else the first.
    for member, err in zip(members, errors):
        if isinstance(value, dict) and (dataclasses.is_dataclass(member) or typing.get_origin(member) is dict):
            raise err
    raise errors[0]


def _required_keys(cls: type) -> set[str]:
    """The keys a mapping must have to become a `cls`: its fields without a default."""
    return {f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING}


def _convert_tuple(args: tuple[Any, ...], value: Any, key_path: KeyPath, doc: YamlDocument) -> tuple:
    items = _expect(list, value, key_path, doc, "a list")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], item, key_path + (i,), doc) for i, item in enumerate(items))
    if len(items) != len(args):
        raise ConfigError(f"{doc.where(key_path)}: expected a list of {len(args)} values, got {_shown(value)}")
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
        at = key_path + (err.key if isinstance(err.key, tuple) else (err.key,) if err.key else ())
        raise ConfigError(f"{doc.where(at)}: {err.why}") from None
