"""GitHub's published REST description (npm `@octokit/openapi`, OpenAPI 3.0.3), used to check
what the fake GitHub receives and what it answers.

`check_request` finds the documented operation for a method and a concrete path, then checks
the path and query parameters (unknown query parameters are errors, values must have the
declared type) and the JSON body against the operation's `requestBody` schema;
`check_response` checks an answer against the schema documented for its status. Both return
a list of problems, empty when GitHub's description accepts the call.

Schemas are turned from OpenAPI 3.0's dialect into JSON Schema 2020-12 for jsonschema_rs:
`nullable: true` becomes a `"null"` type, `$ref`s into `#/components/schemas` become `$defs`
(only those an operation reaches), and OpenAPI-only keywords (`example`, `discriminator`,
`x-*`...) are dropped. The description (13 MB) is parsed once per process."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import jsonschema_rs

from tests.npm import github_rest_description

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# OpenAPI 3.0 schema keywords with no JSON Schema meaning (or a different one): dropped
OPENAPI_ONLY = frozenset({"example", "examples", "discriminator", "xml", "externalDocs"})


@functools.cache
def description() -> dict[str, Any]:
    """The parsed description for api.github.com (cached: one parse per process)."""
    data: dict[str, Any] = json.loads(github_rest_description().read_text())
    return data


# ----------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Operation:
    method: str  # upper case
    template: str  # "/repos/{owner}/{repo}/statuses/{sha}"
    pattern: re.Pattern[str]
    rank: tuple[int, ...]  # lower is more specific: literal segments beat parameters
    spec: dict[str, Any]
    parameters: tuple[dict[str, Any], ...]  # path-level and operation-level, $refs resolved

    @property
    def name(self) -> str:
        return f"{self.method} {self.template} ({self.spec.get('operationId', '?')})"


def _resolve(node: Any) -> Any:
    """Follow a local `$ref` (`#/components/...`) to what it names, repeatedly."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"non-local $ref {ref!r}")
        node = description()
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@functools.cache
def _operations() -> tuple[Operation, ...]:
    found = []
    for template, item in description()["paths"].items():
        shared = [_resolve(p) for p in item.get("parameters", [])]
        for method in METHODS:
            if method not in item:
                continue
            spec = item[method]
            own = [_resolve(p) for p in spec.get("parameters", [])]
            keys = {(p["name"], p["in"]) for p in own}
            parameters = (*(p for p in shared if (p["name"], p["in"]) not in keys), *own)
            multi = {p["name"] for p in parameters if p.get("x-multi-segment")}
            regex, rank = "", list[int]()
            for literal, name in re.findall(r"([^{]*)(?:\{([^}]+)\})?", template):
                regex += re.escape(literal)
                rank.extend(0 for _ in range(literal.count("/")))
                if name:
                    regex += f"(?P<{_group(name)}>{'.+' if name in multi else '[^/]+'})"
                    rank[-1:] = [2 if name in multi else 1]
            found.append(
                Operation(
                    method=method.upper(),
                    template=template,
                    pattern=re.compile(regex),
                    rank=(sum(r == 2 for r in rank), *rank),
                    spec=spec,
                    parameters=tuple(parameters),
                )
            )
    return tuple(found)


def _group(name: str) -> str:
    return "p_" + re.sub(r"\W", "_", name)


def find_operation(method: str, path: str) -> tuple[Operation | None, str | None]:
    """The documented operation for `method path` (a concrete path like
    `/repos/acme/app/statuses/abc`), or None and the reason."""
    path = path.split("?", 1)[0]
    matching = [op for op in _operations() if op.pattern.fullmatch(path)]
    if not matching:
        return None, f"{method} {path}: no such path in GitHub's REST API"
    allowed = [op for op in matching if op.method == method.upper()]
    if not allowed:
        documented = sorted({f"{op.method} {op.template}" for op in matching})
        return None, f"{method} {path}: method not documented (GitHub has {', '.join(documented)})"
    return min(allowed, key=lambda op: op.rank), None


# ----------------------------------------------------------------------------- schemas


def _convert(node: Any, refs: set[str]) -> Any:
    """An OpenAPI 3.0 schema object as JSON Schema 2020-12 (`$ref`s to `#/$defs/NAME`)."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:  # OpenAPI 3.0: whatever stands beside a $ref is ignored
        ref = node["$ref"]
        prefix = "#/components/schemas/"
        if not ref.startswith(prefix):
            return _convert(_resolve(node), refs)
        name = ref[len(prefix) :]
        refs.add(name)
        return {"$ref": f"#/$defs/{name}"}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in OPENAPI_ONLY or key.startswith("x-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {k: _convert(v, refs) for k, v in value.items()}
        elif key in ("items", "not", "additionalProperties"):
            out[key] = _convert(value, refs)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_convert(v, refs) for v in value]
        else:
            out[key] = value
    if node.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _component(name: str) -> tuple[Any, frozenset[str]]:
    refs: set[str] = set()
    converted = _convert(description()["components"]["schemas"][name], refs)
    return converted, frozenset(refs)


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (OpenAPI 3.0, from the description) as a self-contained JSON Schema 2020-12."""
    refs: set[str] = set()
    root = _convert(schema, refs)
    defs: dict[str, Any] = {}
    todo = sorted(refs)
    while todo:
        name = todo.pop()
        if name in defs:
            continue
        defs[name], more = _component(name)
        todo.extend(more - defs.keys())
    document = {"$schema": "https://json-schema.org/draft/2020-12/schema", **root}
    if defs:
        document["$defs"] = defs
    return document


# by the id of a schema object inside `description()`, which lives (unchanged) as long as this
_validators: dict[int, jsonschema_rs.Validator] = {}


def _validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    if id(schema) not in _validators:
        _validators[id(schema)] = jsonschema_rs.Draft202012Validator(
            json_schema(schema), validate_formats=True
        )
    return _validators[id(schema)]


def _errors(schema: dict[str, Any], instance: Any, where: str) -> list[str]:
    problems = []
    for error in _validator(schema).iter_errors(instance):
        at = "/".join(str(p) for p in error.instance_path)
        problems.append(f"{where}{'/' + at if at else ''}: {error.message}")
    return problems


# ----------------------------------------------------------------------------- parameters


def _coerce(raw: Sequence[str], schema: dict[str, Any]) -> tuple[Any, str | None]:
    """Query or path text as the value its schema's type describes."""
    kind = _resolve(schema).get("type")
    if kind == "array":
        items = _resolve(schema).get("items", {})
        values = []
        for part in (v for text in raw for v in (text.split(",") if len(raw) == 1 else [text])):
            value, problem = _coerce([part], items)
            if problem:
                return None, problem
            values.append(value)
        return values, None
    if len(raw) != 1:
        return None, f"given {len(raw)} times"
    text = raw[0]
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", text):
            return None, f"{text!r} is not an integer"
        return int(text), None
    if kind == "number":
        try:
            return float(text), None
        except ValueError:
            return None, f"{text!r} is not a number"
    if kind == "boolean":
        if text not in ("true", "false"):
            return None, f"{text!r} is not a boolean (true or false)"
        return text == "true", None
    return text, None


def _check_parameter(spec: dict[str, Any], raw: Sequence[str], where: str) -> list[str]:
    schema = spec.get("schema")
    if schema is None:
        return []
    value, problem = _coerce(raw, schema)
    if problem:
        return [f"{where}: {problem}"]
    return _errors(schema, value, where)


# ----------------------------------------------------------------------------- checks


def check_request(
    method: str,
    path: str,
    query: Mapping[str, str | Sequence[str]] | None = None,
    body: Any = None,
) -> list[str]:
    """What GitHub's description finds wrong with a request (empty when nothing).

    `path` is the concrete path (`/repos/acme/app/issues/9/comments`), `query` the query
    parameters (a value or the list of values of a repeated one), `body` the parsed JSON body
    (None when the request had none)."""
    operation, reason = find_operation(method, path)
    if operation is None:
        return [reason or f"{method} {path}: unknown"]
    label = f"{operation.method} {path}"
    problems: list[str] = []

    match = operation.pattern.fullmatch(path.split("?", 1)[0])
    assert match is not None
    for spec in operation.parameters:
        if spec["in"] == "path":
            value = unquote(match.group(_group(spec["name"])))
            problems += _check_parameter(spec, [value], f"{label}: path parameter {spec['name']}")

    declared = {p["name"]: p for p in operation.parameters if p["in"] == "query"}
    given = {k: [v] if isinstance(v, str) else list(v) for k, v in (query or {}).items()}
    for name, values in given.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(f"{label}: unknown query parameter {name!r} (documented: {known})")
        else:
            problems += _check_parameter(declared[name], values, f"{label}: query {name}")
    for name, spec in declared.items():
        if spec.get("required") and name not in given:
            problems.append(f"{label}: query parameter {name!r} is required")

    request_body = _resolve(operation.spec.get("requestBody"))
    if body is None:
        if request_body and request_body.get("required"):
            problems.append(f"{label}: a JSON body is required")
    elif not request_body:
        problems.append(f"{label}: {operation.name} takes no body")
    else:
        schema = _json_schema_of(request_body)
        if schema is None:
            types = ", ".join(request_body.get("content", {}))
            problems.append(f"{label}: the body must be one of {types}, not JSON")
        else:
            problems += _errors(schema, body, f"{label}: body")
    return problems


def _json_schema_of(container: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of the JSON content of a request body or response, if it has one."""
    for media, content in container.get("content", {}).items():
        if media == "application/json" or media.endswith("+json"):
            schema: dict[str, Any] | None = content.get("schema")
            return schema
    return None


def _documented_response(operation: Operation, status: int) -> dict[str, Any] | None:
    responses = operation.spec.get("responses", {})
    for key in (str(status), f"{status // 100}XX", "default"):
        if key in responses:
            found: dict[str, Any] = _resolve(responses[key])
            return found
    return None


def check_response(method: str, path: str, status: int, body: Any = None) -> list[str]:
    """What GitHub's description finds wrong with an answer `status` + JSON `body` to
    `method path`: an undocumented success status, or a body that does not fit the documented
    schema (a status documented without content, like 204 or some 404s, takes any body; an
    undocumented error status must have GitHub's `basic-error` shape)."""
    operation, reason = find_operation(method, path)
    if operation is None:
        return [reason or f"{method} {path}: unknown"]
    label = f"{operation.method} {path} -> {status}"
    response = _documented_response(operation, status)
    if response is None and status >= 400:
        # the description lists no error answer exhaustively (an edit of a missing comment is
        # a 404 without being documented): an undocumented one has GitHub's generic shape
        response = _resolve(description()["components"]["responses"]["not_found"])
    if response is None:
        documented = ", ".join(operation.spec.get("responses", {}))
        return [f"{label}: status not documented for {operation.name} (documented: {documented})"]
    schema = _json_schema_of(response)
    if schema is None:
        return []
    if body is None:
        return [f"{label}: a JSON body is documented, none given"]
    return _errors(schema, body, f"{label}: body")


def response_example(method: str, path: str, status: int) -> Any:
    """A fresh copy of the first example GitHub documents for that answer (a path template or
    a concrete path), as a starting point for a fake's answer."""
    operation, reason = find_operation(method, path)
    if operation is None:
        raise KeyError(reason)
    response = _documented_response(operation, status)
    if response is None:
        raise KeyError(f"{operation.name}: no {status} answer documented")
    for media, content in response.get("content", {}).items():
        if media == "application/json" and content.get("examples"):
            example = _resolve(next(iter(content["examples"].values())))
            return copy.deepcopy(example["value"])
        if media == "application/json" and "example" in content:
            return copy.deepcopy(content["example"])
    raise KeyError(f"{operation.name}: no example of its {status} answer")
