"""The experiment file's JSON Schema (draft 2020-12), generated from the dataclasses `schema.build` fills.

An editor that speaks JSON Schema (VS Code's YAML extension, or any other client of yaml-language-server)
completes keys, shows each key's comment and marks a typo as it is typed, once the YAML file's first line
names the schema:

    # yaml-language-server: $schema=./experiment.schema.json

`json_schema(cls)` walks the type hints of a dataclass by the rules `build` converts them with, so the
schema and the loader agree on which keys exist, which are required and what each value's type is:

    bool -> boolean     int -> integer     float -> number     str -> string     Any -> anything
    Literal[a, b] -> enum [a, b]           list[X] -> array of X
    tuple[X, Y] -> array of exactly [X, Y]; tuple[X, ...] -> array of X
    dict[K, V] -> object whose keys are K and values V
    X | Y -> anyOf [X, Y]; X | None -> anyOf [X, null]
    a dataclass -> object: its fields (those given to __init__) as properties and no other key
                   (additionalProperties false), the fields without a default required; where a
                   dataclass stands alone (not in a union), null too when it requires nothing, as
                   `build` reads null there as an empty mapping

A hint `build` does not convert (Path, a bare list) is a TypeError here as there. Some checks stay the
loader's alone, so `xattn-ray validate` remains the full check: value ranges and relations between keys
(each dataclass's `__post_init__`), references between sections (a child's parent, a run's corpus),
`${NAME}` expansion (the value is a string either way), numbers' bounds (64 bits; finite), and that an
integer is written without a decimal point (JSON Schema counts 2.0 as an integer).

Descriptions come from the source: a dataclass's docstring describes its object, and a field's comments
describe it (full-line comments right above the field, then the comment ending its line; comments below
the last field continue that field's). Defaults that are plain data are given as `default`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import math
import textwrap
import tokenize
import types
import typing
from typing import Any, Literal, Union

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(cls: type, title: str) -> dict:
    """The JSON Schema of the YAML data `build(cls, ...)` accepts, as a dict ready for `json.dumps`.

    The root is `cls`'s own object schema; every other dataclass is one entry of `$defs`, referred to
    by name.
    """
    generator = _Generator(cls)
    root = generator.object_schema(cls)
    return {"$schema": DRAFT, "title": title, **root, "$defs": generator.definitions}


def json_schema_text(cls: type, title: str) -> str:
    """`json_schema(cls, title)` as the text of a file: indented JSON ending in a newline, in ASCII (other
    characters escaped), so printing it works under any locale."""
    return json.dumps(json_schema(cls, title), indent=2) + "\n"


class _Generator:
    """Turns type hints into schemas, collecting each nested dataclass's schema once in `definitions`."""

    def __init__(self, root: type):
        self.root = root
        self.definitions: dict[str, dict] = {}
        self.names: dict[type, str] = {}

    def schema(self, hint: Any, alone: bool = True) -> dict:
        """The schema of one value of type `hint`; `alone` is False for a member of a union."""
        origin = typing.get_origin(hint)
        if hint is Any:
            return {}
        if origin in (Union, types.UnionType):
            members = typing.get_args(hint)
            return {"anyOf": [{"type": "null"} if member is type(None) else self.schema(member, alone=False)
                              for member in members]}
        if dataclasses.is_dataclass(hint):
            reference = self.reference(hint)
            if alone and not _required(hint):
                return {"anyOf": [reference, {"type": "null"}]}
            return reference
        if origin is Literal:
            return {"enum": list(typing.get_args(hint))}
        if origin is list:
            (item_hint,) = typing.get_args(hint)
            return {"type": "array", "items": self.schema(item_hint)}
        if origin is tuple:
            args = typing.get_args(hint)
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self.schema(args[0])}
            # The length as minItems and maxItems, not `items: false`, which editors still on draft 7
            # read as "no items at all".
            return {"type": "array", "prefixItems": [self.schema(arg) for arg in args],
                    "minItems": len(args), "maxItems": len(args)}
        if origin is dict:
            key_hint, value_hint = typing.get_args(hint)
            return {"type": "object", "propertyNames": self.schema(key_hint),
                    "additionalProperties": self.schema(value_hint)}
        if hint is bool:
            return {"type": "boolean"}
        if hint is int:
            return {"type": "integer"}
        if hint is float:
            return {"type": "number"}
        if hint is str:
            return {"type": "string"}
        raise TypeError(f"schema type {hint!r} is not supported")  # nor by `build`: a bug in a config dataclass

    def reference(self, cls: type) -> dict:
        """`{"$ref": ...}` to `cls`'s entry of `$defs`, made on first use (`#`, the root, for the root)."""
        if cls is self.root:
            return {"$ref": "#"}
        if cls not in self.names:
            name = cls.__name__
            if name in self.definitions:  # two dataclasses of one name in different modules
                name = f"{cls.__module__}.{cls.__qualname__}"
            self.names[cls] = name
            self.definitions[name] = {}  # claimed first: a dataclass may refer to itself
            self.definitions[name] = self.object_schema(cls)
        return {"$ref": f"#/$defs/{self.names[cls]}"}

    def object_schema(self, cls: type) -> dict:
        """The dataclass `cls` as an object: its init fields, their types, defaults and comments."""
        hints = typing.get_type_hints(cls)
        comments = _field_comments(cls)
        properties = {}
        for field in _init_fields(cls):
            description = comments.get(field.name) or _section_summary(hints[field.name])
            described = {"description": description} if description else {}
            default = _plain_default(field)
            properties[field.name] = {**described, **self.schema(hints[field.name]),
                                      **({} if default is _NO_DEFAULT else {"default": default})}
        docstring = _class_docstring(cls)
        return {**({"description": docstring} if docstring else {}), "type": "object", "properties": properties,
                "required": _required(cls), "additionalProperties": False}


def _init_fields(cls: type) -> list[dataclasses.Field]:
    """The fields `build` reads from a mapping: those `__init__` takes."""
    return [field for field in dataclasses.fields(cls) if field.init]


def _required(cls: type) -> list[str]:
    return [field.name for field in _init_fields(cls)
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]


_NO_DEFAULT = object()


def _plain_default(field: dataclasses.Field) -> Any:
    """The field's default as JSON data, or _NO_DEFAULT: none, or not plain data (a dataclass, whose
    own properties carry their defaults)."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING and not dataclasses.is_dataclass(field.default_factory):
        value = field.default_factory()
    else:
        return _NO_DEFAULT

    def plain(item: Any) -> bool:
        if isinstance(item, (list, tuple)):
            return all(plain(x) for x in item)
        if isinstance(item, dict):
            return all(isinstance(k, str) and plain(v) for k, v in item.items())
        return item is None or isinstance(item, (bool, int, str)) or isinstance(item, float) and math.isfinite(item)

    if not plain(value):
        return _NO_DEFAULT
    return json.loads(json.dumps(value))  # tuples become lists


# -- descriptions from the source ----------------------------------------------------------------


def _class_definition(cls: type) -> tuple[ast.ClassDef, str] | None:
    """`cls`'s class statement and its source text, or None where the source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):  # defined interactively, or in a file that is gone
        return None
    definition = tree.body[0] if tree.body else None
    return (definition, source) if isinstance(definition, ast.ClassDef) else None


def _class_docstring(cls: type) -> str | None:
    # From the source, not `cls.__doc__`: @dataclass writes a signature there when a class has no docstring.
    found = _class_definition(cls)
    return ast.get_docstring(found[0]) if found else None


def _section_summary(hint: Any) -> str | None:
    """For a field without a comment whose values are one dataclass (X, X | None, list[X], dict[str, X]):
    the first paragraph of X's docstring, which an editor shows beside the key."""
    while True:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
            hint = next(arg for arg in args if arg is not type(None))
        elif origin in (list, dict):
            hint = args[-1]
        else:
            break
    docstring = _class_docstring(hint) if dataclasses.is_dataclass(hint) else None
    return " ".join(docstring.split("\n\n")[0].split()) if docstring else None


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comments, by field name, from `cls` and the dataclasses it inherits from."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment replaces its base's
        if dataclasses.is_dataclass(klass) and (found := _class_definition(klass)):
            comments.update(_comments_in(*found))
    return comments


def _comments_in(definition: ast.ClassDef, source: str) -> dict[str, str]:
    """Comments of the annotated fields of one class statement (line numbers are `source`'s)."""
    full_line: dict[int, str] = {}  # line -> the text of a comment alone on its line
    trailing: dict[int, str] = {}  # line -> the text of a comment after code
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.removeprefix("#").strip()
            alone = not token.line[: token.start[1]].strip()
            (full_line if alone else trailing)[token.start[0]] = text
    fields = [node for node in definition.body
              if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]
    comments = {}
    for i, node in enumerate(fields):
        above = []
        line = node.lineno - 1
        while line in full_line:
            above.insert(0, full_line[line])
            line -= 1
        parts = above + ([trailing[node.end_lineno]] if node.end_lineno in trailing else [])
        if i == len(fields) - 1:  # comment lines right after the last field can only continue it
            line = node.end_lineno + 1
            while line in full_line:
                parts.append(full_line[line])
                line += 1
        if parts:
            comments[node.target.id] = " ".join(part for part in parts if part)
    return comments
