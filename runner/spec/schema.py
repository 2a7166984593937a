"""JSON Schema validation of documents, with errors placed on the offending YAML node.

The schemas ship inside the installed package (`runner/schemas/`) and are read from there, never
from a source tree. Validation uses jsonschema-rs (Draft 2020-12); its errors are rewritten into
messages that say what to write instead: a subschema may carry an `errorMessage` (the ajv-errors
convention, ignored by validators and editors alike) that replaces the validator's wording.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import unquote

import jsonschema_rs

from runner.errors import SpecError
from runner.spec.yaml import Document

KINDS = ("Workflow", "Agent")
_SCHEMA_FILES = {"Workflow": "workflow.schema.json", "Agent": "agent.schema.json"}


@cache
def load_schema(kind: str) -> dict[str, Any]:
    """The bundled JSON Schema of a document kind, read from the installed package."""
    text = resources.files("runner").joinpath("schemas", _SCHEMA_FILES[kind]).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(kind: str) -> Any:
    return jsonschema_rs.validator_for(load_schema(kind))


def _subschema(root: dict[str, Any], path: list[str | int]) -> Any:
    node: Any = root
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number" if isinstance(value, float) else "integer"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "mapping"


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _value_at(root: Any, parts: list[str | int]) -> Any:
    for part in parts:
        root = root[part]
    return root


def _message(error: Any, subschema: Any, value: Any) -> str:
    """The wording for one error. `errorMessage` in the subschema wins: a string for every
    keyword of that subschema, or a mapping from keyword to message."""
    kind = error.kind.name
    info = error.kind.as_dict()
    custom = subschema.get("errorMessage") if isinstance(subschema, dict) else None
    if isinstance(custom, dict):
        custom = custom.get(kind)
    if kind == "required":
        return f"missing required property {info['property']!r}"
    if custom:
        scalar = value is None or isinstance(value, str | int | float)
        return f"{json.dumps(value)} {custom}" if scalar and custom.startswith("is ") else custom
    if kind == "type":
        names = {"object": "mapping", "array": "list"}
        wanted = " or ".join(names.get(t, t) for t in info["types"])
        return f"expected {wanted}, got {_json_type(value)}"
    if kind == "enum":
        options = [str(o) for o in info["options"]]
        hint = _suggest(str(value), options) if isinstance(value, str) else ""
        return f"{json.dumps(value)} is not one of: {', '.join(options)}{hint}"
    if kind == "const" and isinstance(subschema, dict) and "const" in subschema:
        return f"must be {json.dumps(subschema['const'])}"
    return str(error.message)


def translate(
    validator: Any, schema: dict[str, Any], value: Any
) -> list[tuple[list[str | int], str, bool]]:
    """(path, message, at_key) for each way `value` fails `validator` compiled from `schema`.

    An unexpected property is reported once per property, at its key, with the close match or
    the allowed names; several keywords of one subschema failing together give one message.
    """
    out: list[tuple[list[str | int], str, bool]] = []
    seen: set[tuple[str, str]] = set()
    for error in validator.iter_errors(value):
        parts: list[str | int] = list(error.instance_path)
        subschema = _subschema(schema, error.schema_path[:-1])
        if error.kind.name == "additionalProperties":
            props = subschema.get("properties", {}) if isinstance(subschema, dict) else {}
            allowed = sorted(props)
            for name in error.kind.unexpected:
                expected = f"; expected one of: {', '.join(allowed)}" if allowed else ""
                message = f"unknown property {name!r}{_suggest(name, allowed) or expected}"
                out.append(([*parts, name], message, True))
            continue
        message = _message(error, subschema, _value_at(value, parts))
        if (str(parts), message) not in seen:
            seen.add((str(parts), message))
            out.append((parts, message, False))
    return out


def validate_document(doc: Document) -> list[SpecError]:
    """Schema errors of one document, each at the node it concerns."""
    data = doc.data
    if not isinstance(data, dict):
        return [
            doc.error(
                [], "a document must be a mapping with apiVersion, kind, metadata and spec keys"
            )
        ]
    kind = data.get("kind")
    if kind not in KINDS:
        where: list[str | int] = ["kind"] if "kind" in data else []
        what = f"unknown kind {kind!r}" if "kind" in data else "missing 'kind'"
        hint = _suggest(kind, list(KINDS)) if isinstance(kind, str) else ""
        return [doc.error(where, f"{what}; expected one of: {', '.join(KINDS)}{hint}")]
    found = translate(_validator(kind), load_schema(kind), data)
    return [doc.error(parts, message, key=at_key) for parts, message, at_key in found]


_TYPES = ["array", "boolean", "integer", "null", "number", "object", "string"]


def _local_refs(node: Any, parts: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield [*parts, "$ref"], ref
        for key, value in node.items():
            if key not in ("const", "enum", "default", "examples"):
                yield from _local_refs(value, [*parts, key])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _local_refs(value, [*parts, i])


def _resolves(schema: Any, ref: str) -> bool:
    target: Any = schema
    for token in ref[1:].lstrip("/").split("/") if ref not in ("#", "#/") else []:
        token = unquote(token).replace("~1", "/").replace("~0", "~")
        try:
            target = target[int(token)] if isinstance(target, list) else target[token]
        except (KeyError, IndexError, ValueError, TypeError):
            return False
    return True


def check_schema(doc: Document, parts: list[str | int], schema: Any) -> list[SpecError]:
    """Errors if an embedded JSON Schema (inputs, outputs) is not itself a valid schema.

    `$ref` must point inside the schema: a validator never fetches anything over the network.
    """
    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        inner = [*parts, *exc.instance_path]
        value = _value_at(schema, list(exc.instance_path))
        message = str(exc.message)
        if exc.instance_path and exc.instance_path[-1] == "type" and isinstance(value, str):
            message = f"{json.dumps(value)} is not a JSON Schema type" + (
                _suggest(value, _TYPES) or f"; use one of: {', '.join(_TYPES)}"
            )
        return [doc.error(inner, f"not a valid JSON Schema: {message}")]
    errors = []
    for where, ref in _local_refs(schema, []):
        if not ref.startswith("#"):
            errors.append(
                doc.error(
                    [*parts, *where],
                    f"not a valid JSON Schema: $ref {ref!r} points outside the schema; "
                    "inline it under $defs",
                )
            )
        elif not _resolves(schema, ref):
            errors.append(
                doc.error(
                    [*parts, *where], f"not a valid JSON Schema: $ref {ref!r} does not resolve"
                )
            )
    return errors


def compile_schema(schema: dict[str, Any]) -> Any:
    """A validator for a schema that `check_schema` accepted; never reaches the network."""
    try:
        return jsonschema_rs.validator_for(schema, retriever=_no_remote)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError) as exc:
        raise ValueError(f"not a valid JSON Schema: {exc}") from None


def _no_remote(uri: str) -> Any:
    raise ValueError(f"remote $ref {uri!r} is not allowed")
