"""The JSON Schema generator on small dataclasses of every type `build` converts: the schema accepts
exactly the values `build` accepts, and carries the dataclasses' docstrings and field comments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest

from xattn_ray.errors import ConfigError
from xattn_ray.json_schema import json_schema
from xattn_ray.schema import YamlDocument, build


@dataclass(frozen=True)
class Inner:
    """A section whose fields all have defaults.

    Its second paragraph is not part of a field's summary."""

    size: int = 1  # how many
    # Two comment lines
    # above the field.
    ratio: float | None = None


@dataclass(frozen=True)
class Needy:
    key: str


@dataclass(frozen=True)
class Outer:
    """The root of the small schema."""

    name: str  # required: no default
    mode: Literal["fast", "exact"] = "fast"
    flag: bool = False
    span: tuple[int, int] | None = None  # [start, end)
    many: tuple[str, ...] = ()
    files: str | dict[str, str] | None = None  # one template, or one path per language
    tables: dict[str, list[float]] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    maybe: Needy | None = None
    needs: list[Needy] = field(default_factory=list)
    anything: Any = None
    hidden: int = field(default=0, init=False)  # not read from the file
    last: int = 0  # the last field's comment
    # goes on below it


@dataclass(frozen=True)
class Node:
    """A tree: a dataclass that refers to itself."""

    label: str
    kids: list[Node] = field(default_factory=list)


def schema_accepts(cls: type, value: Any) -> bool:
    return jsonschema.Draft202012Validator(json_schema(cls, "test")).is_valid(value)


def build_accepts(cls: type, value: Any) -> bool:
    try:
        build(cls, YamlDocument(Path("test.yaml"), value, {}))
    except ConfigError:
        return False
    return True


ACCEPTED = [
    {"name": "x"},
    {"name": "x", "mode": "exact", "flag": True, "span": [0, 10], "many": ["a", "b"], "last": 3},
    {"name": "x", "files": "data/train.{lang}"},
    {"name": "x", "files": {"fr": "train.fr", "en": "train.en"}},
    {"name": "x", "tables": {"lr": [1, 2.5]}},
    {"name": "x", "inner": {"ratio": 3}},  # an integer where a float is asked
    {"name": "x", "inner": None},  # null reads as an empty mapping: every field has a default
    {"name": "x", "inner": {"ratio": None}},
    {"name": "x", "maybe": None},
    {"name": "x", "maybe": {"key": "k"}},
    {"name": "x", "needs": [{"key": "k"}]},
    {"name": "x", "anything": {"whatever": [1, None]}},
]

REJECTED = [
    {},  # `name` is required
    ["name", "x"],  # not a mapping
    {"name": "x", "nmae": "y"},  # unknown key
    {"name": "x", "hidden": 1},  # not an __init__ field: unknown too
    {"name": 1},
    {"name": None},
    {"name": "x", "mode": "slow"},
    {"name": "x", "flag": 1},
    {"name": "x", "last": True},  # a boolean is not an integer
    {"name": "x", "last": 2.5},
    {"name": "x", "last": "3"},  # no number is read from a string
    {"name": "x", "inner": {"size": True}},
    {"name": "x", "inner": {"ratio": "1e-3"}},
    {"name": "x", "inner": []},
    {"name": "x", "span": [1]},
    {"name": "x", "span": [1, 2, 3]},
    {"name": "x", "span": [1, "2"]},
    {"name": "x", "many": ["a", 1]},
    {"name": "x", "files": {"fr": 1}},
    {"name": "x", "files": ["train.fr"]},
    {"name": "x", "tables": {"lr": 0.1}},
    {"name": "x", "tables": {1: [0.1]}},  # a YAML key that is no string
    {"name": "x", "maybe": {}},  # Needy requires `key`
    {"name": "x", "needs": [None]},  # null reads as {}, which lacks `key`
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_the_schema_accepts_what_build_accepts(value):
    assert build_accepts(Outer, value)
    assert schema_accepts(Outer, value)


@pytest.mark.parametrize("value", REJECTED)
def test_the_schema_rejects_what_build_rejects(value):
    assert not build_accepts(Outer, value)
    assert not schema_accepts(Outer, value)


def test_the_schema_is_valid_draft_2020_12_with_one_definition_per_nested_dataclass():
    schema = json_schema(Outer, "test")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["title"] == "test"
    assert list(schema["$defs"]) == ["Inner", "Needy"]
    assert schema["required"] == ["name"] and schema["additionalProperties"] is False
    assert list(schema["properties"]) == ["name", "mode", "flag", "span", "many", "files", "tables", "inner",
                                          "maybe", "needs", "anything", "last"]
    assert schema["properties"]["mode"] == {"enum": ["fast", "exact"], "default": "fast"}
    assert schema["properties"]["span"]["default"] is None
    assert schema["properties"]["many"]["default"] == []
    assert "default" not in schema["properties"]["inner"]  # a dataclass: its own properties carry defaults


def test_descriptions_are_the_docstrings_and_the_field_comments():
    schema = json_schema(Outer, "test")
    properties, inner = schema["properties"], schema["$defs"]["Inner"]
    assert schema["description"] == "The root of the small schema."
    assert properties["name"]["description"] == "required: no default"
    assert properties["files"]["description"] == "one template, or one path per language"
    assert properties["last"]["description"] == "the last field's comment goes on below it"
    assert "description" not in properties["mode"]
    assert inner["description"].startswith("A section whose fields all have defaults.\n\nIts second")
    assert inner["properties"]["size"]["description"] == "how many"
    assert inner["properties"]["ratio"]["description"] == "Two comment lines above the field."
    # A section without a comment is described by its class's first paragraph; a class without a
    # docstring has none (not the signature @dataclass puts in __doc__).
    assert properties["inner"]["description"] == "A section whose fields all have defaults."
    assert "description" not in schema["$defs"]["Needy"] and "description" not in properties["needs"]


def test_a_dataclass_that_refers_to_itself():
    schema = json_schema(Node, "tree")
    assert schema["properties"]["kids"]["items"] == {"$ref": "#"}
    tree = {"label": "a", "kids": [{"label": "b", "kids": [{"label": "c"}]}]}
    assert schema_accepts(Node, tree) and build_accepts(Node, tree)
    typo = {"label": "a", "kids": [{"label": "b", "kids": [{"lable": "c"}]}]}
    assert not schema_accepts(Node, typo) and not build_accepts(Node, typo)


SameName = dataclasses.make_dataclass("Inner", [("other", str)])


@dataclass(frozen=True)
class TwoInners:
    first: Inner
    second: SameName


def test_two_dataclasses_of_one_name_get_two_definitions():
    schema = json_schema(TwoInners, "test")
    assert list(schema["$defs"]) == ["Inner", f"{SameName.__module__}.Inner"]
    assert schema_accepts(TwoInners, {"first": {"size": 2}, "second": {"other": "x"}})
    assert not schema_accepts(TwoInners, {"first": {"other": "x"}, "second": {"other": "x"}})


@dataclass(frozen=True)
class WithPath:
    where: Path


def test_a_type_build_cannot_read_is_an_error_here_too():
    with pytest.raises(TypeError, match="is not supported"):
        json_schema(WithPath, "test")
    with pytest.raises(TypeError, match="is not supported"):
        build_accepts(WithPath, {"where": "a"})
