"""The shipped JSON Schemas: valid Draft 2020-12, self-describing for editors, strict on typos."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest

from runner.spec.schema import load_schema


def properties(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{path}/{name}", sub
        for key, value in node.items():
            yield from properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from properties(value, f"{path}/{i}")


@pytest.mark.parametrize("kind", ["Workflow", "Agent"])
def test_schema_is_valid_draft_2020_12_with_an_id(kind: str) -> None:
    schema = load_schema(kind)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("https://")
    assert jsonschema_rs.meta.is_valid(schema)


@pytest.mark.parametrize("kind", ["Workflow", "Agent"])
def test_every_property_has_a_description(kind: str) -> None:
    schema = load_schema(kind)
    missing = []
    for path, sub in properties(schema):
        target = sub
        if "$ref" in sub and "description" not in sub:
            target = schema["$defs"][sub["$ref"].rsplit("/", 1)[-1]]
        if "description" not in target:
            missing.append(path)
    assert missing == []


@pytest.mark.parametrize("kind", ["Workflow", "Agent"])
def test_objects_with_fixed_keys_refuse_unknown_ones(kind: str) -> None:
    schema = load_schema(kind)
    # the run-inputs schema is the user's own JSON Schema, so its keys stay open
    open_objects = {"/properties/spec/properties/inputs"}
    loose = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            fixed = node.get("properties") and node.get("type") in ("object", ["object", "null"])
            if fixed and "additionalProperties" not in node and path not in open_objects:
                loose.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")

    walk(schema, "")
    assert loose == []
